#!/usr/bin/env bash
# The README's first command: install (once) and run the whole pipeline on the toy dataset.
#   bash tools/quickstart.sh              reuse finished stages (and the cached pretrained backbone)
#   bash tools/quickstart.sh --fresh      start again (the pretrained backbone stays cached)
#   bash tools/quickstart.sh --threads 1  on a machine shared with other jobs
# Each stage prints what it does and how long it took; the end prints the table and the notebook.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== install: tools/setup_env.sh (the virtual environment .venv, once)"
start=$SECONDS
PYBIN=$(bash tools/setup_env.sh | tail -n 1)
echo "== done in $((SECONDS - start)) s: install"
exec "$PYBIN" tools/toy_pipeline.py "$@"
