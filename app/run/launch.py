"""`python -m app`: route the command line before Hydra sees it.

- `preflight=true` runs `app.tools.preflight` on the composed config (with `resume=<run dir>`: on that
  run's config): no run directory is written.
- `resume=<run dir>` is rewritten so Hydra continues that run in its own directory
  (`app.run.resume.resume_argv`).
- everything else goes to Hydra unchanged (`app.main.main`).
"""
from __future__ import annotations

import sys

from app.run import resume
from app.errors import ConfigError


def launch() -> None:
    args = sys.argv[1:]
    try:
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
    except ConfigError as error:
        print(f"Error: {error}", file=sys.stderr)
        sys.exit(2)
    from app.main import main

    main()
