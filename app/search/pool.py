"""Where a sweep's jobs run: one job per call, a `Future` per job, so the sweeper can start the
next trial the moment any running one ends (no batch barrier).

- `WorkerPool` (the joblib launcher, one machine): long-lived worker processes that the sweep
  owns, started with `spawn`. Each imports the app once and then runs one job at a time, the way
  Hydra's joblib launcher runs a job (`execute_job`). The pool watches every worker's process
  sentinel, so a worker that dies (SIGKILL, the kernel's out-of-memory killer, a crash in native
  code) is seen at once: its job's future gets `WorkerDied` with the reason, a fresh worker takes
  its place, and the other workers' jobs go on.
- `ThreadRunner` (any other launcher, e.g. hydra-submitit-launcher): `launcher.launch([job])`
  from a thread per job.
- `InlineRunner` (the basic launcher): the job runs in the sweep process, now (its config composed
  once per structure: `StudySweeper._runner` gives the launcher a `ComposedOnceLoader`).
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import threading
from concurrent.futures import Future
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Sequence

log = logging.getLogger(__name__)
STOP_GRACE_S = 10.0  # closing: how long a worker may take to end its job's Ctrl-C handling


class WorkerDied(Exception):
    """The process running a job ended without returning it; `reason` says how."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class JobExited(Exception):
    """A job ended its process with `sys.exit(code)` (e.g. a configuration refused in one
    paragraph): the sweep stops with that code, as it does when the job runs in the sweep."""

    def __init__(self, code: Any) -> None:
        super().__init__(f"a job exited with status {code}")
        self.code = code


def exit_reason(exitcode: int | None) -> str:
    """Why a worker process ended, in words."""
    if exitcode is None:
        return "its worker process ended"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = "an unknown signal"
        why = "; the kernel's out-of-memory killer sends it" if -exitcode == signal.SIGKILL else ""
        return f"its worker process was killed by signal {-exitcode} ({name}{why})"
    return f"its worker process exited with status {exitcode} before returning the job"


# ------------------------------------------------------------------ runners
class InlineRunner:
    """Runs each job in this process when it is started (Hydra's basic launcher)."""

    slots = 1

    def __init__(self, launcher: Any) -> None:
        self.launcher = launcher

    def start(self, overrides: Sequence[str], idx: int) -> Future:
        future: Future = Future()
        [ret] = self.launcher.launch([list(overrides)], initial_job_idx=idx)
        future.set_result(ret)
        return future

    def close(self) -> None:
        pass


class ThreadRunner:
    """`launcher.launch([job], initial_job_idx=idx)` in a daemon thread per job: any Hydra
    launcher, each job on its own (a Ctrl-C does not wait for a cluster job to end)."""

    def __init__(self, launcher: Any, slots: int) -> None:
        self.launcher, self.slots = launcher, slots

    def start(self, overrides: Sequence[str], idx: int) -> Future:
        future: Future = Future()

        def run() -> None:
            try:
                [ret] = self.launcher.launch([list(overrides)], initial_job_idx=idx)
            except BaseException as error:  # noqa: BLE001 - told to the sweeper through the future
                future.set_exception(error)
            else:
                future.set_result(ret)

        threading.Thread(target=run, name=f"sweep-job-{idx}", daemon=True).start()
        return future

    def close(self) -> None:
        pass


class WorkerPool:
    """`slots` worker processes running Hydra jobs for the joblib launcher's settings
    (`launcher.config`, `launcher.hydra_context`, `launcher.task_function`). Workers start at
    once (their imports overlap with the sweep's start) and are replaced when one dies."""

    def __init__(self, launcher: Any, slots: int) -> None:
        import cloudpickle

        self.slots = slots
        self._context = cloudpickle.dumps(_job_context(launcher))
        self._spawn = multiprocessing.get_context("spawn")
        self._lock = threading.Lock()
        self._idle: list[_Worker] = []
        self._busy: dict[_Worker, Future] = {}
        self._wake_read, self._wake_write = self._spawn.Pipe(duplex=False)
        self._closed = False
        for _ in range(slots):
            self._idle.append(self._new_worker())
        self._watcher = threading.Thread(target=self._watch, name="sweep-worker-pool", daemon=True)
        self._watcher.start()

    def _new_worker(self) -> "_Worker":
        parent, child = self._spawn.Pipe()
        # not daemonic: a job may start processes of its own (data loader workers); the sweep
        # closes the pool on every way out, and a worker whose sweep died ends at its pipe's EOF
        process = self._spawn.Process(target=worker_main, args=(child, self._context), daemon=False,
                                      name="sweep-worker")
        process.start()
        child.close()
        return _Worker(process, parent)

    def start(self, overrides: Sequence[str], idx: int) -> Future:
        future: Future = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("the worker pool is closed")
            while self._idle and not self._idle[-1].process.is_alive():  # died while idle
                self._idle.pop().conn.close()
            worker = self._idle.pop() if self._idle else self._new_worker()
            self._busy[worker] = future
            try:
                worker.conn.send((idx, list(overrides)))
            except OSError:  # it died just now: the watcher sees its sentinel and says why
                pass
        self._wake_write.send(None)
        return future

    def _watch(self) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
                busy = list(self._busy)
            waits = [self._wake_read, *(w.conn for w in busy), *(w.process.sentinel for w in busy)]
            ready = set(wait(waits))
            if self._wake_read in ready:
                while self._wake_read.poll():
                    self._wake_read.recv()
            for worker in busy:
                if worker.conn in ready or worker.process.sentinel in ready:
                    self._collect(worker)

    def _collect(self, worker: "_Worker") -> None:
        """A busy worker's job has returned or its process has ended: settle its future."""
        import cloudpickle

        try:
            message = worker.conn.recv_bytes() if worker.conn.poll() else None
        except (EOFError, OSError):
            message = None
        with self._lock:
            future = self._busy.pop(worker, None)
            if message is not None and worker.process.is_alive():
                self._idle.append(worker)
            else:
                worker.process.join(timeout=5)
                worker.conn.close()
                if not self._closed:
                    self._idle.append(self._new_worker())  # the next job needs no start-up wait
        if future is None:
            return
        if message is None:
            reason = exit_reason(worker.process.exitcode)
            log.warning("A sweep worker (pid %s) ended while running a job: %s", worker.process.pid, reason)
            future.set_exception(WorkerDied(reason))
            return
        kind, payload = cloudpickle.loads(message)
        if kind == "return":
            future.set_result(payload)
        elif kind == "exit":
            future.set_exception(JobExited(payload))
        else:
            future.set_exception(payload)

    def close(self) -> None:
        """End the workers: idle ones at once. Busy ones (the sweep stopped: Ctrl-C, or a job
        that exited it) get a moment to return, then a SIGINT (their job records itself as
        interrupted, as it does on a Ctrl-C in the terminal), STOP_GRACE_S to finish, and are
        terminated after that."""
        with self._lock:
            self._closed = True
            idle, busy = self._idle, list(self._busy)
            self._idle, self._busy = [], {}
        self._wake_write.send(None)
        for worker in [*idle, *busy]:
            try:
                worker.conn.send(None)  # read once its job has returned
            except OSError:
                pass
        for worker in busy:
            worker.process.join(timeout=2.0)
            if worker.process.is_alive() and worker.process.pid is not None:
                os.kill(worker.process.pid, signal.SIGINT)
        for worker in [*idle, *busy]:
            worker.process.join(timeout=STOP_GRACE_S)
            if worker.process.is_alive():
                worker.process.terminate()
                worker.process.join(timeout=5)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.conn.close()
        self._watcher.join(timeout=5)


class _Worker:
    def __init__(self, process: Any, conn: Connection) -> None:
        self.process, self.conn = process, conn


# ------------------------------------------------------------------ the worker's side
def _job_context(launcher: Any) -> dict[str, Any]:
    """What a worker needs to run a job as Hydra's joblib launcher would: the task function (by
    module and name where it has one: the decorated `@hydra.main` function is what its module
    holds, so the undecorated one is reached through `__wrapped__`), the Hydra context, the
    launch config and Hydra's global state."""
    from hydra.core.singleton import Singleton

    task = launcher.task_function
    module, name = getattr(task, "__module__", None), getattr(task, "__name__", None)
    reference, depth = None, 0
    candidate = getattr(sys.modules.get(module or ""), name or "", None)
    while candidate is not None and candidate is not task:
        candidate, depth = getattr(candidate, "__wrapped__", None), depth + 1
    if candidate is task and module != "__main__":
        reference = (module, name, depth)
    return {"task": None if reference else task, "task_reference": reference,
            "hydra_context": launcher.hydra_context, "config": launcher.config,
            "singleton_state": Singleton.get_state()}


def _task_function(context: dict[str, Any]) -> Callable[..., Any]:
    if context["task_reference"] is None:
        return context["task"]
    import importlib

    module, name, depth = context["task_reference"]
    task = getattr(importlib.import_module(module), name)
    for _ in range(depth):
        task = task.__wrapped__
    return task


def _trial_configs(context: dict[str, Any]) -> Any:
    """The job configs of this worker's sweep (`load_sweep_config`, reused for trials that differ
    only in values: app/search/configs.py), made once per worker."""
    configs = context.get("trial_configs")
    if configs is None:
        from app.search.configs import TrialConfigs

        loader, master = context["hydra_context"].config_loader, context["config"]
        configs = context["trial_configs"] = TrialConfigs(
            lambda o: loader.load_sweep_config(master, o), groups=list(master.hydra.runtime.choices.keys()))
    return configs


def execute_job(context: dict[str, Any], task: Callable[..., Any], idx: int, overrides: list[str]) -> Any:
    """One Hydra job, as hydra_joblib_launcher's `execute_job` runs it: Hydra's globals and
    Singleton state, the job's sweep config (job id and num from `idx`), then `run_job` into
    `hydra.sweep.dir/hydra.sweep.subdir`."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.singleton import Singleton
    from hydra.core.utils import run_job, setup_globals
    from omegaconf import open_dict

    setup_globals()
    Singleton.set_state(context["singleton_state"])
    config = _trial_configs(context)(list(overrides))
    with open_dict(config):
        config.hydra.job.id = f"{config.hydra.job.name}_{idx}"
        config.hydra.job.num = idx
    HydraConfig.instance().set_config(config)
    return run_job(hydra_context=context["hydra_context"], config=config, task_function=task,
                   job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")


def worker_main(conn: Connection, context_bytes: bytes) -> None:
    """A worker process: load the context once, then run jobs sent as `(idx, overrides)` until
    `None` (or the pool's end of the pipe closes). Each job runs with the environment the worker
    started with (a job's `hydra.job.env_set` does not leak into the next one)."""
    import cloudpickle

    try:
        context = cloudpickle.loads(context_bytes)  # imports the app: once per worker
        task = _task_function(context)
    except KeyboardInterrupt:  # Ctrl-C while starting: the sweep is stopping too
        return
    environment, cwd = dict(os.environ), os.getcwd()
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        if message is None:
            return
        idx, overrides = message
        try:
            result: tuple[str, Any] = ("return", execute_job(context, task, idx, overrides))
        except SystemExit as stop:
            result = ("exit", stop.code)
        except BaseException as error:  # noqa: BLE001 - the sweeper decides (e.g. Ctrl-C: interrupted)
            result = ("error", error)
        finally:
            os.environ.clear()
            os.environ.update(environment)
            os.chdir(cwd)
        try:
            payload = cloudpickle.dumps(result)
        except Exception as error:  # noqa: BLE001 - a return value that cannot be pickled
            payload = cloudpickle.dumps(("error", RuntimeError(
                f"the job's result could not be sent back: {type(error).__name__}: {error}")))
        try:
            conn.send_bytes(payload)
        except (OSError, KeyboardInterrupt):
            return
