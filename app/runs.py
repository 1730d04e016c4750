"""`python -m app.runs [dir] [--compare A B ...] [--plot A B ... --out x.png]`: see app/tools/runs.py."""
import sys

from app.tools.runs import main

if __name__ == "__main__":
    sys.exit(main())
