"""`python -m app.predict <run dir> <input file> [--out preds.csv]`: see app/tools/predict.py."""
import sys

from app.tools.predict import main

if __name__ == "__main__":
    sys.exit(main())
