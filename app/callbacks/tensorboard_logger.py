"""TensorBoard event files in `<run dir>/tensorboard/`: `tensorboard --logdir outputs/` shows
every run and sweep, their curves in the Scalars tab and their hyperparameters side by side in
the HParams tab. Needs the `tensorboard` package (imported only when a run starts)."""
from __future__ import annotations

import time
from typing import Any

from app.callbacks.logger import Logger, flatten

# The app's stop reasons as the HParams plugin's session statuses (it has no "pruned").
SUCCEEDED = ("completed", "early_stopped")


class TensorBoardLogger(Logger):
    """Writes each epoch's metrics as scalars at step=epoch (tags as in metrics.csv: train_loss,
    val_loss, lr, ...), and the run for the HParams tab:

    - when fitting starts, the hyperparameters: `hparams` (a sweep trial's parameters) when the
      app set them, else the whole resolved config, flattened (`optimizer.lr`, ...), so runs of a
      plain `--multirun` compare too; lists and bools as strings, None left out; plus `group`
      (the sweep's name) when there is one;
    - at the run's end, scalars `best_<monitor>` (step = best epoch) and the test metrics
      (`test_loss`, ..., step = last epoch), and the session's status (completed and
      early_stopped: success; diverged, pruned and failed: failure).

    A resumed run writes a new event file in the same folder, purging the steps after the
    checkpoint it continues from, so epochs that the interrupted attempt logged and the resumed
    one runs again are shown once (TensorBoard keeps, per tag, the hyperparameters and status
    first written; a run resumed after an exception shows the status of its first end).

    Args (defaults: conf/logger/tensorboard.yaml):
        subdir: the folder inside the run directory that holds the event files.
        flush_secs: seconds between writes to disk (each epoch's end writes too).
    """

    def __init__(self, subdir: str, flush_secs: int, *, dir,
                 name: str | None = None, group: str | None = None) -> None:
        super().__init__(dir=dir, name=name, group=group)
        self.log_dir = self.dir / subdir
        self.flush_secs = flush_secs
        self.writer = None

    def start(self, trainer) -> None:
        # Imported here: runs without TensorBoard never import it (nor need it installed).
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        if self.writer is not None:  # a second fit in the same run: keep writing
            return
        purge_step = trainer.epoch + 1 if trainer.epoch > 0 else None  # resumed after epoch N
        self.writer = SummaryWriter(str(self.log_dir), purge_step=purge_step,
                                    flush_secs=self.flush_secs)
        _, session_start, _ = hparams_summary(self._hparams(), {})
        self.writer.file_writer.add_summary(session_start)
        self.writer.flush()

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()  # a killed run keeps every finished epoch

    def finish(self, summary: dict[str, Any]) -> None:
        if self.writer is None:  # failed before fitting started
            return
        last_epoch = summary.get("epochs_run") or 0
        if summary.get("best") is not None:
            self.writer.add_scalar(f"best_{summary.get('monitor', 'monitored')}", summary["best"],
                                   summary.get("best_epoch") or last_epoch)
        for tag, value in (summary.get("test") or {}).items():
            self.writer.add_scalar(tag, value, last_epoch)
        self.writer.file_writer.add_summary(_session_end(summary.get("status") in SUCCEEDED))
        self.abort()  # closes the writer

    def abort(self) -> None:
        writer, self.writer = self.writer, None
        if writer is not None:
            writer.close()

    def _hparams(self) -> dict[str, Any]:
        """The HParams tab's columns: bool, int, float or str values (see the class docstring)."""
        source = flatten(self.hparams) if self.hparams else flatten(self.run_config)
        if self.group:
            source = {**source, "group": self.group}
        return {  # bools as "True"/"False": TensorBoard would show them as numbers
            key: value if isinstance(value, (int, float, str)) and not isinstance(value, bool)
            else str(value)
            for key, value in source.items()
            if value is not None
        }


def _session_end(succeeded: bool):
    """The HParams plugin's end-of-session record (tensorboard's own `session_end_pb` needs
    TensorFlow; torch's `hparams` always says success)."""
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    status = api_pb2.STATUS_SUCCESS if succeeded else api_pb2.STATUS_FAILURE
    info = plugin_data_pb2.HParamsPluginData(
        session_end_info=plugin_data_pb2.SessionEndInfo(status=status, end_time_secs=time.time()))
    return Summary(value=[Summary.Value(tag=metadata.SESSION_END_INFO_TAG,
                                        metadata=metadata.create_summary_metadata(info))])
