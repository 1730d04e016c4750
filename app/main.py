"""The Hydra task function: compose -> validate -> build -> fit -> test -> record -> objective.

It wires; it does not compute. Returns the run's objective (a float) for sweepers.
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from app import build, preflight, resume, targets
from app.acceleration import check_device_options
from app.errors import ConfigError
from app.config import register_configs, validate
from app.device import describe, resolve_device
from app.provenance import config_hash
from app.records import objective, provenance, write_json
from app.reproducibility import determinism_refusal, set_deterministic
from app.search.trial import OptunaTrial, current_trial
from app.seeds import train_seeds
from app.tasks import TASKS, task_of
from app.trainer import Trainer

log = logging.getLogger("app")
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"  # absolute: works from any cwd
register_configs()


def train(cfg: DictConfig, run_dir: Path, trial: OptunaTrial | None = None) -> dict[str, Any]:
    """Run one experiment in `run_dir`; return its summary (also written to summary.json).
    `trial`: the Optuna trial this run is part of (reports to it, may be pruned by it)."""
    hydra_cfg = HydraConfig.get()
    task_name = task_of(cfg.data, cfg.trusted_modules)
    validate(cfg, TASKS[task_name].metric_names() if task_name in TASKS else None)
    device = resolve_device(cfg.device.type, cfg.device.index)
    check_device_options(cfg.trainer.precision, device)
    resumption = resume.prepare(cfg, run_dir) if cfg.resume else None
    if resumption is not None and resumption.finished is not None:
        log.info(resumption.message)
        return resumption.finished
    if resumption is None:
        write_json(run_dir / "provenance.json",
                   provenance(describe(device), list(hydra_cfg.overrides.task), config_hash(cfg)))
    build.seed_everything(cfg.seed)
    set_deterministic(cfg.deterministic)

    data = build.build_data(cfg)
    task = TASKS[data.task]
    validate(cfg, task.metric_names())  # again, now that the data has said which task it is
    model = build.build_model(cfg, data)
    optimizer = build.build_optimizer(cfg, model)
    scheduler, interval = build.build_scheduler(cfg, optimizer)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    run_name = hydra_cfg.job.override_dirname or cfg.task_name
    callbacks = build.build_callbacks(
        cfg, run_dir,
        run_name=f"{run_name} seed={cfg.seed}" if cfg.seeds else run_name,
        group=trial.study_name if trial else Path(hydra_cfg.sweep.dir).name if multirun else None,
    )
    if trial is not None:
        trial.start_seed(cfg.trainer.epochs)
        callbacks.insert(0, trial.pruning_callback(cfg.trainer.monitor))
    train_batches, val_batches, test_batches = build.build_batches(data, cfg, device)
    trainer = Trainer(
        model, optimizer, task, device=device, epochs=cfg.trainer.epochs, scheduler=scheduler,
        scheduler_interval=interval, val_every=cfg.trainer.val_every,
        monitor=cfg.trainer.monitor, mode=cfg.trainer.mode, callbacks=callbacks,
        precision=cfg.trainer.precision, compile=cfg.trainer.compile, cuda_graph=cfg.trainer.cuda_graph,
        grad_clip=cfg.trainer.grad_clip, accumulate_grad_batches=cfg.trainer.accumulate_grad_batches,
        matmul_precision=cfg.trainer.matmul_precision,
    )
    checkpoint = next(cb for cb in callbacks if isinstance(cb, build.Checkpoint))
    if resumption is not None:
        resumption.restore(trainer, train_batches, checkpoint, describe(device), cfg)
    log.info("%s | %s | %d parameters | %s", data.describe(), type(model).__name__,
             sum(p.numel() for p in model.parameters()), describe(device))

    started = time.time()
    summary: dict[str, Any] = {"status": "failed", "monitor": cfg.trainer.monitor, "mode": cfg.trainer.mode}
    try:
        result = trainer.fit(train_batches, val_batches)
        test_metrics = {}
        if test_batches is not None and checkpoint.load_best_weights(model):
            test_metrics = trainer.evaluate(test_batches, prefix="test")
        summary.update(
            status=result.stop_reason, message=result.message,
            best=result.best, best_epoch=result.best_epoch, last=result.last,
            epochs_run=result.epochs_run, last_metrics=result.last_metrics, test=test_metrics,
        )
    except BaseException as error:
        summary.update(epochs_run=trainer.epoch, error=f"{type(error).__name__}: {error}")
        raise
    finally:
        summary["objective"] = objective(summary["status"], summary.get("best"), cfg.trainer.mode)
        summary["wall_time_s"] = round(time.time() - started, 3)
        if trial is not None:
            summary["trial"] = trial.describe(summary["status"])
        write_json(run_dir / "summary.json", summary)
        for callback in callbacks:
            callback.on_run_end(summary)
        if device.type == "cuda":  # jobs of one sweep share this process: free the GPU
            del trainer, model, optimizer, train_batches, val_batches, test_batches
            torch.cuda.empty_cache()
    if resumption is not None:
        resume.refresh_sweep_summary(run_dir)
    log.info("%s: best %s=%s at epoch %s, %d epochs, %.1fs -> %s", summary["status"],
             cfg.trainer.monitor, summary["best"], summary["best_epoch"], summary["epochs_run"],
             summary["wall_time_s"], run_dir)
    return summary


# The whitelist covers what Hydra itself builds (hydra.callbacks, logging); the app's own builds
# add the config's `trusted_modules` (app/targets.py).
@hydra.main(config_path=str(CONF_DIR), config_name="config", execution_whitelist=list(targets.patterns()))
def main(cfg: DictConfig) -> float:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    if cfg.preflight:  # only when app.launch left it to Hydra (e.g. with --config-name)
        sys.exit(preflight.run_and_report(cfg))
    try:
        trial = current_trial(cfg.trusted_modules)
        summary = train_seeds(cfg, run_dir, train, trial) if cfg.seeds else train(cfg, run_dir, trial)
        return summary["objective"]
    except (ConfigError, RuntimeError) as caught:
        error = determinism_refusal(caught) or caught
        if not isinstance(error, ConfigError):
            raise
        if not cfg.resume:  # a refused resume leaves the run's records as they were
            write_json(run_dir / "summary.json", {"status": "failed", "error": str(error)})
        print(f"Error: {error}", file=sys.stderr)
        from app.sweep import refresh_summary

        refresh_summary()
        sys.exit(2)
