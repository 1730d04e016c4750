"""`python -m app <overrides>`: run one experiment, a sweep with `--multirun`, a preflight check
with `preflight=true`, or continue a run with `resume=<run dir>` (see app/run/launch.py)."""
from app.run.launch import launch

if __name__ == "__main__":
    launch()
