"""Opacus reference for the DP-SGD speed bench (issue 13, item 7).

Trains the same MLP as Confide's worker DP-SGD (`confide_worker::ml::dp_sgd::train_local_dp`):
linear layers with ReLU between them and one output logit, binary cross-entropy on logits,
plain SGD, float32 on the CPU, Poisson sampling at rate q = batch / rows, per-example clipping
to C and Gaussian noise σ·C — with Opacus's `PrivacyEngine` (hooks-based per-sample gradients).
Each timed run covers building the model, wrapping it, the epochs, and reading the parameters.

Input: raw little-endian float32 files written by the `dp_speed` bench binary. Output: one JSON
object on stdout with the rows/s of every run (rows/s = rows × epochs / seconds).

    .venv/bin/pip install opacus==1.6.0
    python dp_speed.py --features X.f32 --labels y.f32 --rows N --dim D --hidden 32,16 \
        --batch 256 --epochs 1 --lr 0.1 --clip 1.0 --sigma 1.0 --threads 1 --runs 3
"""

import argparse
import json
import time
import warnings

import torch
from opacus import PrivacyEngine

# The same model and input reader as the non-DP speed bench (this script's folder is on sys.path).
from train_speed import build, read_f32

warnings.filterwarnings("ignore")


def train_once(x, y, hidden, batch, epochs, lr, clip, sigma, seed) -> float:
    start = time.perf_counter()
    torch.manual_seed(seed)
    model = build(x.shape[1], hidden)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch)
    engine = PrivacyEngine(accountant="rdp")
    model, opt, loader = engine.make_private(
        module=model, optimizer=opt, data_loader=loader, noise_multiplier=sigma, max_grad_norm=clip, poisson_sampling=True
    )
    loss_fn = torch.nn.BCEWithLogitsLoss()
    for _ in range(epochs):
        for xb, yb in loader:
            if xb.shape[0] == 0:
                continue
            loss = loss_fn(model(xb).squeeze(-1), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    _ = [p.detach().clone() for p in model.parameters()]
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--features", required=True)
    p.add_argument("--labels", required=True)
    p.add_argument("--rows", type=int, required=True)
    p.add_argument("--dim", type=int, required=True)
    p.add_argument("--hidden", default="32,16")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--sigma", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=3)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    hidden = [int(h) for h in a.hidden.split(",") if h]
    x = read_f32(a.features, a.rows * a.dim).reshape(a.rows, a.dim)
    y = read_f32(a.labels, a.rows)
    train_once(x, y, hidden, a.batch, 1, a.lr, a.clip, a.sigma, 0)  # warm-up
    rates = [a.rows * a.epochs / train_once(x, y, hidden, a.batch, a.epochs, a.lr, a.clip, a.sigma, r + 1) for r in range(a.runs)]
    import opacus

    print(json.dumps({"rows_per_s": rates, "torch": torch.__version__, "opacus": opacus.__version__, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
