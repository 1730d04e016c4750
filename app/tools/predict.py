"""`python -m app.predict <run dir> <input file> [--out preds.csv]`: predictions of a trained run
for the rows of a .csv (header row) or .npz file.

The input must hold the columns the run was trained on (`data.features` as the run resolved
them; other columns, such as the target, are ignored); they are scaled with the statistics the
checkpoint stores. The output is a CSV with one row per input row, in order: for classification
the predicted class label (the run's class names) in a column named after the target, then
`p_<label>`, each class's probability; for regression one column per target, in the target's
units. Without `--out` it goes to the standard output.
"""
from __future__ import annotations

import argparse
import csv
import io
import sys
from pathlib import Path
from typing import Any

import numpy as np

from app.errors import ConfigError


def predictions(run: Any, x: np.ndarray) -> tuple[list[str], list[list[Any]]]:
    """(header, rows) of the predictions for raw inputs `x` [n, in_features]."""
    if run.task == "classification":
        probabilities = run.predict_proba(x)
        labels = run.labels()
        chosen = probabilities.argmax(axis=1)
        header = [run.targets[0] if run.targets else "prediction", *(f"p_{label}" for label in labels)]
        rows = [[labels[c], *(f"{p:.6g}" for p in row)] for c, row in zip(chosen, probabilities)]
    else:
        values = run.untransform(run.outputs(x)).double().numpy()  # the target's units
        header = run.target_names()
        rows = [[f"{v:.9g}" for v in row] for row in values]  # 9 digits: float32 exactly
    return header, rows


def predict_file(run_dir: str, input_file: str, checkpoint: str = "best",
                 device: str = "cpu") -> tuple[list[str], list[list[Any]]]:
    """Load the run, read and check `input_file`'s feature columns, predict."""
    from app.data.files import read_columns
    from app.run.load import load_run

    run = load_run(run_dir, checkpoint, device=device)
    columns = run.feature_columns or run.features
    x = read_columns(input_file, columns, "input_file", "the run was trained on")
    if x.shape[1] != run.in_features:
        raise ConfigError("input_file", input_file, f"columns giving the run's {run.in_features} features: "
                          f"{', '.join(run.features)}", f"Its columns {', '.join(columns)} give {x.shape[1]} values per row")
    return predictions(run, x)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m app.predict",
        description="Predict with a trained run: class labels (and probabilities) or values for each "
                    "row of a .csv or .npz file, scaled as in training.")
    parser.add_argument("run_dir", help="the run directory (outputs/runs/<date>/<time>)")
    parser.add_argument("input_file", help="a .csv (header row) or .npz file with the run's feature columns")
    parser.add_argument("--out", help="write the predictions to this CSV file (default: standard output)")
    parser.add_argument("--checkpoint", default="best", help="best (default), last, or a checkpoint file")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, mps")
    args = parser.parse_args(argv)
    try:
        header, rows = predict_file(args.run_dir, args.input_file, args.checkpoint, args.device)
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
        if args.out:
            out = Path(args.out)
            if out.suffix.lower() != ".csv":
                raise ConfigError("--out", args.out, "a .csv file path", "Predictions are written as CSV")
            try:
                out.write_text(text.getvalue())
            except OSError as error:
                raise ConfigError("--out", args.out, "a .csv file path in a writable directory",
                                  f"{error.strerror or error}") from None
            print(f"wrote {len(rows)} predictions to {out}", file=sys.stderr)
        else:
            sys.stdout.write(text.getvalue())
    except ConfigError as error:
        print(f"Error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
