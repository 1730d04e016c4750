"""One run on several processes (DistributedDataParallel) on one host: starting the group,
joining it, and turning a failed rank into one clear error.

Two ways in, one group: N processes, rank r on GPU r (`cuda:<local rank>`, NCCL) or all on the
CPU (gloo); rank 0 owns the run dir, the others write nothing there.

- `python -m app trainer.devices=N`: the Hydra job (a run, or one job of a `--multirun` or a
  sweep) starts N worker processes with PyTorch's elastic launcher (`run_group`), waits for them
  and returns rank 0's summary, so each job of a sweep is its own N-process group returning one
  objective. The job's process owns the run dir Hydra made (its `.hydra/`); the workers run
  `app.main.run` in it with the job's composed config.
- `torchrun --nproc_per_node=N -m app ...`: every rank re-enters `app.run.launch` and
  `@hydra.main`. Rank 0 composes and creates the run dir as usual and publishes it
  (`publish_run_dir`); the other ranks wait for it before Hydra starts (`follow_main_run_dir`)
  and compose the same config pointed at that directory without writing to it.

A rank that fails brings the group down: the launcher (torchrun's agent, or `run_group`'s) stops
the other ranks, so nobody waits for a dead peer; a rank stuck in a collective fails after
`trainer.ddp_timeout` seconds. `run_group` reports which rank failed and how, in one paragraph.
"""
from __future__ import annotations

import copy
import logging
import os
import pickle
import shutil
import signal
import sys
import tempfile
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from app.errors import ConfigError
from app.run.device import resolve_device
from app.train import distributed

log = logging.getLogger(__name__)

RUN_DIR_KEY = "app/run_dir"
# Hydra's flags that answer and exit without a run: under torchrun rank 0 alone answers.
INFO_FLAGS = ("--help", "-h", "--hydra-help", "--version", "--cfg", "-c", "--info", "-i", "--resolve",
              "--shell-completion", "-sc")
_LAUNCHER_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT")
                          if hasattr(signal, name))
_bootstrap_store: Any = None  # torchrun: the store rank 0 publishes its run dir in
_WORKER_ENV = "APP_GROUP_WORKER"  # set in the workers `run_group` starts


class RankFailure(RuntimeError):
    """A rank of the run's process group failed (raised, or was killed); the group was stopped."""


# ----------------------------------------------------------------------------- which process
def under_torchrun() -> bool:
    """This process is a rank started by torchrun (not a worker `run_group` started)."""
    return "TORCHELASTIC_RUN_ID" in os.environ and "RANK" in os.environ and not os.environ.get(_WORKER_ENV)



def launch_rank() -> int:
    """This process's rank as its launcher set it: torchrun's RANK, else 0 (one process, or the
    job process of `trainer.devices=N`, which owns the run dir)."""
    return int(os.environ["RANK"]) if under_torchrun() else 0


def starts_group(cfg: DictConfig) -> bool:
    """Whether this process starts the run's N processes itself (`trainer.devices=N`, not under torchrun)."""
    return cfg.trainer.devices > 1 and not under_torchrun()


# ----------------------------------------------------------------------------- devices
def rank_device(cfg: DictConfig) -> torch.device:
    """The device this rank trains on: `device.type` resolved as for one process; in a process
    group on CUDA, the GPU of this rank's local rank (device.index is then not used)."""
    if not distributed.active():
        return resolve_device(cfg.device.type, cfg.device.index)
    if cfg.device.type == "cpu" or (cfg.device.type == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return resolve_device("cuda", int(os.environ.get("LOCAL_RANK", distributed.rank())))


def check_devices(cfg: DictConfig, world_size: int) -> None:
    """Refuse a group this machine cannot run: more CUDA processes than GPUs, MPS, CUDA graphs."""
    if world_size == 1:
        return
    accepted = "1 (one process)"
    if cfg.device.type == "mps":
        raise ConfigError("device.type", "mps", "cpu or cuda with several processes",
                          "DistributedDataParallel has no backend for MPS tensors")
    cuda = cfg.device.type == "cuda" or (cfg.device.type == "auto" and torch.cuda.is_available())
    if cuda:
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if world_size > gpus:
            raise ConfigError(
                "trainer.devices", world_size,
                f"{accepted}, up to {gpus} on this machine (one process per GPU), or device=cpu (gloo)"
                if gpus else f"{accepted}, or device=cpu to train on N processes on the CPU (gloo)",
                f"this machine has {gpus} CUDA device(s)" if gpus else "CUDA is not available on this machine",
            )
    if cfg.trainer.cuda_graph is True:  # auto: off with several processes
        raise ConfigError("trainer.cuda_graph", True, "auto or false with several processes",
                          "DistributedDataParallel all-reduces gradients outside a captured CUDA graph")


# ----------------------------------------------------------------------------- torchrun
def _torchrun_store() -> Any:
    """A client of the store torchrun's agent hosts (or, where the agent hosts none, the store
    rank 0 hosts), shared with the process group later."""
    global _bootstrap_store
    if _bootstrap_store is None:
        import torch.distributed as dist
        from torch.distributed.constants import default_pg_timeout

        agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
        _bootstrap_store = dist.TCPStore(
            os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), int(os.environ["WORLD_SIZE"]),
            is_master=not agent_store and launch_rank() == 0, timeout=default_pg_timeout,
            wait_for_workers=False, multi_tenant=True,
        )
    return _bootstrap_store


def _run_dir_key() -> str:
    return f"{RUN_DIR_KEY}/{os.environ.get('TORCHELASTIC_RUN_ID')}/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"


def check_torchrun_args(args: list[str]) -> None:
    """Refuse what a torchrun rank cannot do: a --multirun (N ranks would each run the sweep)."""
    if any(a in ("--multirun", "-m") for a in args):
        raise ConfigError("--multirun", True, "python -m app --multirun trainer.devices=N ... (each job "
                          "starts its own N processes)", "under torchrun each rank would run the whole sweep")


def follow_main_run_dir() -> list[str]:
    """For a torchrun rank > 0, before Hydra starts: wait for rank 0's run dir and return the
    overrides that make this rank's Hydra use it, write nothing there (no `.hydra/`, no log
    file) and log to the console only."""
    from app.run.resume import _quote

    run_dir = _torchrun_store().get(_run_dir_key()).decode()
    return [f"hydra.run.dir={_quote(run_dir)}", "hydra.output_subdir=null", "hydra/job_logging=none"]


def publish_run_dir(run_dir: Path) -> None:
    """Under torchrun, rank 0: tell the other ranks the run dir (a no-op otherwise)."""
    if under_torchrun() and launch_rank() == 0:
        _torchrun_store().set(_run_dir_key(), str(Path(run_dir).resolve()))


# ----------------------------------------------------------------------------- in every rank
def join(cfg: DictConfig) -> None:
    """Join the run's process group (NCCL on CUDA, gloo on the CPU) with `trainer.ddp_timeout`;
    a no-op for a plain process (not a torchrun rank nor a `run_group` worker). On the CPU each
    rank takes its share of the cores."""
    if distributed.active() or not (under_torchrun() or os.environ.get(_WORKER_ENV)):
        return  # one plain process (torchrun --nproc_per_node=1 does make a group of one)
    import torch.distributed as dist

    world = int(os.environ["WORLD_SIZE"])
    if under_torchrun() and cfg.trainer.devices not in (1, world):
        raise ConfigError("trainer.devices", cfg.trainer.devices,
                          f"1 or {world} (torchrun's --nproc_per_node) under torchrun",
                          f"torchrun started {world} processes")
    check_devices(cfg, world)
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    cuda = cfg.device.type == "cuda" or (cfg.device.type == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    else:
        from app.search.trial import share_cpu_threads

        share_cpu_threads(local_world)
    options: dict[str, Any] = {"backend": "nccl" if cuda else "gloo",
                               "timeout": timedelta(seconds=float(cfg.trainer.ddp_timeout))}
    if under_torchrun():  # the store rank 0's run dir came through
        options.update(store=_torchrun_store(), rank=int(os.environ["RANK"]), world_size=world)
    dist.init_process_group(**options)
    if under_torchrun() and distributed.rank() > 0:  # rank 0 logs the run; the others warn only
        _configure_logging(distributed.rank(), None)


def leave(together: bool = False) -> None:
    """Leave the process group (a no-op outside one). `together` (the run ended on every rank):
    wait for the other ranks first, so that none exits while a peer still talks to it (gloo
    aborts the process at exit when a peer's connection goes away under it). After a failure
    the ranks leave without waiting: a rank that failed never comes to the barrier."""
    if distributed.active():
        import torch.distributed as dist

        if together:
            dist.barrier()
        dist.destroy_process_group()


# ----------------------------------------------------------------------------- trainer.devices=N
def run_group(cfg: DictConfig, run_dir: Path, run: Callable[[DictConfig, Path], Any]) -> Any:
    """Run `run(cfg, run_dir)` on `trainer.devices` processes started with PyTorch's elastic
    launcher and return rank 0's result (the run's summary). Raises the failing rank's
    ConfigError as it is, and any other failure as one `RankFailure` naming the rank."""
    from torch.distributed.elastic.multiprocessing.api import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    from app.run.record import Summary
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    n = int(cfg.trainer.devices)
    check_devices(cfg, n)
    scratch = Path(tempfile.mkdtemp(prefix="app-group-"))  # per-rank error records; not the run dir
    config = LaunchConfig(
        min_nodes=1, max_nodes=1, nproc_per_node=n, run_id=f"app-{uuid.uuid4().hex[:12]}",
        rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, start_method="spawn",
        logs_specs=DefaultLogsSpecs(log_dir=str(scratch / "elastic")),
    )
    payload = (_job_hydra_config(), cfg, str(run_dir), str(scratch), run)
    # The launcher's progress lines and failure report: the one error is ours (below).
    # (torch sets a level on each of its loggers: every one of them, not only their parents.)
    quieted = {name: logging.getLogger(name).level for name in _launcher_loggers()}
    for name in quieted:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    # The launcher turns these signals into its SignalException and leaves its handlers behind:
    # the process's own come back after the group (the next job of a sweep runs in this process).
    handlers = {sig: signal.getsignal(sig) for sig in _LAUNCHER_SIGNALS}
    try:
        results = elastic_launch(config, _worker)(payload)
    except ChildFailedError as failed:
        raise _failure(failed.failures, scratch, n, run_dir) from None
    except SignalException as stopped:  # the ranks got the signal too (Ctrl-C reaches the whole group)
        if stopped.sigval != signal.SIGINT:
            raise SystemExit(128 + int(stopped.sigval)) from None
        interrupted = KeyboardInterrupt()
        summary = Summary.read(run_dir)  # rank 0 records where it stopped, if it had the time
        interrupted.epoch = summary.epochs_run if summary is not None else None  # type: ignore[attr-defined]
        raise interrupted from None
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        for name, level in quieted.items():
            logging.getLogger(name).setLevel(level)
        shutil.rmtree(scratch, ignore_errors=True)
    return results[0]


def _launcher_loggers() -> list[str]:
    import torch.distributed.elastic.agent.server.api  # noqa: F401  (creates its loggers)

    prefixes = ("torch.distributed.elastic", "torch.distributed.launcher", "torch.multiprocessing")
    return [name for name in [*prefixes, *logging.root.manager.loggerDict] if name.startswith(prefixes)]


def _job_hydra_config() -> DictConfig:
    """The job's Hydra config with its interpolations resolved here, in the job: the sweep and
    run dirs follow `${now:...}`, the job's name and override_dirname resolvers Hydra registers
    for the job only; resolved in a worker they would name another time or fail."""
    root = copy.deepcopy(HydraConfig.instance().cfg)
    OmegaConf.set_readonly(root.hydra, False)

    def resolve(node: DictConfig, live: DictConfig) -> None:
        for key in node.keys():
            if OmegaConf.is_missing(node, key):
                continue
            if OmegaConf.is_interpolation(node, key):
                try:
                    node[key] = live[key]
                except Exception:  # noqa: BLE001 -- a key the job never resolves (it needs the task config)
                    pass
            elif isinstance(node[key], DictConfig):
                resolve(node[key], live[key])

    resolve(root.hydra, HydraConfig.get())
    return root


def _worker(payload: tuple) -> Any:
    """One rank of `run_group`: adopt the job's Hydra config and run dir, join the group, run."""
    hydra_root, cfg, run_dir, scratch, run = payload
    rank = int(os.environ["RANK"])
    os.environ[_WORKER_ENV] = "1"
    try:
        from hydra.core.utils import setup_globals

        setup_globals()  # the resolvers a config may use (${hydra:...}, ${now:...})
        HydraConfig.instance().set_config(hydra_root)
        _configure_logging(rank, HydraConfig.get())
        join(cfg)
        result = run(cfg, Path(run_dir))
        leave(together=True)
        return result if rank == 0 else None
    except BaseException as error:  # recorded for the launching process, which reports it
        # A full disk, a damaged record, a nondeterministic op: the paragraph one process shows.
        from app.run.record import refusal

        try:
            shown = refusal(error, cfg.resume, run_dir, HydraConfig.get().runtime.cwd) if isinstance(error, Exception) else None
        except Exception:  # noqa: BLE001 -- before the job's Hydra config was adopted: as it is
            shown = None
        _record(Path(scratch), rank, shown or error)
        sys.exit(1)  # no traceback: the launching process prints the one error
    finally:
        leave()


def _configure_logging(rank: int, hydra_cfg: DictConfig | None) -> None:
    """Rank 0 logs as the job does (console and the run's log file); the others only warn,
    on stderr, naming their rank."""
    if rank == 0:
        from hydra.core.utils import configure_log

        configure_log(hydra_cfg.job_logging, hydra_cfg.verbose)
    else:
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr, force=True,
                            format=f"[rank {rank}] %(levelname)s %(name)s: %(message)s")


def _record(scratch: Path, rank: int, error: BaseException) -> None:
    if isinstance(error, ConfigError):
        record: Any = error
    elif isinstance(error, KeyboardInterrupt):
        record = "interrupted (Ctrl-C)"
    else:
        text = str(error).strip().splitlines()
        record = f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")
        # The traceback goes to the run's log at debug level (hydra.verbose=true shows it):
        # on the console, the launching process prints one error for the group.
        log.debug("rank %d failed", rank, exc_info=error)
    (scratch / f"rank-{rank}.pkl").write_bytes(pickle.dumps(record))


def _failure(failures: dict[int, Any], scratch: Path, world_size: int, run_dir: Path) -> Exception:
    """The one error to show for a group that failed: a rank's ConfigError as it is (the same
    mistake on every rank), else the first failed rank and what happened to it."""
    records = {}
    for path in scratch.glob("rank-*.pkl"):
        records[int(path.stem.split("-")[1])] = pickle.loads(path.read_bytes())
    config_errors = [records[r] for r in sorted(records) if isinstance(records[r], ConfigError)]
    if config_errors:
        return config_errors[0]
    killed = sorted(r for r, f in failures.items() if f.exitcode < 0 and r not in records)
    rank = killed[0] if killed else min(records or failures)
    if rank in records:
        what = records[rank]
    else:
        exitcode = failures[rank].exitcode
        what = (f"killed by {signal.Signals(-exitcode).name}" if exitcode < 0
                else f"exited with status {exitcode}")
    from app.run.record import shown_path

    where = shown_path(run_dir, HydraConfig.get().runtime.cwd)
    return RankFailure(
        f"rank {rank} of {world_size} failed: {what}. The other ranks were stopped; the run's "
        f"checkpoints are kept: continue it from its last one with: python -m app resume={where}"
    )
