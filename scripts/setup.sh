#!/usr/bin/env bash
# Create .venv and install meddiff. torch==2.13.0 goes first so that no later requirement pulls a CUDA build.
# `scripts/setup.sh`       : meddiff and what it needs to run (what `make demo` uses);
# `scripts/setup.sh test`  : the same plus the test-only extras (pytest, diffusers, tensorboard; what `make test` uses).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
case "${1:-}" in
  "") target="." ;;
  test) target=".[test]" ;;
  *) echo "usage: scripts/setup.sh [test]" >&2; exit 2 ;;
esac
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e "$target"
.venv/bin/python -c "import torch, meddiff; print(f'meddiff {meddiff.__version__} ready (torch {torch.__version__})')"
