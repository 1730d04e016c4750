"""`python -m app.evaluate <run dir> [data overrides]`: see app/tools/evaluate.py."""
import sys

from app.tools.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
