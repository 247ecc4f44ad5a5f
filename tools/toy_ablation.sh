#!/usr/bin/env bash
# CAM alone vs RecurSeed vs RecurSeed + EdgePredictMix on the toy dataset, on the quick-start's own
# RS+EPM schedule and pretrained backbone (read from tools/toy/toy_pipeline.py, so the two never drift
# apart). Run after tools/quickstart.sh: the RS+EPM row is the quick-start's model, so only the
# CAM-only and RS-only networks are trained here (about 3 minutes each on 2 cores). Prints one line
# per variant: validation seed mIoU (ground-truth tags, best background threshold) and CRF mask mIoU.
#   bash tools/toy_ablation.sh                                   the quick-start run (seed 0)
#   SEED=1 PRED=./experiments/toy/seed1/ bash tools/toy_ablation.sh   one run of toy_pipeline.py --seeds
#   SEEDS=0,1,2 bash tools/toy_ablation.sh      every run of toy_pipeline.py --seeds 0,1,2, then the
#                                               mean and spread (experiments/toy/ablation_seeds.md)
# Each run's rows are saved to {PRED}ablation.json.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
if [ -n "${SEEDS:-}" ]; then
  IFS=, read -ra LIST <<< "$SEEDS"
  for s in "${LIST[@]}"; do
    echo "== ablation, training seed $s"
    SEEDS= SEED=$s PRED=./experiments/toy/seed$s/ bash "$0"
  done
  "$PY" - "$SEEDS" <<'PYEOF'
import json, statistics, sys
from core.io import atomic_output
seeds = sys.argv[1].split(",")
runs = [json.load(open(f"experiments/toy/seed{s}/ablation.json")) for s in seeds]
lines = [f"| training | seeds mean +- std (min-max) over seeds {','.join(seeds)} | + CRF mean +- std (min-max) |",
         "|---|---:|---:|"]
for i, row in enumerate(runs[0]):
    cells = []
    for key in ("seeds", "crf"):
        v = [r[i][key] for r in runs]
        cells.append(f"{statistics.fmean(v):.2f} +- {statistics.stdev(v) if len(v) > 1 else 0:.2f} "
                     f"({min(v):.2f}-{max(v):.2f})")
    lines.append(f"| {row['variant']} | {cells[0]} | {cells[1]} |")
with atomic_output("experiments/toy/ablation_seeds.md", "w") as f:
    f.write("\n".join(lines) + "\n")
print("\n".join(lines))
PYEOF
  exit 0
fi
SEED=${SEED:-0}
PRED=${PRED:-./experiments/toy/}
THREADS=${THREADS:-2}
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS  # as toy_pipeline.py --threads
D=(--dataset TOY --root_dir toy_data/TOY --pred_dir "$PRED")
mapfile -t TRAIN < <("$PY" -c "from tools.toy.toy_pipeline import RSEPM_TRAIN; print('\n'.join(RSEPM_TRAIN))")
mapfile -t SCALES < <("$PY" -c "from tools.toy.toy_pipeline import SCALES; print('\n'.join(SCALES))")
RSEPM_TAG=$("$PY" -c "from tools.toy.toy_pipeline import RSEPM_TAG; print(RSEPM_TAG)")
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
"$PY" - "$PRED" "${TAGS[cam]}" "${TAGS[rs]}" "${TAGS[rsepm]}" <<'PYEOF'
import json, os, sys
from core.io import write_json
pred, rows = sys.argv[1], []
for variant, tag in zip(("CAM only", "RS", "RS+EPM"), sys.argv[2:]):
    tag += "@val-gt-tags"
    seeds = json.load(open(os.path.join(pred, "predictions", tag, "validation.eval.json")))
    masks = json.load(open(os.path.join(pred, "pseudo-labels", tag, "validation.eval.json")))
    rows.append({"variant": variant, "tag": tag, "seeds": seeds["mIoU"], "threshold": seeds["threshold"],
                 "crf": masks["mIoU"]})
    print(f"{tag:40s} seeds {seeds['mIoU']:6.2f} (t={seeds['threshold']:.2f})   CRF masks {masks['mIoU']:6.2f}")
write_json(os.path.join(pred, "ablation.json"), rows)
PYEOF
