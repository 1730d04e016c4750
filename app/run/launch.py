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

import sys

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

    main()
