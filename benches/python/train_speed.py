"""PyTorch reference for the training-speed bench (issue 4, item 5).

Trains the same model as Confide's worker (`confide_worker::ml::train_local`): linear layers
fc0..fcK with ReLU between them and one output logit, binary cross-entropy on logits, SGD with
momentum, float32 on the CPU, with the same loop structure: the whole dataset is one tensor,
each epoch draws a permutation and gathers mini-batches with `index_select`, the loss is summed
on the device and read once per epoch. Each timed run covers what one `train_local` call does:
building the model, copying the rows into a tensor, the epochs, and reading the parameters back.

Input: raw little-endian float32 files written by the `train_speed` bench binary (no numpy
needed). Output: one JSON object on stdout with the rows/s of every run.

    python train_speed.py --features X.f32 --labels y.f32 --rows N --dim D --hidden 32,16 \
        --batch 64 --epochs 5 --lr 0.01 --momentum 0.9 --threads 1 --runs 5
"""

import argparse
import json
import time

import torch


def build(dim: int, hidden: list[int]) -> torch.nn.Sequential:
    layers: list[torch.nn.Module] = []
    fan_in = dim
    for width in hidden:
        layers += [torch.nn.Linear(fan_in, width), torch.nn.ReLU()]
        fan_in = width
    layers.append(torch.nn.Linear(fan_in, 1))
    return torch.nn.Sequential(*layers)


def read_f32(path: str, count: int) -> torch.Tensor:
    with open(path, "rb") as f:
        data = bytearray(f.read())
    t = torch.frombuffer(data, dtype=torch.float32)
    if t.numel() != count:
        raise SystemExit(f"{path}: {t.numel()} values, expected {count}")
    return t


def train_once(features, labels, rows, dim, hidden, batch, epochs, lr, momentum, seed) -> float:
    start = time.perf_counter()
    model = build(dim, hidden)
    x = features.clone().reshape(rows, dim)
    y = labels.clone()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(rows, generator=gen)
        total = torch.zeros(())
        for s in range(0, rows, batch):
            idx = perm[s : s + batch]
            xb, yb = x.index_select(0, idx), y.index_select(0, idx)
            loss = loss_fn(model(xb).squeeze(-1), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.detach() * idx.numel()
        mean = total.item() / rows
        if mean != mean:
            raise SystemExit("loss is NaN")
    _ = [p.detach().clone() for p in model.parameters()]
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--features", required=True)
    p.add_argument("--labels", required=True)
    p.add_argument("--rows", type=int, required=True)
    p.add_argument("--dim", type=int, required=True)
    p.add_argument("--hidden", default="", help="comma-separated hidden widths; empty = logistic regression")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--threads", type=int, default=0, help="0 = PyTorch's default")
    p.add_argument("--runs", type=int, default=5)
    a = p.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    hidden = [int(h) for h in a.hidden.split(",") if h.strip()]
    features = read_f32(a.features, a.rows * a.dim)
    labels = read_f32(a.labels, a.rows)
    # One untimed warm-up run (allocator, kernels), as on the Rust side.
    train_once(features, labels, a.rows, a.dim, hidden, a.batch, 1, a.lr, a.momentum, 0)
    seconds = [
        train_once(features, labels, a.rows, a.dim, hidden, a.batch, a.epochs, a.lr, a.momentum, r + 1)
        for r in range(a.runs)
    ]
    print(json.dumps({
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "rows_per_s": [a.rows * a.epochs / s for s in seconds],
    }))


if __name__ == "__main__":
    main()
