"""The training loop (`trainer.Trainer`), what one step can do faster (`acceleration`), the
tasks' losses and metrics (`tasks`) and the app's own LR schedules (`schedulers`)."""
