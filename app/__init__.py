"""hydra-torch-app: Hydra-composed PyTorch experiments (see README.md and the package folders:
run/ one run, train/ the loop, callbacks/, search/ sweeps, data/, models/, tools/)."""
from pathlib import Path


def _conf_dir() -> Path:
    """The configs: `app/conf/` inside an installed wheel (setup.py puts `conf/` there), else the
    checkout's `conf/` (a source checkout, or an editable install, which maps `app.conf` to it)."""
    packaged = Path(__file__).resolve().parent / "conf"
    if (packaged / "config.yaml").is_file():
        return packaged
    return Path(__file__).resolve().parent.parent / "conf"


PROJECT_ROOT = Path(__file__).resolve().parent.parent  # the checkout (site-packages when installed)
CONF_DIR = _conf_dir()  # absolute: works from any cwd


def __getattr__(name: str):
    """`app.load_run` (app/run/load.py), imported on first use: `import app` stays cheap."""
    if name == "load_run":
        from app.run.load import load_run

        return load_run
    raise AttributeError(f"module 'app' has no attribute {name!r}")
