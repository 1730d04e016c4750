"""`python -m app.tools.doctor`: what this machine offers the app, as a table.

Python, torch and its build, CUDA / MPS devices, the Hydra, Optuna, sweep-storage and W&B
versions (and the W&B mode runs will use), git, and whether `outputs/` under the current
directory can be written. Exit status 1 when something a run needs is missing or broken.
"""
from __future__ import annotations

import os
import platform
import shutil
import sys
import tempfile
from importlib import metadata
from pathlib import Path

Row = tuple[str, str, str]  # (item, status OK|WARN|FAIL|INFO, detail)


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def torch_rows() -> list[Row]:
    try:
        import torch
    except Exception as error:  # the app cannot run at all
        return [("torch", "FAIL", f"cannot import torch: {error}")]
    rows: list[Row] = [("torch", "OK", f"{torch.__version__} (CUDA build {torch.version.cuda or 'none'}, "
                                        f"{torch.get_num_threads()} CPU threads)")]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            rows.append((f"cuda:{i}", "OK", f"{p.name}, {p.total_memory / 2**30:.1f} GiB, "
                                            f"compute capability {p.major}.{p.minor}"))
        cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        rows.append(("cudnn", "OK" if cudnn else "WARN", str(cudnn or "not available")))
    else:
        rows.append(("cuda", "INFO", "not available: device=auto uses " +
                     ("mps" if _mps(torch) else "the CPU")))
    rows.append(("mps", "OK" if _mps(torch) else "INFO", "available" if _mps(torch) else "not available"))
    workspace = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    rows.append(("deterministic", "INFO", f"CUBLAS_WORKSPACE_CONFIG={workspace}" if workspace else
                 "CUBLAS_WORKSPACE_CONFIG unset (deterministic=true sets it for the run)"))
    return rows


def _mps(torch) -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def package_rows() -> list[Row]:
    rows: list[Row] = []
    for package, needed in (("hydra-core", True), ("omegaconf", True), ("numpy", True),
                            ("optuna", False), ("hydra-optuna-sweeper", False), ("wandb", False)):
        version = _version(package)
        status = "OK" if version else ("FAIL" if needed else "WARN")
        rows.append((package, status, version or "not installed"))
    if _version("optuna"):
        psycopg = _version("psycopg")
        rows.append(("sweep storage", "INFO", f"sqlalchemy {_version('sqlalchemy')}: SQLite and journal files; "
                     + (f"PostgreSQL through psycopg {psycopg}" if psycopg
                        else "PostgreSQL needs pip install '.[postgres]'")))
    submitit = _version("hydra-submitit-launcher")
    rows.append(("SLURM launcher", "OK" if submitit else "INFO",
                 submitit or "not installed: pip install '.[slurm]' for hydra/launcher=slurm"))
    rows.append(sweeper_row())
    dashboard = _version("optuna-dashboard")
    rows.append(("optuna-dashboard", "OK" if dashboard else "INFO",
                 dashboard or "not installed: pip install '.[dashboard]' for live views of sweeps"))
    return rows


def sweeper_row() -> Row:
    """Whether Hydra can find the `app_optuna` sweeper: through the package's entry point."""
    found = [ep for ep in metadata.entry_points(group="hydra.plugins") if ep.name == "app_optuna"]
    if not found:
        return ("app_optuna sweeper", "WARN",
                "no `hydra.plugins` entry point: install the project (pip install -e .) to run Optuna sweeps")
    return ("app_optuna sweeper", "OK", f"entry point {found[0].value}")


def wandb_rows(conf_dir: Path) -> list[Row]:
    if not _version("wandb"):
        return [("wandb mode", "INFO", "wandb not installed: use logger=none")]
    from omegaconf import OmegaConf

    default = conf_dir / "logger" / "wandb.yaml"
    mode = OmegaConf.load(default).get("mode") if default.exists() else None
    env = os.environ.get("WANDB_MODE")
    detail = f"logger.mode={mode} by default (conf/logger/wandb.yaml)"
    if env:
        detail += f"; WANDB_MODE={env} in the environment"
    return [("wandb mode", "INFO", detail)]


def git_row() -> Row:
    from app.run.record import git_state

    state = git_state()
    if state["git_commit"] is None:
        return ("git", "WARN", "not a git checkout: runs record no commit")
    dirty = " with uncommitted changes (runs record their diff hash)" if state["git_dirty"] else ", clean"
    return ("git", "OK", f"{state['git_commit'][:12]}{dirty}")


def outputs_row(cwd: Path) -> Row:
    """Whether runs can write `outputs/` here (tested with a temp file; creates nothing else)."""
    outputs = cwd / "outputs"
    target = outputs if outputs.exists() else cwd
    try:
        with tempfile.NamedTemporaryFile(dir=target, prefix=".doctor-"):
            pass
    except OSError as error:
        return ("outputs/", "FAIL", f"cannot write in {target}: {error.strerror}")
    free = shutil.disk_usage(target).free / 2**30
    where = str(outputs) if outputs.exists() else f"{outputs} (created by the first run)"
    return ("outputs/", "OK" if free > 1 else "WARN", f"writable: {where}, {free:.1f} GiB free")


def rows(cwd: Path | None = None) -> list[Row]:
    from app import CONF_DIR

    return [
        ("python", "OK" if sys.version_info >= (3, 10) else "FAIL",
         f"{platform.python_version()} ({sys.executable})"),
        ("platform", "INFO", platform.platform()),
        *torch_rows(),
        *package_rows(),
        *wandb_rows(CONF_DIR),
        git_row(),
        outputs_row(cwd or Path.cwd()),
    ]


def main() -> int:
    table = rows()
    width = max(len(item) for item, _, _ in table)
    for item, status, detail in table:
        print(f"{item.ljust(width)}  {status.ljust(4)}  {detail}")
    failed = [item for item, status, _ in table if status == "FAIL"]
    print(f"doctor: {'problems with ' + ', '.join(failed) if failed else 'ready to run'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
