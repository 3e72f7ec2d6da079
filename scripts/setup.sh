#!/usr/bin/env bash
# Create .venv and install meddiff. torch==2.13.0 goes first so that no later requirement pulls a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[test]"
.venv/bin/python -c "import torch, meddiff; print(f'meddiff {meddiff.__version__} ready (torch {torch.__version__})')"
