#!/usr/bin/env bash
# The test command of the README: set up .venv if needed, then run the whole suite on CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PYBIN=$(bash tools/setup_env.sh | tail -n 1)
export CUDA_VISIBLE_DEVICES=""   # tests never need a GPU
exec "$PYBIN" -m pytest -q -n 2 --dist worksteal "$@"  # both cores; -n 0 runs in one process
