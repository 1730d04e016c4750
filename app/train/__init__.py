"""The training loop (`trainer.Trainer`), what one step can do faster (`acceleration`), the
tasks' losses and metrics (`tasks`), the app's own LR schedules (`schedulers`) and the process
group as the loop sees it (`distributed`)."""
