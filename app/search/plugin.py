"""The `app_optuna` sweeper as Hydra sees it: hydra-optuna-sweeper with pruning, resumable
studies and failure states (`hydra/sweeper=app_optuna`, chosen by the conf/hparams_search presets).

Hydra finds this class through the `hydra.plugins` entry point in pyproject.toml (so editable and
regular installs both work) and imports this module at every start: it stays cheap (no optuna,
no torch). It holds what Hydra needs: the sweeper class, its config schema and the
`hydra/sweeper/pruner` options. The work is done by `app.search.sweeper.StudySweeper`.
"""
from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from hydra_plugins.hydra_optuna_sweeper import config as plugin_config
from hydra_plugins.hydra_optuna_sweeper import optuna_sweeper as plugin_sweeper
from omegaconf import MISSING

from app.search.config import PRUNERS


@dataclass
class AppOptunaSweeperConf(plugin_config.OptunaSweeperConf):
    _target_: str = "app.search.plugin.AppOptunaSweeper"
    defaults: List[Any] = field(default_factory=lambda: [{"sampler": "tpe"}, {"pruner": "none"}])
    pruner: Any = MISSING  # an option of hydra/sweeper/pruner
    n_jobs: int = 1  # trials running at once (in parallel with hydra/launcher=joblib or another launcher)
    # A trial whose worker process died (SIGKILL, the out-of-memory killer) is run again with the
    # same parameters up to this many times (0: never); until then it does not count as finished.
    max_retries: int = 1
    # true: start the next n_jobs trials only once all running ones have ended (the plugin's
    # batches); false: refill each free slot at once.
    batch_barrier: bool = False
    # Liveness of trials when several sweep processes (workers) share a study: seconds between
    # heartbeats of a running trial (null: off; then only trials of dead processes on this host
    # are recovered), and how old a heartbeat may get before any worker fails the trial and runs
    # it again (null: 2 x heartbeat_interval).
    heartbeat_interval: Optional[int] = 30
    grace_period: Optional[int] = None


class AppOptunaSweeper(plugin_sweeper.OptunaSweeper):
    def __init__(self, **plugin_kwargs: Any) -> None:
        from app.search.sweeper import StudySweeper  # imported when used: Hydra imports this module at every start

        # The sampler and pruner arrive as config nodes; StudySweeper builds them once it knows
        # the run's `trusted_modules` (app/targets.py).
        self.sweeper = StudySweeper(**plugin_kwargs)


ConfigStore.instance().store(group="hydra/sweeper", name="app_optuna", node=AppOptunaSweeperConf,
                             provider="hydra_torch_app", replace=True)
for _name, _node in PRUNERS.items():
    ConfigStore.instance().store(group="hydra/sweeper/pruner", name=_name, node=_node,
                                 provider="hydra_torch_app", replace=True)
