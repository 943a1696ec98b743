#!/usr/bin/env bash
# Installs what a fresh machine needs beyond the Rust toolchain and python3: libtorch 2.13.0,
# taken from PyPI's torch wheel into the project-local, git-ignored .venv, and linked as
# .venv/libtorch (where .cargo/config.toml points LIBTORCH); and onnxruntime, which the tests use
# to check exported ONNX models. Idempotent: a second run is instant.
set -euo pipefail
cd "$(dirname "$0")/.."

want=2.13.0
if ! .venv/bin/python -W ignore -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '$want' else 1)" 2>/dev/null; then
  echo "setup: installing torch==$want into .venv (about 4.7 GB, a minute or two)..." >&2
  python3 -m venv .venv
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "torch==$want"
fi
# A relative link, so the checkout can move.
torch_dir=$(.venv/bin/python -W ignore -c "import os, torch; print(os.path.relpath(os.path.dirname(torch.__file__), '.venv'))")
ln -sfn "$torch_dir" .venv/libtorch

ort_want=1.23.2
if ! .venv/bin/python -W ignore -c "import onnxruntime, sys; sys.exit(0 if onnxruntime.__version__ == '$ort_want' else 1)" 2>/dev/null; then
  echo "setup: installing onnxruntime==$ort_want into .venv..." >&2
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "onnxruntime==$ort_want"
fi
