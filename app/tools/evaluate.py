"""`python -m app.evaluate <run dir> [data overrides] [options]`: score a trained run's checkpoint
on a split of its data, or on another file, with the run's own task metrics.

    python -m app.evaluate outputs/runs/2026-01-31/14-03-07-123456                  # best.pt, test split
    python -m app.evaluate <run dir> --checkpoint last --split val --json
    python -m app.evaluate <run dir> data.path=new_measurements.csv                  # the whole file

The data is built from the run's own config (`.hydra/config.yaml`) with the `data.*` overrides
given, the same split (same `data.seed` and fractions) and batch size as the run's test, so
`test` of the best checkpoint reproduces the run's `summary.json`. Inputs are scaled with the
statistics stored in the checkpoint (never refitted) and class labels are mapped to the run's
classes. Another file is read by the run's feature columns. Relative paths in the run's config
are taken from the directory the run was launched in; those on this command line from here.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from app.errors import ConfigError

SPLITS = ("test", "val", "train", "all")


def parse_data_overrides(args: list[str], data: DictConfig) -> dict[str, Any]:
    """{key: value} of `data.<key>=<value>` arguments (values parsed as Hydra parses them),
    each key one the run's data config has."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    values = {}
    for arg in args:
        try:
            override = parser.parse_override(arg)
        except Exception as error:  # Hydra's grammar errors: one line of them is enough
            raise ConfigError("overrides", arg, "data.<key>=<value>, e.g. data.path=other.csv",
                              str(error).strip().splitlines()[0]) from None
        key = override.key_or_group
        if not key.startswith("data.") or override.is_delete() or override.is_add() or override.is_sweep_override():
            raise ConfigError("overrides", arg, "data.<key>=<value> overrides of the run's data config, e.g. "
                              "data.path=other.csv (the model, the training and the run's other settings stay "
                              "the checkpoint's)")
        name = key[len("data."):]
        if name not in data:
            raise ConfigError(key, override.value(), f"a key of the run's data config: {', '.join(k for k in data)}",
                              f"The run's data ({data.get('_target_')}) has no key {name!r}")
        values[name] = override.value()
    return values


def launch_dir(run_dir: Path) -> Path | None:
    """The directory the run was launched from (relative paths in its config start there)."""
    for folder in (run_dir, run_dir.parent):
        path = folder / ".hydra" / "hydra.yaml"
        if path.is_file():
            try:
                cwd = OmegaConf.select(OmegaConf.load(path), "hydra.runtime.cwd")
            except Exception:  # a damaged hydra.yaml: relative paths then start here
                return None
            return Path(cwd) if cwd else None
    return None


def data_config(cfg: DictConfig, run: Any, overrides: dict[str, Any], split: str | None) -> DictConfig:
    """The run's config with the data overrides, ready to rebuild the data without refitting
    anything: scaling off (the checkpoint's is applied), the run's task, and another file read
    by the run's feature columns."""
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    data = cfg.data
    with open_dict(data):
        path = data.get("path")
        if "path" not in overrides and isinstance(path, str) and not Path(path).expanduser().is_absolute():
            base = launch_dir(run.run_dir)
            if base is not None:
                data.path = str(base / path)
        for key, value in overrides.items():
            data[key] = value
        if "path" in overrides and run.feature_columns and "features" in data and "features" not in overrides:
            data.features = list(run.feature_columns)
            if "exclude" in data:
                data.exclude = []
        if "path" in overrides and split in (None, "all") and "test_fraction" in data:
            data.test_fraction = 0.0  # all of another file: no split needs a row of its own
        if "scaling" in data:
            data.scaling = "none"
        if "target_scaling" in data or data.get("_target_") == "app.data.load_table":
            data.target_scaling = "none"  # the checkpoint's, if any, is applied (older runs had none)
        if "task" in data and "task" not in overrides:
            data.task = run.task
    return cfg


def evaluation_split(data: Any, split: str | None, run: Any, other_file: bool) -> tuple[str, Any]:
    """(split name, Split): `split`, else all of another file, else the test split (val without one)."""
    from app.data.base import Split

    name = split or ("all" if other_file else "test" if data.test is not None else "val")
    if name == "all":
        parts = [s for s in (data.train, data.val, data.test) if s is not None]
        chosen = Split(torch.cat([s.x for s in parts]), torch.cat([s.y for s in parts]))
    else:
        chosen = getattr(data, name)
        if chosen is None:
            raise ConfigError("--split", name, "val, train or all (the data has no test split; "
                              "data.test_fraction=0.2 makes one)", "This data has no test split")
    x = chosen.x
    if data.scaling is None and run.scaling is not None:
        x = run.scaling.apply(x)
    y = chosen.y
    if run.task == "classification":
        y = class_indices(data, run, y)
    elif getattr(data, "target_scaling", None) is None:
        y = run.transform_target(y)  # as the model learned it; metrics undo it again
    return name, Split(x, y)


def class_indices(data: Any, run: Any, y: torch.Tensor) -> torch.Tensor:
    """`y` (indices into the rebuilt data's classes) as indices into the run's classes."""
    if data.classes is None or run.classes is None:
        if data.out_features != run.out_features:
            raise ConfigError("data", data.out_features, f"data with the run's {run.out_features} classes",
                              f"The data has {data.out_features} classes")
        return y
    unknown = [c for c in data.classes if c not in run.classes]
    if unknown:
        raise ConfigError("data.target", ", ".join(map(str, unknown[:10])),
                          f"labels the model was trained on: {', '.join(map(str, run.classes))}",
                          "The data has labels the run never saw")
    mapping = torch.tensor([run.classes.index(c) for c in data.classes], dtype=torch.int64)
    return mapping[y]


@torch.no_grad()
def score(run: Any, split: Any, batch_size: int) -> dict[str, float]:
    """Loss and task metrics of `run.model` over `split`, summed batch by batch as the trainer's
    test sums them (so the same checkpoint and split give the run's own numbers): with a scaled
    regression target, the loss on the scaled target and the metrics in the target's units."""
    from app.data import TensorBatches
    from app.train.acceleration import autocast_context
    from app.train.tasks import task_for

    task = task_for(run.task, run.target_scaling)
    batches = TensorBatches(split, batch_size, device=run.device, shuffle=False)
    autocast = autocast_context(run.device, run.precision)
    sums = torch.zeros(1 + len(task.metrics), device=run.device)
    for x, y in batches:
        with autocast:
            out = run.model(x)
        out = out.float()
        parts = [task.loss(out, y) * y.shape[0]] + [fn(out, y) for fn in task.metrics.values()]
        sums += torch.stack([p.float() for p in parts])
    names = ["loss", *task.metrics]
    return {name: value / batches.num_samples for name, value in zip(names, sums.tolist())}


def evaluate(run_dir: str, overrides: list[str] = (), checkpoint: str = "best", split: str | None = None,
             device: str = "cpu") -> dict[str, Any]:
    """The evaluation of a run's checkpoint as a dict: run_dir, checkpoint, epoch, split,
    samples, data (the file when another one was given) and metrics ({split}_loss, ...)."""
    from app.run.build import build_data
    from app.run.load import load_run

    run = load_run(run_dir, checkpoint, device=device)
    values = parse_data_overrides(list(overrides), run.cfg.data)
    cfg = data_config(run.cfg, run, values, split)
    data = build_data(cfg)
    if data.task != run.task:
        raise ConfigError("data.task", data.task, f"{run.task}, the run's task")
    if data.in_features != run.in_features:
        raise ConfigError("data.features", cfg.data.get("features"),
                          f"the {run.in_features} features the model was trained on: {', '.join(run.features)}",
                          f"The data has {data.in_features} features")
    if run.task == "regression" and data.out_features != run.out_features:
        raise ConfigError("data.target", cfg.data.get("target"),
                          f"the run's {run.out_features} target column(s): {', '.join(run.target_names())}",
                          f"The data has {data.out_features} target columns")
    name, chosen = evaluation_split(data, split, run, other_file="path" in values)
    t = run.cfg.trainer
    metrics = score(run, chosen, int(t.eval_batch_size or 4 * t.batch_size))
    return {
        "run_dir": str(run.run_dir), "checkpoint": str(run.checkpoint), "epoch": run.epoch,
        "split": name, "samples": len(chosen), "data": str(cfg.data.get("path", cfg.data.get("_target_"))),
        "metrics": {f"{name}_{key}": value for key, value in metrics.items()},
    }


def table(result: dict[str, Any]) -> str:
    """The evaluation as a few readable lines."""
    from app.run.record import shown_path

    data = result["data"]
    lines = [
        f"run         {shown_path(result['run_dir'], Path.cwd())}",
        f"checkpoint  {Path(result['checkpoint']).name} (epoch {result['epoch']})",
        f"data        {shown_path(data, Path.cwd()) if Path(data).is_absolute() else data}",
        f"split       {result['split']} ({result['samples']} samples)",
        "",
    ]
    width = max(len(k) for k in result["metrics"])
    lines += [f"{'metric'.ljust(width)}  value", *(f"{k.ljust(width)}  {v:.6g}" for k, v in result["metrics"].items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m app.evaluate",
        description="Score a trained run's checkpoint on a split of its data or on another file, "
                    "with the run's task metrics.")
    parser.add_argument("run_dir", help="the run directory (outputs/runs/<date>/<time>)")
    parser.add_argument("overrides", nargs="*", help="data.<key>=<value>, e.g. data.path=other.csv")
    parser.add_argument("--checkpoint", default="best", help="best (default), last, or a checkpoint file")
    parser.add_argument("--split", choices=SPLITS, default=None,
                        help="default: test (val without a test split); all of another file's rows")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, mps")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--out", help="also write the result as JSON to this file")
    args = parser.parse_args(argv)
    try:
        result = evaluate(args.run_dir, args.overrides, args.checkpoint, args.split, args.device)
        if args.out:
            try:
                Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
            except OSError as error:
                raise ConfigError("--out", args.out, "a file path in a writable directory",
                                  f"{error.strerror or error}") from None
    except ConfigError as error:
        print(f"Error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
