"""The whole RS+EPM pipeline on the bundled synthetic toy dataset, through the public scripts.

    python tools/toy_pipeline.py            (what `bash tools/quickstart.sh` runs)
    python tools/toy_pipeline.py --fresh    (start again from nothing)

Stages, each a command a user could type (printed before it runs):
  1. tools/make_toy_dataset.py        toy_data/TOY in the seed layout
  2. train_rsepm.py                   single-stage RS+EPM on train_aug (ResNet-18 from scratch)
  3. infer_rsepm.py --domain train_aug  seeds with ground-truth tags (the multi-stage input)
     evaluate.py on predictions/train   seed quality (threshold sweep)
     convert_seed_to_pseudo_masks.py    CRF pseudo masks; evaluate.py on them
  4. infer_rsepm.py --domain validation --conf_th T -> CRF -> evaluate   single-stage result
  5. train_seg.py on the pseudo masks -> infer_seg.py -> CRF -> evaluate   multi-stage result
A stage whose outputs exist is reused (every output is written atomically, so a file that
exists is complete); training resumes from its checkpoint. The table of mIoU per stage is printed
and saved as experiments/toy/summary.{json,md}.
"""
import os
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from core.io import atomic_output, read_json, write_json  # noqa: E402
from tools.args import make_parser  # noqa: E402
from tools.paths import evaluation_path, model_path  # noqa: E402

DATA = "toy_data/TOY"
PRED_DIR = "./experiments/toy/"
RSEPM_TAG = "toy@ResNet18@RS+EPM"
SEG_TAG = "toy@ResNet18@DeepLabV3+@MS"
COMMON = ["--dataset", "TOY", "--root_dir", DATA, "--pred_dir", PRED_DIR]
# Small settings for 2 CPU cores; the published VOC settings are the scripts' defaults. The RS+EPM
# crop is 128 pixels so that the CAM grid is 8x8: at 64 pixels (4x4) SCG has too little to work
# with and RecurSeed makes the seeds worse (tools/toy_ablation.sh, README).
RSEPM_TRAIN = ["--domain", "train_aug", "--backbone", "resnet18", "--pretrained", "none",
               "--batch_size", "8", "--max_epoch", "10", "--rs_start", "4", "--mix_start", "7",
               "--lr", "0.01", "--crop_size", "128", "--min_image_size", "128", "--max_image_size", "192",
               "--pamr_dilations", "1,2,4,8", "--log_interval", "25", "--seed", "0", "--resume", "true"]
SEG_TRAIN = ["--domain", "train_aug", "--decoder", "deeplabv3+", "--backbone", "resnet18", "--output_stride", "16",
             "--pretrained", "none", "--batch_size", "8", "--max_epoch", "8", "--lr", "0.01",
             "--crop_size", "64", "--min_image_size", "64", "--max_image_size", "96",
             "--log_interval", "25", "--seed", "0", "--resume", "true"]
SCALES = ["--scales", "1.0,0.5"]  # the published 1.0,0.5,1.5,2.0 cost 6x more
CONF_TH = "0.34"


def run(command, log):
    """Run one public command, echoing it; stop the pipeline on failure."""
    printable = " ".join(f'"{c}"' if (" " in c or "@" in c or "+" in c) else c for c in command)
    print(f"\n$ python3 {printable}", flush=True)
    log.write(f"$ python3 {printable}\n")
    log.flush()
    start = time.perf_counter()
    result = subprocess.run([sys.executable, *command], cwd=ROOT)
    log.write(f"  (exit {result.returncode}, {time.perf_counter() - start:.0f} s)\n")
    if result.returncode != 0:
        raise SystemExit(f"error: stage failed (exit {result.returncode}): python3 {printable}")


def evaluation(folder, tag, domain, log, extra=()):
    run(["evaluate.py", *COMMON, "--domain", domain, "--folder", folder, "--tag", tag, "--num_workers", "1",
         *extra], log)
    return read_json(evaluation_path(PRED_DIR, folder, tag, domain))


def main(argv=None):
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--fresh", action="store_true", help="delete toy_data/ and experiments/toy/ first")
    parser.add_argument("--num_workers", default=2, type=int, help="worker processes for data and CRF")
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    if args.fresh:
        for path in (os.path.dirname(DATA), PRED_DIR):
            shutil.rmtree(path, ignore_errors=True)
    os.makedirs(PRED_DIR, exist_ok=True)
    workers = ["--num_workers", str(args.num_workers)]
    start = time.perf_counter()
    rows = []
    with open(os.path.join(PRED_DIR, "commands.log"), "a", encoding="utf-8") as log:
        run(["tools/make_toy_dataset.py", "--out", DATA, "--seed", "0"], log)

        if not os.path.isfile(model_path(PRED_DIR, RSEPM_TAG)):
            run(["train_rsepm.py", *COMMON, *RSEPM_TRAIN, "--tag", RSEPM_TAG, *workers], log)
        infer = ["--backbone", "resnet18", "--tag", RSEPM_TAG, *SCALES, *workers]
        run(["infer_rsepm.py", *COMMON, "--domain", "train_aug", *infer], log)
        seeds = evaluation("predictions", RSEPM_TAG, "train", log)
        rows.append(("RS+EPM seeds, train, GT tags (best threshold)", seeds))
        run(["convert_seed_to_pseudo_masks.py", *COMMON, "--domain", "train_aug", "--folder", "predictions",
             "--tag", RSEPM_TAG, *workers], log)
        rows.append(("RS+EPM + CRF pseudo masks, train", evaluation("pseudo-labels", RSEPM_TAG, "train", log)))

        val_tag = RSEPM_TAG + "@conf" + CONF_TH
        # Seeds of validation with predicted classes go to their own tag so they never mix
        # with the ground-truth-tag seeds; the weights are read through --weights.
        run(["infer_rsepm.py", *COMMON, "--domain", "validation", "--conf_th", CONF_TH, "--backbone", "resnet18",
             "--tag", val_tag, "--weights", model_path(PRED_DIR, RSEPM_TAG), *SCALES, *workers], log)
        run(["convert_seed_to_pseudo_masks.py", *COMMON, "--domain", "validation", "--folder", "predictions",
             "--tag", val_tag, *workers], log)
        rows.append((f"single stage: RS+EPM + CRF, validation, conf_th {CONF_TH}",
                     evaluation("pseudo-labels", val_tag, "validation", log)))

        if not os.path.isfile(model_path(PRED_DIR, SEG_TAG)):
            run(["train_seg.py", *COMMON, *SEG_TRAIN, "--label_tag", RSEPM_TAG, "--tag", SEG_TAG, *workers], log)
        run(["infer_seg.py", *COMMON, "--domain", "validation", "--backbone", "resnet18", "--decoder",
             "deeplabv3+", "--output_stride", "16", "--tag", SEG_TAG, *SCALES, *workers], log)
        rows.append(("multi stage: DeepLabV3+ (argmax), validation",
                     evaluation("predictions", SEG_TAG, "validation", log)))
        run(["convert_seed_to_pseudo_masks.py", *COMMON, "--domain", "validation", "--folder", "predictions",
             "--tag", SEG_TAG, *workers], log)
        rows.append(("multi stage: DeepLabV3+ + CRF, validation",
                     evaluation("pseudo-labels", SEG_TAG, "validation", log)))

    elapsed = time.perf_counter() - start
    summary = {"stages": [{"stage": name, "mIoU": r["mIoU"], "FP": r["FP"], "FN": r["FN"],
                           "threshold": r.get("threshold"), "num_images": r["num_images"],
                           "domain": r["domain"], "tag": r["tag"]} for name, r in rows],
               "seconds": round(elapsed, 1)}
    table = ["| stage | images | mIoU (%) | FP | FN |", "|---|---:|---:|---:|---:|"]
    table += [f"| {s['stage']} | {s['num_images']} | {s['mIoU']:.2f} | {s['FP']:.3f} | {s['FN']:.3f} |"
              for s in summary["stages"]]
    write_json(os.path.join(PRED_DIR, "summary.json"), summary)
    with atomic_output(os.path.join(PRED_DIR, "summary.md"), "w") as f:
        f.write("\n".join(table) + "\n")
    print("\n" + "\n".join(table))
    print(f"\nToy pipeline finished in {elapsed / 60:.1f} min; table saved to {PRED_DIR}summary.md and summary.json")
    return summary


if __name__ == "__main__":
    main()
