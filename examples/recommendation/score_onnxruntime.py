"""Scores (user, item) pairs at one bank with an exported recommendation model in onnxruntime.

The export holds the federated item side only; the bank feeds its own user side: the user-state
file its worker keeps (data_dir/user_state/<job>/round-<R>.safetensors), which never leaves it.

    score_onnxruntime.py EXPORT_DIR USER_STATE PAIRS_CSV OUT_CSV

PAIRS_CSV has a header and the user id and item id in its first two columns (a bank's ratings
file works as is). OUT_CSV gets `user_id,item_id,score`. A user the state file does not hold, or
an item outside the catalogue, is an error naming it: the model has no embedding to score with.
Needs numpy and onnxruntime only (the safetensors file is read directly).
"""

import csv
import json
import struct
import sys

import numpy as np
import onnxruntime as ort


def read_safetensors(path):
    """Tensors (float32) and metadata of a safetensors file."""
    with open(path, "rb") as f:
        data = f.read()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    body = data[8 + header_len :]
    meta = header.pop("__metadata__", {}) or {}
    tensors = {}
    for name, info in header.items():
        if info["dtype"] != "F32":
            raise SystemExit(f"{path}: tensor {name} is {info['dtype']}, expected F32")
        start, end = info["data_offsets"]
        tensors[name] = np.frombuffer(body[start:end], dtype="<f4").reshape(info["shape"])
    return tensors, meta


def main(export_dir, user_state, pairs_csv, out_csv):
    users, meta = read_safetensors(user_state)
    user_row = {u: i for i, u in enumerate(json.loads(meta["confide.user_ids"]))}
    with open(f"{export_dir}/items.csv", newline="") as f:
        item_row = {r["item_id"]: int(r["row"]) for r in csv.DictReader(f)}
    with open(pairs_csv, newline="") as f:
        rows = list(csv.reader(f))[1:]
    pairs = [(r[0].strip(), r[1].strip()) for r in rows if r]
    for u, i in pairs:
        if u not in user_row:
            raise SystemExit(f"user {u} is not in {user_state}")
        if i not in item_row:
            raise SystemExit(f"item {i} is not in the exported catalogue")
    u_idx = np.array([user_row[u] for u, _ in pairs], dtype=np.int64)
    session = ort.InferenceSession(f"{export_dir}/model.onnx", providers=["CPUExecutionProvider"])
    (score,) = session.run(
        ["score"],
        {
            "user_embedding": np.ascontiguousarray(users["user_embedding"][u_idx]),
            "user_bias": np.ascontiguousarray(users["user_bias"][u_idx]),
            "item_index": np.array([item_row[i] for _, i in pairs], dtype=np.int64),
        },
    )
    with open(out_csv, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user_id", "item_id", "score"])
        for (u, i), s in zip(pairs, score):
            w.writerow([u, i, repr(float(s))])


if __name__ == "__main__":
    if len(sys.argv) != 5:
        raise SystemExit(__doc__)
    main(*sys.argv[1:])
