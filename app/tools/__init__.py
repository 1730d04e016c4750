"""Commands around runs: `python -m app.tools.doctor` (the environment), `python -m
app.tools.preflight` (one checked training step), and for trained runs `python -m app.evaluate`,
`python -m app.predict` and `python -m app.runs` (evaluate.py, predict.py, runs.py here)."""
