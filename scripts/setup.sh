#!/usr/bin/env bash
# Installs what a fresh machine needs beyond the Rust toolchain and python3: libtorch 2.13.0,
# taken from PyPI's torch wheel into the project-local, git-ignored .venv, and linked as
# .venv/libtorch (where .cargo/config.toml points LIBTORCH); onnxruntime, which the tests use to
# check exported ONNX models; and XGBoost (the CPU-only wheel), which the tests use to load exported
# tree models and the tree benches to train the centralised baseline. Idempotent: a second run is
# instant.
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

xgb_want=3.2.0
if ! .venv/bin/python -W ignore -c "import xgboost, sys; sys.exit(0 if xgboost.__version__ == '$xgb_want' else 1)" 2>/dev/null; then
  echo "setup: installing xgboost-cpu==$xgb_want into .venv..." >&2
  .venv/bin/python -m pip install --quiet --disable-pip-version-check "xgboost-cpu==$xgb_want"
fi
