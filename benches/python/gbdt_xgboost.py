"""XGBoost reference for the tree benches (`gbdt_quality`, `gbdt_speed`; issue 14, items 4 and 5).

Trains binary-logistic XGBoost (`tree_method = "hist"`) with the hyper-parameters the bench
passes, one model per fit of a manifest, and scores each fit's test rows after every tree, so
the bench computes every AUC itself (one AUC function for Confide and XGBoost alike).

Input: a JSON manifest written by the bench binary:

    {"params": {...xgboost params...}, "trees": 100, "runs": 1,
     "fits": [{"name": "central", "train": "X.f32", "labels": "y.f32", "rows": N, "cols": D,
               "test": "T.f32", "test_rows": M, "out": "P.f32"}, ...]}

Matrices are raw little-endian float32, row-major, NaN = missing. For every fit, `out` receives
`trees × test_rows` float32 probabilities (row k = the first k + 1 trees); with no `test` only
the timing is taken. With `runs` > 1 the fit is trained that many times (the speed bench takes
the median, after one untimed warm-up fit) and scored once. Output: one JSON object on stdout with, per fit, the seconds of
each run (DMatrix construction + training, and training alone).

    python gbdt_xgboost.py MANIFEST.json
"""

import json
import os
import sys
import time

import numpy as np
import xgboost as xgb


def read(path: str, rows: int, cols: int) -> np.ndarray:
    data = np.fromfile(path, dtype="<f4")
    if data.size != rows * cols:
        raise SystemExit(f"{path}: {data.size} values, expected {rows} x {cols}")
    return data.reshape(rows, cols)


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    with open(sys.argv[1], encoding="utf-8") as f:
        manifest = json.load(f)
    params = dict(manifest["params"])
    params.update({"objective": "binary:logistic", "tree_method": "hist"})
    trees = int(manifest["trees"])
    runs = int(manifest.get("runs", 1))
    results = []
    for fit in manifest["fits"]:
        x = read(fit["train"], fit["rows"], fit["cols"])
        y = read(fit["labels"], fit["rows"], 1).ravel()
        total, train_only = [], []
        booster = None
        if runs > 1:
            # One untimed warm-up fit (thread pool, allocator), as timing benches do on both sides.
            xgb.train(params, xgb.DMatrix(x, label=y, missing=np.nan), num_boost_round=trees)
        for _ in range(runs):
            start = time.perf_counter()
            dtrain = xgb.DMatrix(x, label=y, missing=np.nan)
            built = time.perf_counter()
            booster = xgb.train(params, dtrain, num_boost_round=trees)
            end = time.perf_counter()
            total.append(end - start)
            train_only.append(end - built)
        if fit.get("test") and booster is not None:
            t = read(fit["test"], fit["test_rows"], fit["cols"])
            dtest = xgb.DMatrix(t, missing=np.nan)
            curve = np.stack([booster.predict(dtest, iteration_range=(0, k + 1)) for k in range(trees)]).astype("<f4")
            curve.tofile(fit["out"])
        results.append({"name": fit["name"], "seconds": total, "train_seconds": train_only})
    print(json.dumps({"xgboost": xgb.__version__, "nthread": params.get("nthread", 0), "cpus": os.cpu_count(), "fits": results}))


if __name__ == "__main__":
    main()
