#!/usr/bin/env bash
# The README's first command: install (once) and run the whole pipeline on the toy dataset.
#   bash tools/quickstart.sh              reuse finished stages (and the cached pretrained backbone)
#   bash tools/quickstart.sh --fresh      start again (the pretrained backbone stays cached)
#   bash tools/quickstart.sh --threads 1  on a machine shared with other jobs
#   bash tools/quickstart.sh --seeds 0,1,2  one run per training seed, then mean and spread
# Every argument goes to tools/toy/toy_pipeline.py (`--help` lists them). Each stage prints what it
# does, its command and how long it took; the end prints the time per stage, the table and the
# notebook to open.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== [install] tools/setup_env.sh: the virtual environment .venv (made once; later runs check it)"
start=$SECONDS
PYBIN=$(bash tools/setup_env.sh | tail -n 1)
echo "== done in $((SECONDS - start)) s: install"
echo "== $PYBIN tools/toy/toy_pipeline.py $*"
exec "$PYBIN" tools/toy/toy_pipeline.py "$@"
