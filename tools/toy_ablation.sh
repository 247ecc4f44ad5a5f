#!/usr/bin/env bash
# CAM alone vs RecurSeed vs RecurSeed + EdgePredictMix on the toy dataset, on the quick-start's own
# RS+EPM schedule and pretrained backbone (read from tools/toy_pipeline.py, so the two never drift
# apart). Run after tools/quickstart.sh: the RS+EPM row is the quick-start's model, so only the
# CAM-only and RS-only networks are trained here (about 3 minutes each on 2 cores). Prints one line
# per variant: validation seed mIoU (ground-truth tags, best background threshold) and CRF mask mIoU.
#   bash tools/toy_ablation.sh                                   the quick-start run (seed 0)
#   SEED=1 PRED=./experiments/toy/seed1/ bash tools/toy_ablation.sh   one run of toy_pipeline.py --seeds
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
SEED=${SEED:-0}
PRED=${PRED:-./experiments/toy/}
THREADS=${THREADS:-2}
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS  # as toy_pipeline.py --threads
D=(--dataset TOY --root_dir toy_data/TOY --pred_dir "$PRED")
mapfile -t TRAIN < <("$PY" -c "from tools.toy_pipeline import RSEPM_TRAIN; print('\n'.join(RSEPM_TRAIN))")
mapfile -t SCALES < <("$PY" -c "from tools.toy_pipeline import SCALES; print('\n'.join(SCALES))")
RSEPM_TAG=$("$PY" -c "from tools.toy_pipeline import RSEPM_TAG; print(RSEPM_TAG)")
TRAIN+=(--seed "$SEED" --num_workers 2)
INFER=(--domain validation --backbone resnet18 "${SCALES[@]}" --num_workers 2)
declare -A TAGS=([cam]="toy@ResNet18@CAM" [rs]="toy@ResNet18@RS" [rsepm]="$RSEPM_TAG")
if [ ! -f "$PRED/models/$RSEPM_TAG/last.pth" ]; then
  echo "error: $PRED/models/$RSEPM_TAG/last.pth missing: run tools/quickstart.sh (or toy_pipeline.py) first" >&2
  exit 1
fi
# Later arguments win in argparse: CAM only never starts RecurSeed; RS only never mixes.
[ -f "$PRED/models/${TAGS[cam]}/last.pth" ] || \
  "$PY" train_rsepm.py "${D[@]}" "${TRAIN[@]}" --rs_start 100000 --mix none --tag "${TAGS[cam]}"
[ -f "$PRED/models/${TAGS[rs]}/last.pth" ] || \
  "$PY" train_rsepm.py "${D[@]}" "${TRAIN[@]}" --mix none --tag "${TAGS[rs]}"
for v in cam rs rsepm; do
  source=decoder; [ "$v" = cam ] && source=cam
  out="${TAGS[$v]}@val-gt-tags"
  "$PY" infer_rsepm.py "${D[@]}" "${INFER[@]}" --conf_th -1 --seed_source $source \
      --tag "$out" --weights "$PRED/models/${TAGS[$v]}/last.pth"
  "$PY" evaluate.py "${D[@]}" --domain validation --folder predictions --tag "$out" --num_workers 1 > /dev/null
  "$PY" convert_seed_to_pseudo_masks.py "${D[@]}" --domain validation --folder predictions --tag "$out" --num_workers 2
  "$PY" evaluate.py "${D[@]}" --domain validation --folder pseudo-labels --tag "$out" --num_workers 1 > /dev/null
done
for v in cam rs rsepm; do
  "$PY" - "$PRED" "${TAGS[$v]}@val-gt-tags" <<'PYEOF'
import json, os, sys
pred, tag = sys.argv[1], sys.argv[2]
seeds = json.load(open(os.path.join(pred, "predictions", tag, "validation.eval.json")))
masks = json.load(open(os.path.join(pred, "pseudo-labels", tag, "validation.eval.json")))
print(f"{tag:40s} seeds {seeds['mIoU']:6.2f} (t={seeds['threshold']:.2f})   CRF masks {masks['mIoU']:6.2f}")
PYEOF
done
