"""hydra-torch-app: Hydra-composed PyTorch experiments (see README.md and the package folders:
run/ one run, train/ the loop, callbacks/, search/ sweeps, data/, models/, tools/)."""
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = PROJECT_ROOT / "conf"  # absolute: works from any cwd


def __getattr__(name: str):
    """`app.load_run` (app/run/load.py), imported on first use: `import app` stays cheap."""
    if name == "load_run":
        from app.run.load import load_run

        return load_run
    raise AttributeError(f"module 'app' has no attribute {name!r}")
