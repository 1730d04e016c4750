"""Hyperparameter search with Optuna, through Hydra's `--multirun` (mirrors `conf/hparams_search/`).

The pieces, in the order a sweep meets them:

- `config`: the `hydra/sweeper/pruner` options (schemas stored in Hydra's ConfigStore by the
  `plugin` module, which Hydra finds through an entry point and imports at every start).
- `sweeper.StudySweeper`: hydra-optuna-sweeper's ask -> launch -> tell loop, extended: studies
  stored in SQLite by default and resumed, trials told COMPLETE / PRUNED / FAIL from what the
  job's run dir says, interrupted trials recovered and retried, GPUs assigned round-robin; no
  batch barrier: a free slot gets the next trial at once.
- `pool`: where the jobs run: the sweep's own worker processes for the joblib launcher (a dead
  worker fails only its trial), a thread per job for other launchers, in-process for the basic one.
- `study`: the study's file (`<sweep dir>/study.json`), storage URLs (SQLite, PostgreSQL, journal
  files) and opening them, the one-paragraph refusal of a storage that cannot be opened, the states.
- `trial.OptunaTrial`: the job's side: it finds its trial, reports the monitored metric every
  validated epoch and asks the pruner (through `app.callbacks.Pruning`).
- `pruners.CurveExtrapolationPruner`: prunes a trial whose learning curve, extrapolated to the
  last epoch, ends worse than most finished trials.
"""
