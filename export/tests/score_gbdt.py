"""Scores rows with an exported Confide tree ensemble in XGBoost and onnxruntime, as a serving team would.

Usage: python score_gbdt.py EXPORT_DIR REQUEST.json RESPONSE.json

REQUEST holds "features" (rows of tree features, null = missing) for `model.json` and "columns"
(per raw column, its cells: numbers or null, or strings) for `model.onnx`. RESPONSE holds
XGBoost's probabilities and margins, its total gain / cover per feature, and onnxruntime's
probabilities and logits (null where the graph refuses a row). Used by the Rust tests.
"""
import json
import math
import os
import sys

import numpy as np
import onnxruntime as ort
import xgboost as xgb


def plain(values):
    return [None if math.isnan(v) else float(v) for v in np.asarray(values, dtype=np.float64).ravel()]


def main() -> None:
    export_dir, request_path, response_path = sys.argv[1:4]
    with open(request_path) as f:
        request = json.load(f)

    booster = xgb.Booster(model_file=os.path.join(export_dir, "model.json"))
    x = np.array([[np.nan if v is None else v for v in row] for row in request["features"]], dtype=np.float32)
    data = xgb.DMatrix(x, missing=np.nan, feature_names=booster.feature_names, feature_types=booster.feature_types)
    config = json.loads(booster.save_config())

    session = ort.InferenceSession(os.path.join(export_dir, "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = {}
    for graph_input in session.get_inputs():
        cells = request["columns"][graph_input.name]
        if graph_input.type == "tensor(string)":
            feeds[graph_input.name] = np.array(cells, dtype=object).reshape(-1, 1)
        else:
            feeds[graph_input.name] = np.array([np.nan if v is None else v for v in cells], dtype=np.float32).reshape(-1, 1)
    probability, logit = session.run(["probability", "logit"], feeds)

    response = {
        "xgboost_version": xgb.__version__,
        "xgb_trees": booster.num_boosted_rounds(),
        "xgb_base_score": config["learner"]["learner_model_param"]["base_score"],
        "xgb_probability": plain(booster.predict(data)),
        "xgb_margin": plain(booster.predict(data, output_margin=True)),
        "xgb_total_gain": booster.get_score(importance_type="total_gain"),
        "xgb_total_cover": booster.get_score(importance_type="total_cover"),
        "ort_inputs": [i.name for i in session.get_inputs()],
        "ort_probability": plain(probability),
        "ort_logit": plain(logit),
        "ort_shape": list(probability.shape),
    }
    with open(response_path, "w") as f:
        json.dump(response, f)


if __name__ == "__main__":
    main()
