#!/usr/bin/env bash
# The README's first command: install (once) and run the whole pipeline on the toy dataset.
#   bash tools/quickstart.sh            reuse finished stages
#   bash tools/quickstart.sh --fresh    start again from nothing
set -euo pipefail
cd "$(dirname "$0")/.."
PYBIN=$(bash tools/setup_env.sh | tail -n 1)
exec "$PYBIN" tools/toy_pipeline.py "$@"
