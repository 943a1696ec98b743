#!/usr/bin/env python3
"""Script a custom tabular model for Confide and write its initial parameters.

A data-science team's own architecture trains federatedly like the built-in ones: Confide's
workers load the TorchScript module with libtorch and train its parameters; the coordinator
only ever sees the flat parameter vector, summed across banks.

This example is a small wide-and-deep network with a residual block for binary classification
(e.g. churn): ``forward(x: [N, input_dim]) -> logits [N]``.

    INPUT_DIM=$(confide schema width ../../examples/local_federation/telco_churn.schema.toml)
    python make_model.py --input-dim "$INPUT_DIM" --out .

writes ``model.pt`` (torch.jit.save of the scripted module) and ``init.safetensors`` (its
``named_parameters()`` as F32 tensors, with the tensor order and the input width in the
header's metadata) and prints the module's SHA-256, which banks may pin in their policy
(``allowed_torchscript_sha256``).

Rules a module must follow (the worker checks them and refuses the task otherwise):
  * ``forward`` takes one float tensor ``[N, input_dim]`` (the schema's encoded features, as
    ``confide schema width --features`` lists them) and returns one logit per row, ``[N]`` or
    ``[N, 1]``; the loss is binary cross-entropy on these logits.
  * Only parameters are federated. Buffers (e.g. BatchNorm running statistics) would stay at
    their saved values in every bank, so this script refuses modules that have any; use
    LayerNorm instead.
  * Dropout is fine: workers switch the module to training mode for local epochs and to
    evaluation mode for scoring.

Needs only torch; the safetensors file is written directly (8-byte little-endian header
length, a JSON header, then the raw little-endian tensor data).
"""

import argparse
import hashlib
import json
import pathlib
import struct

import warnings

warnings.filterwarnings("ignore", message="Failed to initialize NumPy")

import torch  # noqa: E402
from torch import nn  # noqa: E402


class ResidualBlock(nn.Module):
    def __init__(self, width: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc = nn.Linear(width, width)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.dropout(torch.relu(self.fc(self.norm(h))))


class WideAndDeep(nn.Module):
    """A linear "wide" part plus a residual MLP "deep" part, summed into one logit per row."""

    def __init__(self, input_dim: int, hidden: int = 32, blocks: int = 1, dropout: float = 0.0):
        super().__init__()
        self.wide = nn.Linear(input_dim, 1)
        self.embed = nn.Linear(input_dim, hidden)
        self.blocks = nn.ModuleList([ResidualBlock(hidden, dropout) for _ in range(blocks)])
        self.head = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.embed(x))
        for block in self.blocks:
            h = block(h)
        return (self.wide(x) + self.head(h)).squeeze(-1)


def write_safetensors(path: pathlib.Path, tensors: dict, metadata: dict) -> None:
    """Writes F32 tensors in the safetensors format (https://github.com/huggingface/safetensors)."""
    header = {"__metadata__": metadata}
    blobs = []
    offset = 0
    for name, tensor in tensors.items():
        values = tensor.detach().to(torch.float32).cpu().contiguous().reshape(-1).tolist()
        data = struct.pack(f"<{len(values)}f", *values)
        header[name] = {
            "dtype": "F32",
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for data in blobs:
            f.write(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input-dim", type=int, required=True, help="encoded input width (`confide schema width SCHEMA`)")
    parser.add_argument("--hidden", type=int, default=32, help="width of the deep part")
    parser.add_argument("--blocks", type=int, default=1, help="residual blocks in the deep part")
    parser.add_argument("--dropout", type=float, default=0.0, help="dropout inside the residual blocks")
    parser.add_argument("--seed", type=int, default=7, help="seed of the initial parameters")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("."), help="output directory")
    args = parser.parse_args()
    if args.input_dim < 1:
        parser.error("--input-dim must be at least 1")

    torch.manual_seed(args.seed)
    model = WideAndDeep(args.input_dim, args.hidden, args.blocks, args.dropout)
    buffers = [name for name, _ in model.named_buffers()]
    if buffers:
        raise SystemExit(f"buffers are not federated; remove them: {buffers}")
    scripted = torch.jit.script(model)

    # The scripted module must give one logit per row.
    with torch.no_grad():
        out = scripted.eval()(torch.zeros(2, args.input_dim))
    assert out.shape == (2,), f"forward returned {tuple(out.shape)}, expected (2,)"

    args.out.mkdir(parents=True, exist_ok=True)
    module_path = args.out / "model.pt"
    scripted.save(str(module_path))
    params = dict(scripted.named_parameters())
    write_safetensors(
        args.out / "init.safetensors",
        params,
        {"confide.layout": ",".join(params), "confide.input_dim": str(args.input_dim)},
    )
    digest = hashlib.sha256(module_path.read_bytes()).hexdigest()
    count = sum(p.numel() for p in params.values())
    print(f"wrote {module_path} and {args.out / 'init.safetensors'}: {len(params)} tensors, {count} parameters")
    print(f"module sha256 {digest}")


if __name__ == "__main__":
    main()
