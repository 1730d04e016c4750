"""Where a study lives and what a sweep directory says about it.

- Storage: `hydra.sweeper.storage`, or by default `sqlite:///<launch dir>/outputs/studies/<study
  name>.db`: a stable file per study, so running the same command again resumes the study.
  SQLite files are switched to WAL journaling and opened with a long lock timeout, so several
  processes (the sweeper and `hydra/launcher=joblib` workers) can write at once.
- `<sweep dir>/study.json` (`StudyFile`): the storage URL, the study's name and direction, the
  resolved pruner config and how many jobs run at once. Jobs read it to find their study, and
  `python -m app.search.report <sweep dir>` reads it to find the trials.
- `trial_state`: the Optuna state a run's status is told as.
"""
from __future__ import annotations

import json
import re
import sqlite3
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

STUDY_FILE = "study.json"
TRIAL_ENV = "APP_OPTUNA_TRIAL_ID"  # set for each job (hydra.job.env_set): the Optuna trial id
SQLITE_TIMEOUT_S = 60.0  # how long a writer waits for another process's lock on the file

# How each run status (app/run/record.py STATUSES) is told to Optuna. A diverged run is PRUNED, not
# FAIL: samplers learn from pruned trials (TPE ranks them below every completed trial) but ignore
# failed ones, and a divergence says something about the hyperparameters, while FAIL is kept for
# runs that raised (a bug, a crash), which count against hydra.sweeper.max_failure_rate.
STATES = {
    "completed": "COMPLETE",
    "early_stopped": "COMPLETE",
    "pruned": "PRUNED",
    "diverged": "PRUNED",
    "failed": "FAIL",
}


def trial_state(status: str):
    """The `optuna.trial.TrialState` for a run status (unknown statuses: FAIL)."""
    from optuna.trial import TrialState

    return TrialState[STATES.get(status, "FAIL")]


def file_name(study_name: str) -> str:
    """A file name for a study: characters other than letters, digits, `.`, `_`, `-` become `_`."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", study_name) or "study"


def default_storage(study_name: str, launch_dir: str | Path) -> str:
    path = Path(launch_dir).resolve() / "outputs" / "studies" / f"{file_name(study_name)}.db"
    return f"sqlite:///{path}"


def absolute_storage(url: str, launch_dir: str | Path) -> str:
    """`sqlite:///relative.db` resolved against the launch dir, so that workers and
    `app.search.report` find the same file whatever their working directory; other URLs unchanged."""
    prefix = "sqlite:///"
    if url.startswith(prefix) and not url.startswith(prefix + "/") and url != prefix + ":memory:":
        return prefix + str(Path(launch_dir).resolve() / url[len(prefix):])
    return url


def sqlite_path(url: str) -> Path | None:
    prefix = "sqlite:///"
    return Path(url[len(prefix):]) if url.startswith(prefix) and url != prefix + ":memory:" else None


def prepare_storage(url: str) -> None:
    """Create a SQLite file's folder and switch it to WAL journaling (kept by the file), under
    which readers never block the writer and writers wait instead of failing."""
    path = sqlite_path(url)
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path, timeout=SQLITE_TIMEOUT_S) as connection:
        connection.execute("PRAGMA journal_mode=WAL")


def _sqlite_connection(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, timeout=SQLITE_TIMEOUT_S, check_same_thread=False)
    # With WAL, NORMAL syncs at checkpoints instead of at every commit: a killed process loses
    # nothing it committed; only a power cut could lose the last commits (never corrupts).
    connection.execute("PRAGMA synchronous=NORMAL")
    return connection


MEMORY_URL = "sqlite:///:memory:"
# In-memory studies (`sqlite:///:memory:`) exist only inside one connection: the sweeper makes the
# storage (`new_memory_storage`) and jobs of the basic launcher, in the same process, open it here.
_MEMORY_STORAGES: dict[str, Any] = {}


def is_memory(url: str) -> bool:
    return url == MEMORY_URL


def new_memory_storage(url: str = MEMORY_URL):
    """A fresh in-memory storage, registered so that `rdb_storage(url)` in this process returns it."""
    import optuna
    import sqlalchemy.pool

    connection = sqlite3.connect(":memory:", check_same_thread=False)
    engine_kwargs = {"creator": lambda: connection, "poolclass": sqlalchemy.pool.StaticPool}
    _MEMORY_STORAGES[url] = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
    return _MEMORY_STORAGES[url]


def rdb_storage(url: str, heartbeat_interval: int | None = None, grace_period: int | None = None,
                on_stale: Any = None):
    """An Optuna RDB storage for `url`. For SQLite: connections wait up to SQLITE_TIMEOUT_S for
    another process's lock, commit without fsync (see _sqlite_connection), and one connection is
    kept open (closing the last connection of a WAL file checkpoints it: ~5 ms per operation).
    `heartbeat_interval`, `grace_period` (seconds; None: no heartbeats) and `on_stale` (called
    for each trial that `optuna.storages.fail_stale_trials` fails) are Optuna's heartbeat options.
    `sqlite:///:memory:`: the storage `new_memory_storage` registered in this process (no heartbeats)."""
    import optuna
    import sqlalchemy.pool

    if is_memory(url):
        if url not in _MEMORY_STORAGES:
            new_memory_storage(url)
        return _MEMORY_STORAGES[url]
    heartbeat = {}
    if heartbeat_interval:
        heartbeat = {"heartbeat_interval": int(heartbeat_interval), "grace_period": grace_period,
                     "heartbeat_stale_trial_callback": on_stale}
    path = sqlite_path(url)
    engine_kwargs = ({} if path is None else
                     {"creator": lambda: _sqlite_connection(path), "poolclass": sqlalchemy.pool.StaticPool})
    with warnings.catch_warnings():  # heartbeat_interval is "experimental" in Optuna 5
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs or None, **heartbeat)


def load_study(url: str, study_name: str, pruner: Any = None, sampler: Any = None, storage: Any = None):
    """Open an existing study (in `storage`, default: a new storage for `url`). Without a sampler,
    a RandomSampler: a job that only reports values should not pay for a model-based sampler's set-up."""
    import optuna

    return optuna.load_study(
        study_name=study_name, storage=storage or rdb_storage(url), pruner=pruner,
        sampler=sampler or optuna.samplers.RandomSampler(),
    )


@dataclass
class StudyFile:
    """`<sweep dir>/study.json`: what jobs and the report need to find the study."""

    storage: str
    study_name: str
    direction: str  # minimize | maximize
    pruner: dict[str, Any] = field(default_factory=lambda: {"_target_": "optuna.pruners.NopPruner"})
    parallel_jobs: int = 1  # trials running at once in separate processes (1: one at a time)
    n_trials: int | None = None
    heartbeat_interval: int | None = None  # seconds between a job's heartbeats (None: none)

    def write(self, sweep_dir: str | Path) -> Path:
        from app.run.record import write_json

        path = Path(sweep_dir) / STUDY_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, asdict(self))
        return path

    @classmethod
    def read(cls, sweep_dir: str | Path) -> "StudyFile | None":
        path = Path(sweep_dir) / STUDY_FILE
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def make_pruner(self, trusted_modules: Iterable[str] = ()):
        from app import targets

        return targets.instantiate(self.pruner, "hydra.sweeper.pruner", trusted_modules)
