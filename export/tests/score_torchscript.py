"""Scores rows with an exported Confide TorchScript model, as a serving team would.

Usage: python score_torchscript.py MODEL.pt REQUEST.json RESPONSE.json

REQUEST holds "encoded" (rows of encoded features), "numeric" (raw numeric columns, null =
missing) and "categorical" (raw categorical strings, "" = missing). RESPONSE holds the module's
probabilities from `forward(encoded)`, from `predict_raw` on the raw columns, the parameter
names and shapes, and the metadata extra file. Used by the Rust tests that check the export.
"""
import json
import sys

import torch


def main() -> None:
    model_path, request_path, response_path = sys.argv[1:4]
    with open(request_path) as f:
        request = json.load(f)
    extra = {"confide.json": ""}
    module = torch.jit.load(model_path, _extra_files=extra)
    module.eval()
    with torch.no_grad():
        encoded = torch.tensor(request["encoded"], dtype=torch.float32)
        forward = module(encoded)
        numeric = torch.tensor(
            [[float("nan") if v is None else v for v in row] for row in request["numeric"]],
            dtype=torch.float64,
        ).reshape(len(request["numeric"]), len(module.numeric_columns))
        codes = module.categorical_codes(request["categorical"])
        raw = module.predict_raw(numeric, codes)
        reencoded = module.encode(numeric, codes)
    try:
        module.categorical_codes([["Nope"] * len(module.categorical_columns)])
        unknown_level_error = None
    except Exception as e:  # TorchScript raises torch.jit.Error carrying the ValueError text
        unknown_level_error = str(e)
    response = {
        "unknown_level_error": unknown_level_error,
        "forward": forward.tolist(),
        "predict_raw": raw.tolist(),
        "encode_max_abs_diff": float((reencoded - encoded).abs().max()) if len(encoded) else 0.0,
        "parameters": {name: list(p.shape) for name, p in module.named_parameters()},
        "buffers": {name: list(b.shape) for name, b in module.named_buffers()},
        "feature_names": list(module.feature_names),
        "metadata": json.loads(extra["confide.json"]),
        "torch_version": torch.__version__,
    }
    with open(response_path, "w") as f:
        json.dump(response, f)


if __name__ == "__main__":
    main()
