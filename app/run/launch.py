"""`python -m app`: route the command line before Hydra sees it.

- `preflight=true` runs `app.tools.preflight` on the composed config (with `resume=<run dir>`: on that
  run's config): no run directory is written.
- `resume=<run dir>` is rewritten so Hydra continues that run in its own directory
  (`app.run.resume.resume_argv`).
- everything else goes to Hydra unchanged (`app.main.main`).

Under torchrun (app/run/distributed.py) rank 0 does all of the above; the other ranks answer no
`--help`/`--cfg`/preflight of their own, and wait for rank 0's run dir before Hydra starts.
"""
from __future__ import annotations

import os
import sys
from typing import Any

from app.run import distributed, resume
from app.errors import ConfigError


def launch() -> None:
    args = sys.argv[1:]
    try:
        follower = distributed.under_torchrun() and distributed.launch_rank() > 0
        if distributed.under_torchrun():
            distributed.check_torchrun_args(args)
        if follower and (any(a.split("=")[0] in distributed.INFO_FLAGS for a in args)
                         or (resume.find_override(args, "preflight") or (0, False))[1] is True):
            sys.exit(0)  # rank 0 answers
        preflight = resume.find_override(args, "preflight")
        if preflight is not None and preflight[1] is True:
            if any(a in ("--multirun", "-m") for a in args):
                raise ConfigError("preflight", True, "preflight=true without --multirun",
                                  "a preflight checks one configuration")
            if not any(a.startswith("-") for a in args):  # --cfg, --help...: Hydra's business
                from app.tools.preflight import main as preflight_main

                overrides = [a for i, a in enumerate(args) if i != preflight[0]]
                if resume.find_override(overrides, "resume"):  # check the run's own config
                    overrides = [a for a in resume.resume_argv(overrides)
                                 if not a.startswith(("resume=", "hydra."))]
                sys.exit(preflight_main(overrides))
        resume.LAUNCH_ARGV = list(sys.argv)
        sys.argv[1:] = resume.resume_argv(args)
        if follower:
            sys.argv[1:] += distributed.follow_main_run_dir()
    except ConfigError as error:
        print(f"Error: {error}", file=sys.stderr)
        sys.exit(2)
    from app.main import main

    # Hydra prints what escapes the task function or composing as a traceback; let it through
    # instead (HYDRA_FULL_ERROR), so a user's mistake found there becomes one paragraph here.
    # With HYDRA_FULL_ERROR set by the user, everything but ConfigError keeps its traceback.
    full_error = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        main()
    except Exception as caught:  # noqa: BLE001 -- translated or re-raised below
        error = caught if isinstance(caught, ConfigError) else None if full_error == "1" else user_error(caught, args)
        if error is None:
            raise
        print(f"Error: {error}", file=sys.stderr)
        sys.exit(2)
    finally:
        if full_error is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = full_error


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def user_error(error: BaseException, args: list[str]) -> Any:
    """The ConfigError a mistake found while Hydra composes or starts a run amounts to (a config
    file that is not YAML, a key its schema lacks, an option or config dir that does not exist,
    an output directory that cannot be made), or None for anything else (a bug: its traceback)."""
    import yaml
    from hydra.errors import HydraException
    from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

    cause = error
    while cause is not None and not isinstance(cause, (yaml.YAMLError, ConfigKeyError)):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, yaml.YAMLError):
        mark = getattr(cause, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(cause, "problem", None) or _one_line(cause)
        context = getattr(cause, "context", None)
        return ConfigError(
            "config file", mark.name if mark is not None else "?",
            "YAML mappings of `key: value`, indented with spaces (a tab is not allowed), each key once",
            f"It is not valid YAML: {problem}{where}" + (f" ({context})" if context else ""))
    if isinstance(cause, ConfigKeyError) and getattr(cause, "full_key", None):
        schema = getattr(cause, "object_type", None)
        known = [f for f in getattr(schema, "__dataclass_fields__", {}) if not f.startswith("_")]
        source = _one_line(error).split(":", 1)[0]  # "In 'model/extra'": the file that set it
        return ConfigError(cause.full_key, source.removeprefix("In ").strip("'") or cause.full_key,
                           f"the keys of `{cause.full_key.rsplit('.', 1)[0]}`: " + ", ".join(known)
                           if known else "a key its schema declares",
                           str(cause).splitlines()[0] + ", so nothing would read it")
    if isinstance(error, (HydraException, OmegaConfBaseException)):
        text = _one_line(error).split(" Config search path:")[0]  # Hydra's search path: noise here
        inner, why = error, ""
        while not why and (inner.__cause__ is not None or inner.__context__ is not None):
            inner = inner.__cause__ or inner.__context__  # the nearest cause that adds something:
            line = str(inner).strip().splitlines()[0] if str(inner).strip() else ""  # OmegaConf's words
            why = line if line and line not in text else ""  # before Python's ("invalid literal ...")
        if why:
            text += f": {why}"  # e.g. "Error merging override trainer.epochs=abc: Value 'abc' ..."
        return ConfigError("overrides", " ".join(args),
                           "overrides and config files `python -m app --help` lists", text)
    if isinstance(error, OSError):  # Hydra making the run or sweep directory
        key = "hydra.sweep.dir" if any(a in ("--multirun", "-m") for a in args) else "hydra.run.dir"
        return ConfigError(key, error.filename or "?", "a directory the app can create and write in "
                           "(by default outputs/ under the directory you launch from)",
                           f"It cannot be made or written: {error.strerror or error}")
    return None
