"""Where a study lives and what a sweep directory says about it.

- Storage (`hydra.sweeper.storage`), by default `sqlite:///<launch dir>/outputs/studies/<study
  name>.db`: a stable file per study, so running the same command again resumes the study.
  `open_storage(url)` opens any of the forms a sweep accepts:
  - `sqlite:///<path>.db`: a file (3 slashes: relative to the launch dir; 4: absolute). SQLite
    files are switched to WAL journaling and opened with a long lock timeout, so several
    processes on one machine (sweep workers, `hydra/launcher=joblib` jobs) can write at once.
  - `sqlite:///:memory:`: the sweep process only (no resume).
  - a database server, e.g. `postgresql+psycopg://user:password@host:5432/db` (the `postgres`
    extra installs the psycopg 3 driver): any SQLAlchemy URL whose driver is installed.
  - `journal:///<path>`: Optuna's JournalStorage in a file (same slashes as SQLite), for a shared
    filesystem without a database server: writers take the file's lock (a symlink beside it).
    Heartbeats are recorded as a trial system attribute (Optuna keeps none for journals).
  `storage_refusal(url, error)` turns a storage that cannot be opened into one paragraph.
- `<sweep dir>/study.json` (`StudyFile`): the storage URL, the study's name and direction, the
  resolved pruner config and how many jobs run at once. Jobs read it to find their study, and
  `python -m app.search.report <sweep dir>` reads it to find the trials.
- `trial_state`: the Optuna state a run's status is told as.
"""
from __future__ import annotations

import json
import re
import sqlite3
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

T = TypeVar("T")

STUDY_FILE = "study.json"
TRIAL_ENV = "APP_OPTUNA_TRIAL_ID"  # set for each job (hydra.job.env_set): the Optuna trial id
MEMORY_URL = "sqlite:///:memory:"
SQLITE_TIMEOUT_S = 60.0  # how long a writer waits for another process's lock on the file
STORAGE_OUTAGE_S = 300.0  # how long a worker, or a starting job, keeps trying a storage that stopped answering

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


SQLITE_PREFIX = "sqlite:///"
JOURNAL_PREFIX = "journal:///"
FILE_PREFIXES = (SQLITE_PREFIX, JOURNAL_PREFIX)
STORAGE_ACCEPTED = ("sqlite:///<path>.db (a file; 3 slashes: relative to the launch dir, 4: absolute), "
                    "sqlite:///:memory: (this process only), journal:///<path>.log (an Optuna journal file, "
                    "for a shared filesystem), or a reachable database URL whose driver is installed, "
                    "e.g. postgresql+psycopg://user:password@host:5432/db (pip install -e \".[postgres]\")")


def absolute_storage(url: str, launch_dir: str | Path) -> str:
    """`sqlite:///relative.db` and `journal:///relative.log` resolved against the launch dir, so
    that workers and `app.search.report` find the same file whatever their working directory;
    other URLs unchanged."""
    for prefix in FILE_PREFIXES:
        if url.startswith(prefix) and not url.startswith(prefix + "/") and url != MEMORY_URL:
            return prefix + str(Path(launch_dir).resolve() / url[len(prefix):])
    return url


def sqlite_path(url: str) -> Path | None:
    return Path(url[len(SQLITE_PREFIX):]) if url.startswith(SQLITE_PREFIX) and url != MEMORY_URL else None


def journal_path(url: str) -> Path | None:
    return Path(url[len(JOURNAL_PREFIX):]) if url.startswith(JOURNAL_PREFIX) else None


def storage_file(url: str) -> Path | None:
    """The file a SQLite or journal storage lives in (None: a server, or in memory)."""
    return sqlite_path(url) or journal_path(url)


def prepare_storage(url: str) -> None:
    """Create a storage file's folder; switch a SQLite file to WAL journaling (kept by the file),
    under which readers never block the writer and writers wait instead of failing."""
    path = storage_file(url)
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    if path == sqlite_path(url):
        with sqlite3.connect(path, timeout=SQLITE_TIMEOUT_S) as connection:
            connection.execute("PRAGMA journal_mode=WAL")


def _sqlite_connection(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, timeout=SQLITE_TIMEOUT_S, check_same_thread=False)
    # With WAL, NORMAL syncs at checkpoints instead of at every commit: a killed process loses
    # nothing it committed; only a power cut could lose the last commits (never corrupts).
    connection.execute("PRAGMA synchronous=NORMAL")
    return connection


# In-memory studies (`sqlite:///:memory:`) exist only inside one connection: the sweeper makes the
# storage (`new_memory_storage`) and jobs of the basic launcher, in the same process, open it here.
_MEMORY_STORAGES: dict[str, Any] = {}


def is_memory(url: str) -> bool:
    return url == MEMORY_URL


def new_memory_storage(url: str = MEMORY_URL):
    """A fresh in-memory storage, registered so that `open_storage(url)` in this process returns it."""
    import optuna
    import sqlalchemy.pool

    connection = sqlite3.connect(":memory:", check_same_thread=False)
    engine_kwargs = {"creator": lambda: connection, "poolclass": sqlalchemy.pool.StaticPool}
    _MEMORY_STORAGES[url] = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
    return _MEMORY_STORAGES[url]


def _first_byte(path: Path) -> bytes:
    with open(path, "rb") as file:
        return file.read(1)


def open_storage(url: str, heartbeat_interval: int | None = None, grace_period: int | None = None,
                 on_stale: Any = None):
    """The Optuna storage for `url` (the forms in the module docstring). `heartbeat_interval`,
    `grace_period` (seconds; None: no heartbeats) and `on_stale` (called for each trial that
    `optuna.storages.fail_stale_trials` fails) are Optuna's heartbeat options.
    SQLite: connections wait up to SQLITE_TIMEOUT_S for another process's lock, commit without
    fsync (see _sqlite_connection), and one connection is kept open (closing the last connection
    of a WAL file checkpoints it: ~5 ms per operation).
    `sqlite:///:memory:`: the storage `new_memory_storage` registered in this process (no heartbeats).
    Raises what the storage raises (`storage_refusal` tells the user's mistakes from the rest)."""
    import optuna
    import sqlalchemy.pool

    if is_memory(url):
        if url not in _MEMORY_STORAGES:
            new_memory_storage(url)
        return _MEMORY_STORAGES[url]
    journal = journal_path(url)
    if journal is not None:
        from app.search.internals import JournalHeartbeatStorage

        if journal.is_file() and _first_byte(journal) not in (b"", b"{"):
            # Optuna would append to any file: never write into someone else's data
            raise ValueError(f"{journal} is not an Optuna journal file (one JSON object per line)")
        backend = optuna.storages.journal.JournalFileBackend(str(journal))
        if not heartbeat_interval:
            return optuna.storages.JournalStorage(backend)
        return JournalHeartbeatStorage(backend, int(heartbeat_interval), grace_period, on_stale)
    heartbeat: dict[str, Any] = {}
    if heartbeat_interval:
        heartbeat = {"heartbeat_interval": int(heartbeat_interval), "grace_period": grace_period,
                     "heartbeat_stale_trial_callback": on_stale}
    path = sqlite_path(url)
    # a database server: test a pooled connection before using it, so that one the server dropped
    # (a restart, an idle timeout, a failover) is replaced instead of failing the next operation
    engine_kwargs = ({"pool_pre_ping": True} if path is None else
                     {"creator": lambda: _sqlite_connection(path), "poolclass": sqlalchemy.pool.StaticPool})
    with warnings.catch_warnings():  # heartbeat_interval is "experimental" in Optuna 5
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs or None,
                                             skip_compatibility_check=url in _SCHEMA_CHECKED, **heartbeat)
    _SCHEMA_CHECKED.add(url)
    return storage


# Database URLs whose table schema this process has checked against its Optuna version (Optuna
# loads its schema migrations to do so, ~0.1 s): once per process is enough (a worker process runs
# one trial after another, and each trial opens the storage twice: for itself and its heartbeat).
_SCHEMA_CHECKED: set[str] = set()


def display_url(url: str) -> str:
    """`url` with its password, if any, shown as *** (`scheme://user:***@host/db`): for logs and messages."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


def is_creation_race(error: BaseException) -> bool:
    """Whether a database error is another worker creating the same tables or study right now
    (SQLite: "table ... already exists", "database is locked"; PostgreSQL: "relation ... already
    exists", a duplicate key in the catalog)."""
    text = str(error)
    return any(words in text for words in ("already exists", "locked", "duplicate key"))


def _causes(error: BaseException | None):
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def is_transient(error: BaseException) -> bool:
    """Whether a storage operation failed in a way that may pass when tried again: the database
    server dropped or refused the connection (restarting, overloaded, a network cut), or another
    process held a SQLite lock past its timeout; seen directly or through Optuna's
    `StorageInternalError`."""
    import sqlalchemy.exc

    for cause in _causes(error):
        if isinstance(cause, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError,
                              sqlalchemy.exc.DisconnectionError, sqlite3.OperationalError)):
            return True
        if isinstance(cause, sqlalchemy.exc.DBAPIError) and cause.connection_invalidated:
            return True
    return False


def root_cause(error: BaseException) -> str:
    """The innermost error behind `error`, in one line: `Type: first line of its message`."""
    *_, cause = _causes(error)
    cause = getattr(cause, "orig", None) or cause
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0]}" if lines else type(cause).__name__
class StorageOutage:
    """One spell of a storage that does not answer, as a sweep worker or a job waits it out.

    `wait(error, what)` is called after each failed try (`what`: what the caller was doing, e.g.
    "the job opened its trial"): the first time it logs a warning; then it pauses before the next try
    (0.5 s, doubling, at most 15 s apart, never past the deadline); once the storage has not answered
    for `limit_s` seconds it raises the one-paragraph ConfigError, whose last sentences (`stops`) say
    what happens now and why nothing is lost. A spell object serves one retry loop; `over()` ends the
    spell after an answer, so the next failure starts a new one. `pause` is the wait itself
    (time.sleep; tests bring the storage back from it)."""

    def __init__(self, url: str, limit_s: float, stops: str, logger, pause: Callable[[float], None] | None = None):
        self.url, self.limit_s, self.stops, self.log = url, limit_s, stops, logger
        self.pause = pause or time.sleep
        self.since: float | None = None
        self.tries = 0

    def over(self) -> None:
        self.since, self.tries = None, 0

    def wait(self, error: BaseException, what: str) -> None:
        from app.errors import ConfigError

        now, cause = time.monotonic(), root_cause(error)
        if self.since is None:
            self.since, self.tries = now, 0
            self.log.warning("The study's storage %s did not answer when %s (%s): trying again for up to %.0f s",
                             display_url(self.url), what, cause, self.limit_s)
        if now - self.since >= self.limit_s:
            raise ConfigError(
                "hydra.sweeper.storage", display_url(self.url),
                "a storage that every worker and job reaches for as long as the sweep runs",
                f"It did not answer for {now - self.since:.0f} s when {what} ({cause}), so {self.stops}") from None
        self.pause(min(15.0, 0.5 * 2 ** self.tries, max(0.0, self.since + self.limit_s - now)))
        self.tries += 1

    def retrying(self, operation: Callable[[], T], what: str, give_up: Callable[[], bool] | None = None) -> T:
        """`operation()`, tried again while the storage does not answer (is_transient), within this
        spell's limit; other errors, and any once `give_up()` is true, are raised at once."""
        while True:
            try:
                result = operation()
            except Exception as error:  # noqa: BLE001 - only a storage that stopped answering is tried again
                if not is_transient(error) or (give_up is not None and give_up()):
                    raise
                self.wait(error, what)
                continue
            self.over()
            return result





def storage_refusal(url: str, error: BaseException, key: str = "hydra.sweeper.storage"):
    """The `ConfigError` (one paragraph naming `key`) for a storage that `open_storage` or a first
    operation on it failed on with `error` because of the URL or the machine: a malformed URL, a
    driver that is not installed, a server that is down or refuses the credentials, a folder that
    cannot be made, a file that is not a study storage. None for anything else (a bug, or a race
    between workers that the caller retries)."""
    import sqlalchemy.exc

    from app.errors import ConfigError

    def refuse(reason: str) -> ConfigError:
        return ConfigError(key, display_url(url), STORAGE_ACCEPTED, " ".join(reason.split()))  # one paragraph

    if isinstance(error, (sqlalchemy.exc.DBAPIError, sqlite3.Error)) and is_creation_race(error):
        return None  # SQLite's own driver too: prepare_storage sets WAL up through sqlite3
    if isinstance(error, ImportError):
        driver = getattr(error.__cause__, "name", None) or getattr(error, "name", None) or ""
        hint = ' (for PostgreSQL: pip install -e ".[postgres]")' if "psycopg" in driver or "postgres" in url else ""
        return refuse(f"Its database driver is not installed{hint}: {error.__cause__ or error}")
    if isinstance(error, (sqlalchemy.exc.ArgumentError, sqlalchemy.exc.NoSuchModuleError)):
        return refuse(f"It is not a database URL this machine can open ({type(error).__name__}: {error})")
    if isinstance(error, sqlalchemy.exc.DBAPIError):  # the server is down, refuses the login, ...
        return refuse(f"It cannot be opened: {getattr(error, 'orig', None) or error}")
    if isinstance(error, (sqlite3.Error, OSError)):
        return refuse(f"It cannot be opened: {error}")
    if isinstance(error, (ValueError, UnicodeDecodeError)) and storage_file(url) is not None:
        return refuse(f"The file is not an Optuna study storage of this kind ({type(error).__name__}: {error})")
    if isinstance(error, ValueError) and not storage_file(url):  # e.g. a port that is not a number
        return refuse(f"It is not a valid database URL ({error})")
    return None


def load_study(url: str, study_name: str, pruner: Any = None, sampler: Any = None, storage: Any = None):
    """Open an existing study (in `storage`, default: a new storage for `url`). Without a sampler,
    a RandomSampler: a job that only reports values should not pay for a model-based sampler's set-up."""
    import optuna

    return optuna.load_study(
        study_name=study_name, storage=storage or open_storage(url), pruner=pruner,
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
