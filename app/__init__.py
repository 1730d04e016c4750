"""hydra-torch-app: Hydra-composed PyTorch experiments (see README.md and the package folders:
run/ one run, train/ the loop, callbacks/, search/ sweeps, data/, models/, tools/)."""
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = PROJECT_ROOT / "conf"  # absolute: works from any cwd
