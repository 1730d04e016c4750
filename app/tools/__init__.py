"""Commands around runs: `python -m app.tools.doctor` (the environment), `python -m
app.tools.preflight` (one checked training step)."""
