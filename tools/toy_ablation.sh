#!/usr/bin/env bash
# CAM alone vs RecurSeed vs RecurSeed + EdgePredictMix on the toy dataset, same schedule
# (12 epochs, ResNet-18 from scratch, RS from the 5th epoch, EPM from the 9th; epochs count from 1). Run after
# tools/quickstart.sh (it uses the toy data of that run). Prints one line per variant:
# validation seed mIoU (ground-truth tags, best background threshold) and the CRF mask mIoU.
#   CROP=128 bash tools/toy_ablation.sh    128-pixel crops (an 8x8 CAM grid), about 20 minutes
#   CROP=64 bash tools/toy_ablation.sh     64-pixel crops (a 4x4 CAM grid), about 8 minutes
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
D=(--dataset TOY --root_dir toy_data/TOY --pred_dir ./experiments/toy/)
CROP=${CROP:-128}
TRAIN=(--domain train_aug --backbone resnet18 --pretrained none --batch_size 8 --max_epoch 12 --lr 0.01
       --crop_size "$CROP" --min_image_size "$CROP" --max_image_size $((CROP * 3 / 2)) --pamr_dilations 1,2,4,8
       --log_interval 25
       --seed 0 --resume true --num_workers 2)
INFER=(--domain validation --backbone resnet18 --scales 1.0,0.5 --num_workers 2)
declare -A TAGS=([cam]="toy@ResNet18@CAM@c$CROP" [rs]="toy@ResNet18@RS@c$CROP" [rsepm]="toy@ResNet18@RS+EPM@c$CROP")
[ -f "experiments/toy/models/${TAGS[cam]}/last.pth" ] || \
  "$PY" train_rsepm.py "${D[@]}" "${TRAIN[@]}" --rs_start 13 --mix none --tag "${TAGS[cam]}"
[ -f "experiments/toy/models/${TAGS[rs]}/last.pth" ] || \
  "$PY" train_rsepm.py "${D[@]}" "${TRAIN[@]}" --rs_start 5 --mix none --tag "${TAGS[rs]}"
[ -f "experiments/toy/models/${TAGS[rsepm]}/last.pth" ] || \
  "$PY" train_rsepm.py "${D[@]}" "${TRAIN[@]}" --rs_start 5 --mix_start 9 --tag "${TAGS[rsepm]}"
for v in cam rs rsepm; do
  source=decoder; [ "$v" = cam ] && source=cam
  out="${TAGS[$v]}@val-gt-tags"
  "$PY" infer_rsepm.py "${D[@]}" "${INFER[@]}" --conf_th -1 --seed_source $source \
      --tag "$out" --weights "experiments/toy/models/${TAGS[$v]}/last.pth"
  "$PY" evaluate.py "${D[@]}" --domain validation --folder predictions --tag "$out" --num_workers 1 > /dev/null
  "$PY" convert_seed_to_pseudo_masks.py "${D[@]}" --domain validation --folder predictions --tag "$out" --num_workers 2
  "$PY" evaluate.py "${D[@]}" --domain validation --folder pseudo-labels --tag "$out" --num_workers 1 > /dev/null
done
for v in cam rs rsepm; do
  out="${TAGS[$v]}@val-gt-tags"
  "$PY" - "$out" <<'PYEOF'
import json, sys
tag = sys.argv[1]
seeds = json.load(open(f"experiments/toy/predictions/{tag}/validation.eval.json"))
masks = json.load(open(f"experiments/toy/pseudo-labels/{tag}/validation.eval.json"))
print(f"{tag:40s} seeds {seeds['mIoU']:6.2f} (t={seeds['threshold']:.2f})   CRF masks {masks['mIoU']:6.2f}")
PYEOF
done
