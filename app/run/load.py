"""Use a trained run: `app.load_run(<run dir>)` gives its config, its model ready for inference
and the transforms its inputs need; `app.tools.evaluate` and `app.tools.predict` build on it.

Everything comes from the checkpoint's `inference` record (written by every run, see
`inference_record`), so a checkpoint file on its own is enough:

- `task`: regression | classification;
- `model`: the model's resolved config (`_target_` and options) with `in_features` and
  `out_features`, to rebuild it before loading its weights;
- `features`: one name per input feature, `feature_columns`: the file columns they are read from
  (they differ for a 2-D npz array `a`: features a[0], a[1], ...), `targets`: the target columns
  (None for data without column names, e.g. the synthetic sets);
- `classes`: the label of each class index (integers or strings; None: the indices themselves);
- `scaling`: the feature scaling fitted on the run's train split (`app.data.base.Scaling`), applied
  to every input before the model sees it;
- `target_scaling` (regression): the target scaling fitted on the run's train split; the model
  outputs the scaled target and `TrainedRun.predict` maps it back to the target's units. None,
  or absent in checkpoints written before the app scaled targets: outputs are already in them.

A checkpoint is data: it is loaded with `weights_only=True`, and the model it describes is built
only from a `_target_` under app, torch, optuna or the trusted modules (a run dir's own
`trusted_modules`; for a bare checkpoint file, those you pass).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from app.data.base import DataSplits, Scaling
from app.errors import ConfigError

CHECKPOINTS = ("best", "last")
_RUN_DIR = ("a run directory of this app (it holds .hydra/config.yaml and checkpoints/), e.g. "
            "outputs/runs/<date>/<time>; for a multi-seed run, one of its seed_<n> directories")


def inference_record(cfg: DictConfig, data: DataSplits) -> dict[str, Any]:
    """What a checkpoint carries so its model can be used without the run's code path: plain
    containers only (see module docstring)."""
    return {
        "task": data.task,
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "in_features": int(data.in_features),
        "out_features": int(data.out_features),
        "features": list(data.features) if data.features else None,
        "feature_columns": list(data.feature_columns) if data.feature_columns else None,
        "targets": list(data.targets) if data.targets else None,
        "classes": list(data.classes) if data.classes is not None else None,
        "scaling": data.scaling.to_dict() if data.scaling is not None else None,
        "target_scaling": data.target_scaling.to_dict() if getattr(data, "target_scaling", None) is not None else None,
        "precision": str(cfg.trainer.precision),
    }


# ----------------------------------------------------------------------------- finding a run
def run_directory(value: Any, key: str = "run_dir") -> Path:
    """The run directory `value` names (absolute), checked to be one: it or, for a seed of a
    multi-seed run, its parent holds `.hydra/config.yaml`. Refused in one paragraph otherwise."""
    if not isinstance(value, (str, Path)) or str(value) == "":
        raise ConfigError(key, value, _RUN_DIR)
    path = Path(value).expanduser().absolute()
    if not path.exists():
        raise ConfigError(key, value, _RUN_DIR, f"{path} does not exist")
    if not path.is_dir():
        raise ConfigError(key, value, _RUN_DIR, f"{path} is not a directory")
    if config_path(path) is None:
        raise ConfigError(key, value, _RUN_DIR, f"{path} has no .hydra/config.yaml: not a run directory")
    return path


def config_path(run_dir: Path) -> Path | None:
    """The `.hydra/config.yaml` of `run_dir` (a seed_<n> directory: its parent's), or None."""
    for folder in (run_dir, run_dir.parent) if run_dir.name.startswith("seed_") else (run_dir,):
        if (folder / ".hydra" / "config.yaml").is_file():
            return folder / ".hydra" / "config.yaml"
    return None


def read_config(run_dir: Path, key: str = "run_dir") -> DictConfig:
    """The run's composed config (`.hydra/config.yaml`), refused in one paragraph when unreadable."""
    path = config_path(run_dir)
    try:
        cfg = OmegaConf.load(path)
    except Exception as error:  # a damaged or hand-edited file: YAML, OmegaConf or OS errors
        raise ConfigError(key, str(run_dir), _RUN_DIR,
                          f"{path} cannot be read ({type(error).__name__}: {str(error).splitlines()[0]})") from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(key, str(run_dir), _RUN_DIR, f"{path} does not hold a config mapping")
    return cfg


def checkpoint_file(run_dir: Path, which: str, key: str = "--checkpoint") -> Path:
    """`checkpoints/best.pt` or `last.pt` of `run_dir`, or the path `which` names."""
    if which not in CHECKPOINTS:
        path = Path(which).expanduser().absolute()
        if not path.is_file():
            raise ConfigError(key, which, "best, last, or the path of a checkpoint file",
                              f"{path} is not a file")
        return path
    path = run_dir / "checkpoints" / f"{which}.pt"
    if path.is_file():
        return path
    present = sorted(p.name for p in (run_dir / "checkpoints").glob("*.pt")) if (run_dir / "checkpoints").is_dir() else []
    seeds = sorted(p.name for p in run_dir.glob("seed_*") if p.is_dir())
    if seeds:
        raise ConfigError("run_dir", str(run_dir), f"one seed's directory, e.g. {run_dir / seeds[0]}",
                          f"{run_dir} is a multi-seed run: its checkpoints are in {', '.join(seeds)}")
    why = (f"{run_dir} has no checkpoints/{which}.pt"
           + (f" (it has {', '.join(present)})" if present else
              " (no checkpoint was written: the run failed before its first epoch ended, or ran "
              "without the checkpoint callback)"))
    accepted = "a run that wrote checkpoints" + (f"; --checkpoint {'last' if which == 'best' else 'best'}"
                                                 if present else "")
    raise ConfigError(key, which, accepted, why)


# ----------------------------------------------------------------------------- the loaded run
@dataclass
class TrainedRun:
    """A trained model with what it needs to read new inputs and name its outputs.

    cfg: the run's composed config (None for a bare checkpoint file). model: in eval mode, on
    `device`. epoch: the epoch the checkpoint was written at. See the module docstring for
    task, features, feature_columns, targets, classes and scaling.
    """

    run_dir: Path | None
    checkpoint: Path
    epoch: int
    cfg: DictConfig | None
    model: torch.nn.Module
    device: torch.device
    task: str
    in_features: int
    out_features: int
    features: list[str]
    feature_columns: list[str] | None
    targets: list[str] | None
    classes: list[Any] | None
    scaling: Scaling | None  # on the CPU, where inputs are scaled
    precision: str = "32"
    target_scaling: Scaling | None = None  # regression: outputs are this scaling of the target

    # ------------------------------------------------------------------ inputs
    def matrix(self, inputs: Any) -> np.ndarray:
        """float64 [n, in_features] of raw (unscaled) inputs: an array or tensor [n, in_features]
        (or [in_features] for one sample), or a table by column name (a pandas DataFrame, or a
        mapping of column name to values) holding `feature_columns`."""
        if hasattr(inputs, "columns") or isinstance(inputs, Mapping):
            columns = self.feature_columns or self.features
            present = list(inputs.columns) if hasattr(inputs, "columns") else list(inputs)
            missing = [c for c in columns if c not in present]
            if missing:
                raise ConfigError("inputs", f"a table with columns {present}",
                                  f"a table with the columns the model was trained on: {', '.join(map(str, columns))}",
                                  f"It lacks {', '.join(map(repr, missing))}")
            blocks = [np.asarray(inputs[c], dtype=np.float64) for c in columns]
            n = blocks[0].shape[0]
            array = np.concatenate([b.reshape(n, -1) for b in blocks], axis=1)
        else:
            array = inputs.detach().cpu().double().numpy() if isinstance(inputs, torch.Tensor) else np.asarray(inputs, dtype=np.float64)
            if array.ndim == 1:
                array = array.reshape(1, -1)
        if array.ndim != 2 or array.shape[1] != self.in_features:
            raise ConfigError("inputs", f"an array of shape {tuple(array.shape)}",
                              f"[n, {self.in_features}] values, one column per feature: {', '.join(self.features)}",
                              "The shape does not match the model's inputs")
        if not np.isfinite(array).all():
            raise ConfigError("inputs", "non-finite values", "finite numbers (no NaN, inf or empty cells)")
        return array

    def transform(self, inputs: Any) -> torch.Tensor:
        """float32 [n, in_features] on `device`: the inputs as the model saw them in training
        (the run's scaling applied)."""
        x = torch.from_numpy(self.matrix(inputs)).float()
        return (self.scaling.apply(x) if self.scaling is not None else x).to(self.device)

    # ------------------------------------------------------------------ outputs
    def untransform(self, outputs: torch.Tensor) -> torch.Tensor:
        """Regression outputs [n, targets] (float32, CPU) in the target's units: the run's target
        scaling undone (the outputs themselves where the run scaled no target)."""
        return self.target_scaling.invert(outputs) if self.target_scaling is not None else outputs

    def transform_target(self, y: torch.Tensor) -> torch.Tensor:
        """Regression targets [n, targets] in their units, as the model learned them (scaled)."""
        return self.target_scaling.apply(y) if self.target_scaling is not None else y

    @torch.no_grad()
    def outputs(self, inputs: Any, batch_size: int = 4096) -> torch.Tensor:
        """The model's raw outputs [n, out_features] (float32, on the CPU): for regression the
        target as the model learned it (scaled, see `untransform`), logits for classification."""
        x = self.transform(inputs)
        from app.train.acceleration import autocast_context

        parts = []
        for start in range(0, x.shape[0], batch_size):
            with autocast_context(self.device, self.precision, cache_enabled=True):
                parts.append(self.model(x[start:start + batch_size]).float().cpu())
        return torch.cat(parts) if parts else torch.empty(0, self.out_features)

    def predict_proba(self, inputs: Any) -> np.ndarray:
        """Class probabilities [n, classes] (classification only), columns in `labels()` order."""
        if self.task != "classification":
            raise ConfigError("task", self.task, "a classification run", "Only classifiers give probabilities")
        return torch.softmax(self.outputs(inputs), dim=-1).numpy()

    def predict(self, inputs: Any) -> np.ndarray:
        """Classification: the predicted class label of each row, [n] (the run's class names,
        else class indices). Regression: the predicted values in the target's units, [n] for one
        target, [n, targets] for several."""
        out = self.outputs(inputs)
        if self.task == "classification":
            return np.asarray(self.labels(), dtype=object)[out.argmax(dim=-1).numpy()] if self.classes is not None \
                else out.argmax(dim=-1).numpy()
        values = self.untransform(out).double().numpy()
        return values[:, 0] if values.shape[1] == 1 else values

    def labels(self) -> list[Any]:
        """The class labels, index order (class indices where the data had no names)."""
        return list(self.classes) if self.classes is not None else list(range(self.out_features))

    def target_names(self) -> list[str]:
        """Names of the regression outputs (the target columns, else y0, y1, ...)."""
        return list(self.targets) if self.targets else [f"y{i}" for i in range(self.out_features)]


def inference_device(device: str | torch.device) -> torch.device:
    """`device` ("cpu", "cuda", "cuda:1", "mps", "auto" or a torch.device), checked to exist on
    this machine as a run's `device` is."""
    from app.run.device import resolve_device

    try:
        device = torch.device(device) if device != "auto" else None
    except (RuntimeError, TypeError):
        raise ConfigError("device", device, "cpu, cuda, cuda:<index>, mps or auto", "Not a device name") from None
    try:
        return resolve_device("auto") if device is None else resolve_device(device.type, device.index or 0)
    except ConfigError as error:
        raise ConfigError("device", str(device), error.accepted, error.reason) from None


def load_run(path: str | Path, checkpoint: str = "best", *, device: str | torch.device = "cpu",
             trusted_modules: Iterable[str] | None = None) -> TrainedRun:
    """Load a trained run for inference.

    path: a run directory (or a seed_<n> directory of a multi-seed run), or a checkpoint file.
    checkpoint: best (default) or last, or a checkpoint file's path (with a run directory).
    device: where the model goes ("cpu" by default; "cuda", torch.device(...)).
    trusted_modules: modules whose `_target_`s may build the model, beyond app, torch and optuna;
    default: the run's own `trusted_modules` (none for a bare checkpoint file).
    Refuses what cannot be used with a ConfigError (one paragraph).
    """
    from app import targets
    from app.callbacks.checkpoint import load_checkpoint

    device = inference_device(device)
    given = Path(path).expanduser().absolute() if isinstance(path, (str, Path)) and str(path) else None
    if given is not None and given.is_file():
        run_dir, cfg, file = None, None, given
    else:
        run_dir = run_directory(path)
        cfg = read_config(run_dir)
        file = checkpoint_file(run_dir, checkpoint)
    trusted = list(trusted_modules) if trusted_modules is not None else \
        list(cfg.get("trusted_modules") or []) if cfg is not None else []
    try:
        state = load_checkpoint(file)
    except ValueError as error:
        raise ConfigError("checkpoint", str(file), "a checkpoint written by this version of the app "
                          "(checkpoints/best.pt or last.pt of a run)", str(error)) from None
    record = state.get("inference")
    if not isinstance(record, dict):
        raise ConfigError("checkpoint", str(file), "a checkpoint written by a run of the app (python -m app), "
                          "which records the model's config and its data's transforms",
                          f"{file} holds weights but no inference record")
    from app.run.build import building

    node = OmegaConf.create(record["model"])
    with building("model", node):
        model = targets.instantiate(node, "model", trusted, in_features=record["in_features"],
                                    out_features=record["out_features"])
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as error:
        raise ConfigError("checkpoint", str(file), "a checkpoint whose weights fit the model its record describes",
                          str(error).strip().splitlines()[0]) from None
    model.to(device).eval()
    features = record["features"] or [f"x{i}" for i in range(record["in_features"])]
    precision = str(record.get("precision", "32"))
    if precision == "16-mixed" and device.type != "cuda":
        precision = "32"  # float16 autocast is a CUDA mode; the weights are float32 anyway
    scaling = Scaling.from_dict(record["scaling"]) if record["scaling"] is not None else None
    target_scaling = Scaling.from_dict(record["target_scaling"]) if record.get("target_scaling") else None
    return TrainedRun(
        run_dir=run_dir, checkpoint=file, epoch=int(state.get("epoch", 0)), cfg=cfg, model=model,
        device=device, task=record["task"], in_features=record["in_features"],
        out_features=record["out_features"], features=features,
        feature_columns=record["feature_columns"], targets=record["targets"],
        classes=record["classes"], scaling=scaling, precision=precision, target_scaling=target_scaling,
    )
