#!/usr/bin/env python3
"""Scores a CSV of raw rows with a model exported by `confide model export` in onnxruntime.

    python score_onnxruntime.py model.onnx rows.csv scores.csv [--id-column customerID]

The graph has one input per feature column of the dataset schema, shape [N, 1]: float inputs
get the cell parsed as a number (a blank cell, or one of NA / N/A / null, is NaN = missing);
string inputs get the cell with surrounding whitespace trimmed. Other CSV columns (the id,
the target) are ignored. Writes `id,probability` (the row number when no id column is given),
with probabilities printed to full float32 precision; NaN marks a row the model refuses (a
missing cell the schema does not impute, or an unknown category).
"""
import argparse
import csv
import sys

import numpy as np
import onnxruntime as ort

MISSING = {"", "NA", "N/A", "null"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("rows")
    ap.add_argument("out")
    ap.add_argument("--id-column", default=None)
    args = ap.parse_args()

    session = ort.InferenceSession(args.model, providers=["CPUExecutionProvider"])
    with open(args.rows, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    feeds = {}
    for spec in session.get_inputs():
        if rows and spec.name not in rows[0]:
            sys.exit(f"{args.rows}: no column `{spec.name}` (the model needs {[i.name for i in session.get_inputs()]})")
        cells = [r[spec.name].strip() for r in rows]
        if spec.type == "tensor(float)":
            values = [np.nan if c in MISSING else float(c) for c in cells]
            feeds[spec.name] = np.array(values, dtype=np.float32).reshape(-1, 1)
        else:
            feeds[spec.name] = np.array(cells, dtype=object).reshape(-1, 1)
    (probability,) = session.run(["probability"], feeds)
    with open(args.out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "probability"])
        for i, (row, p) in enumerate(zip(rows, probability)):
            w.writerow([row[args.id_column] if args.id_column else i, repr(float(p))])
    return 0


if __name__ == "__main__":
    sys.exit(main())
