#!/usr/bin/env bash
# Create (once) the project's virtual environment in .venv and install the requirements.
# Re-running is cheap: it reinstalls only when a requirements file changed.
# Usage: source-free; prints the python to use on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment $VENV" >&2
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.requirements.sha256"
want=$(cat requirements.txt requirements-dev.txt | sha256sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing requirements into $VENV (torch comes from the local wheel cache; 2-5 minutes)" >&2
  log=$(mktemp)
  if ! "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt >"$log" 2>&1; then
    grep -v "is ignored: it is neither a file nor a directory" "$log" >&2 || true
    echo "[setup] pip install failed (log above)" >&2
    exit 1
  fi
  rm -f "$log"
  "$VENV/bin/python" -c "import torch, torchvision, pydensecrf.densecrf, cv2, scipy, PIL, tqdm" >&2
  echo "$want" > "$stamp"
fi
echo "$VENV/bin/python"
