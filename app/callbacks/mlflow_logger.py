"""MLflow tracking. By default a local store shared by every run started from this directory:
`sqlite:///<working dir>/outputs/mlflow.db`, artifacts in `outputs/mlartifacts/`; view it with
`mlflow ui --backend-store-uri sqlite:///$PWD/outputs/mlflow.db`. Any tracking URI works
(`logger.tracking_uri=http://host:5000`, a database URL). Needs the `mlflow-skinny` package
(`mlflow` for the UI); it is imported only when a run starts.

Everything goes through `MlflowClient` with explicit run ids, never through `mlflow.start_run`'s
process-global active run: with Hydra's basic launcher every job of a sweep runs in one process,
and no run may leak into the next job.
"""
from __future__ import annotations

import logging
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

from app.callbacks.logger import Logger, flatten

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

log = logging.getLogger(__name__)

# MLflow's limits (mlflow.utils.validation): key length, param value length, items per batch.
MAX_KEY = 250
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000
GROUP_TAG = "group"  # on a sweep's parent run and on each of its trials
PARENT_TAG = "sweep"  # "true" on a sweep's parent run
RUN_STATUS = {"failed": "FAILED", "pruned": "KILLED"}  # every other stop reason: FINISHED


class MLflowLogger(Logger):
    """One MLflow run per app run, in experiment `experiment_name`: params (the resolved config,
    flattened: `optimizer.lr`, ...; a sweep trial's `hparams` too), each epoch's metrics at
    step=epoch, and at the run's end a `status` tag (the app's stop reason), metrics
    `best_<monitor>` (step = best epoch) and the test metrics (step = last epoch), the best
    checkpoint as artifact `checkpoints/best.pt`, and the run status (failed: FAILED, pruned:
    KILLED, else FINISHED).

    Runs of one sweep (same `group`) are children of one parent run named after the group (tag
    `mlflow.parentRunId`): the first trial to start creates it, by any worker process; the others
    find it by its tags. A resumed run continues its MLflow run (id and tracking URI are kept in
    the checkpoint). Params are immutable in MLflow: a key a resumed run changed keeps its first
    value (the change is logged).

    Args (defaults: conf/logger/mlflow.yaml):
        tracking_uri: where runs are stored. None: `$MLFLOW_TRACKING_URI` if set, else the local
            SQLite store of the module docstring.
        experiment_name: created if missing.
        tags: extra tags of every run, e.g. {team: vision}.
        log_checkpoint: upload `<run dir>/checkpoints/best.pt` at the run's end.
    """

    def __init__(
        self,
        tracking_uri: str | None,
        experiment_name: str,
        tags: Mapping[str, str] | None,
        log_checkpoint: bool,
        *,
        dir: str | Path | None = None,
        name: str | None = None,
        group: str | None = None,
    ) -> None:
        super().__init__(dir=dir, name=name, group=group)
        self.uri_given = bool(tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"))
        self.tracking_uri = (tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
                             or "sqlite:///" + str(Path.cwd().resolve() / "outputs" / "mlflow.db"))
        self.experiment_name = experiment_name
        self.tags = {str(k): str(v) for k, v in (tags or {}).items()}
        self.log_checkpoint = log_checkpoint
        self.client = None
        self.run_id: str | None = None  # set by `start`, or by `load_state` for a resumed run
        self.parent_run_id: str | None = None

    # ------------------------------------------------------------------ Logger steps
    def start(self, trainer) -> None:
        if self.client is not None:  # a second fit in the same run: keep logging
            return
        from mlflow.tracking import MlflowClient  # here: runs without MLflow never import it

        database = _sqlite_path(self.tracking_uri)
        if database is not None:
            database.parent.mkdir(parents=True, exist_ok=True)
        with _local_lock(database):
            self.client = MlflowClient(tracking_uri=self.tracking_uri)
            if self.run_id is not None:  # resumed
                run = self.client.get_run(self.run_id)
                self.parent_run_id = run.data.tags.get("mlflow.parentRunId")
                self.client.update_run(self.run_id, status="RUNNING")
                self._log_params(existing=run.data.params)
                return
            experiment_id = self._experiment_id(database)
            tags = dict(self.tags)
            if self.group:
                self.parent_run_id = self._parent_run_id(experiment_id)
                tags.update({GROUP_TAG: self.group, "mlflow.parentRunId": self.parent_run_id})
            run = self.client.create_run(experiment_id, run_name=self.name, tags=tags)
            self.run_id = run.info.run_id
        self._log_params(existing={})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self._log_metrics(metrics, step)

    def finish(self, summary: dict[str, Any]) -> None:
        if self.client is None:  # failed before fitting started
            return
        from mlflow.entities import RunTag

        status = str(summary.get("status"))
        tags = [RunTag("status", status)]
        if summary.get("error"):
            tags.append(RunTag("error", str(summary["error"])[:MAX_TAG_VALUE]))
        self.client.log_batch(self.run_id, tags=tags)
        last_epoch = summary.get("epochs_run") or 0
        if summary.get("best") is not None:
            self._log_metrics({f"best_{summary.get('monitor', 'monitored')}": summary["best"]},
                              summary.get("best_epoch") or last_epoch)
        if summary.get("test"):
            self._log_metrics(summary["test"], last_epoch)
        best = self.dir / "checkpoints" / "best.pt" if self.dir is not None else None
        if self.log_checkpoint and best is not None and best.is_file():
            self.client.log_artifact(self.run_id, str(best), "checkpoints")
        self.client.set_terminated(self.run_id, RUN_STATUS.get(status, "FINISHED"))
        if self.parent_run_id:  # the sweep's run ends with its latest trial
            self.client.set_terminated(self.parent_run_id, "FINISHED")
        self.client = None

    def abort(self) -> None:
        client, self.client = self.client, None
        if client is not None and self.run_id is not None:
            client.set_terminated(self.run_id, "FAILED")

    def state(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "tracking_uri": self.tracking_uri}

    def load_state(self, state: dict[str, Any]) -> None:
        if state.get("run_id"):
            self.run_id = state["run_id"]
            if not self.uri_given and state.get("tracking_uri"):
                self.tracking_uri = state["tracking_uri"]  # a resume started from another cwd

    # ------------------------------------------------------------------ helpers
    def _experiment_id(self, database: Path | None) -> str:
        from mlflow.exceptions import MlflowException

        experiment = self.client.get_experiment_by_name(self.experiment_name)
        if experiment is None:
            # A local store keeps artifacts beside its database (MLflow's default is ./mlruns
            # of whatever the working directory is); a server decides for itself.
            location = (database.parent / "mlartifacts").as_uri() if database is not None else None
            try:
                return self.client.create_experiment(self.experiment_name, location)
            except MlflowException:  # another process created it meanwhile
                experiment = self.client.get_experiment_by_name(self.experiment_name)
                if experiment is None:
                    raise
        if experiment.lifecycle_stage != "active":
            raise RuntimeError(f"experiment {self.experiment_name!r} is deleted in {self.tracking_uri}; "
                               "restore it (mlflow experiments restore) or set logger.experiment_name")
        return experiment.experiment_id

    def _parent_run_id(self, experiment_id: str) -> str:
        """The sweep's parent run: found by its tags, else created. Two processes that both
        create one keep the earliest and delete the other, so all trials share one parent."""
        def parents() -> list:
            query = f"tags.{GROUP_TAG} = {_quote(self.group)} and tags.{PARENT_TAG} = 'true'"
            found = self.client.search_runs([experiment_id], query)
            return sorted(found, key=lambda run: (run.info.start_time, run.info.run_id))

        found = parents()
        if found:
            return found[0].info.run_id
        mine = self.client.create_run(experiment_id, run_name=self.group,
                                      tags={GROUP_TAG: self.group, PARENT_TAG: "true", **self.tags})
        chosen = parents()[0].info.run_id
        if chosen != mine.info.run_id:
            self.client.delete_run(mine.info.run_id)
        return chosen

    def _log_params(self, existing: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        params = {_key(k): str(v)[:MAX_PARAM_VALUE]
                  for k, v in {**flatten(self.run_config), **flatten(self.hparams)}.items()}
        changed = sorted(k for k, v in params.items() if k in existing and existing[k] != v)
        if changed:
            log.info("MLflow params are immutable: %s keep the values this run was started with",
                     ", ".join(changed))
        new = [Param(k, v) for k, v in params.items() if k not in existing]
        for batch in _chunks(new, PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=batch)

    def _log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        entries = [Metric(_key(k), float(v), now, int(step)) for k, v in metrics.items()]
        for batch in _chunks(entries, METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=batch)


@contextmanager
def _local_lock(database: Path | None) -> Iterator[None]:
    """Hold an exclusive lock on `<database>.lock` (no-op for other stores and off POSIX).

    Processes that open a fresh SQLite store at once race on MLflow's table creation (all of
    them fail); under the lock the first one creates the tables, and on one machine the parent
    run of a sweep is also created once."""
    if database is None or fcntl is None:
        yield
        return
    with open(database.with_name(database.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI (3 slashes: relative, 4: absolute), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///"):].split("?", 1)[0]
    return Path(path) if path.startswith("/") else Path.cwd() / path


def _key(name: str) -> str:
    """A key MLflow accepts: other characters than letters, digits, _ - . / : and space become _."""
    return re.sub(r"[^\w\-./: ]", "_", str(name))[:MAX_KEY]


def _quote(value: str) -> str:
    """A string literal for MLflow's search filter."""
    return f'"{value}"' if "'" in value else f"'{value}'"


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
