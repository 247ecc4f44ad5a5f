"""The whole RS+EPM pipeline on the bundled synthetic toy dataset, through the public scripts.

    python tools/toy/toy_pipeline.py                 (what `bash tools/quickstart.sh` runs; seed 0)
    python tools/toy/toy_pipeline.py --fresh         (start again; the pretrained backbone is kept)
    python tools/toy/toy_pipeline.py --seeds 0,1,2   (one run per training seed, then mean and spread)

Stages, each a command a user could type (printed with what it does before it runs, timed after):
  0. tools/builders/make_toy_dataset.py --seed 1000 + tools/toy/pretrain_toy.py   the stand-in for ImageNet
     weights: a ResNet-18 classifier trained on image-level tags of a separate toy set, made once
     and cached in toy_data/pretrained/ (like torch's hub cache); both training stages start from it
  1. tools/builders/make_toy_dataset.py        toy_data/TOY in the seed layout
  2. train_rsepm.py                   single-stage RS+EPM on train_aug (image-level tags only)
  3. infer_rsepm.py --domain train_aug  seeds with ground-truth tags (the multi-stage input)
     evaluate.py on predictions/train   seed quality (threshold sweep)
     convert_seed_to_pseudo_masks.py    CRF pseudo masks; evaluate.py on them
  4. infer_rsepm.py --domain validation --conf_th T -> CRF -> evaluate   single-stage result
  3b. train_affinity.py on the seeds -> convert_seed_to_pseudo_masks.py --mode rw --rw_crf true
     random-walk pseudo masks of train_aug (the paper's multi-stage input); evaluate.py on them
  5. train_seg.py on the random-walk masks -> infer_seg.py -> CRF -> evaluate   multi-stage result
No pixel label reaches a training stage: the pretraining and RS+EPM read xml tags only, the
affinity network reads the seeds, train_seg reads the random-walk pseudo masks; ground-truth masks
are read by evaluate.py alone.
Determinism: every stage runs in stage_environment(): OMP_NUM_THREADS = MKL_NUM_THREADS =
--threads and PYTHONHASHSEED=0 (both recorded in the summary with the torch version). Data order,
augmentation and DataLoader worker seeds are functions of --seed (tools/engine/data_loading.py), so the
same command and seed give the same table on one machine (tests/test_toy_determinism.py trains
twice and compares the weights byte for byte). torch.use_deterministic_algorithms is not set: on CPU it
only changes accumulating index_put/put_ and the backward of list indexing (none on a stage's hot
path); the CPU kernels used here are already run-to-run identical at a fixed thread count, which
is why the count is fixed (another count may change the order of float additions, so the last digits). Use
--threads 1 on a machine shared with other jobs: two threads per process on oversubscribed cores
spin and run several times slower.
A stage whose outputs exist is reused (every output is written atomically, so a file that
exists is complete); training resumes from its checkpoint. The table of mIoU per stage is printed
and saved as experiments/toy/summary.{json,md} (per seed: experiments/toy/seed{N}/summary.*,
and experiments/toy/summary_seeds.{json,md}).
"""

import os
import shutil
import subprocess
import sys
import time

if __package__ in (None, ""):  # run as a file, python tools/GROUP/NAME.py: the repository root on the import path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from core.errors import ProjectError  # noqa: E402
from core.io import atomic_output, read_json, write_json  # noqa: E402
from tools.args import cli, make_parser, str2bool  # noqa: E402
from tools.paths import (  # noqa: E402
    REPO_ROOT,  # noqa: E402
    evaluation_path,
    model_path,
)

DATA = "toy_data/TOY"
PRED_ROOT = "./experiments/toy/"
# The stand-in for ImageNet: a classification pretraining on a separate toy set (another generator
# seed, image-level tags only), made once and reused by every seed and by --fresh, as torch keeps
# downloaded ImageNet weights in its hub cache. --fresh_pretrain makes it again.
PRETRAIN_DATA = "toy_data/PRETRAIN"
PRETRAIN_DATA_SEED = "1000"
PRETRAINED = "toy_data/pretrained/resnet18_toy.pth"
# Colour jitter without its hue part (the published 0.1 turns the hue by up to 36 degrees, 18 OpenCV
# units): the toy classes differ by hue among other cues, 23 units apart, so the published hue
# jitter makes a triangle look like a disc. Measured on seed 1 of the previous release, DeepLabV3+
# on the same masks: triangle and cross IoU 0 with the hue jitter. Natural images have no such
# hue-defined classes; the real runs keep the published jitter (the scripts' default).
TOY_JITTER = ["--color_jitter", "0.3,0.3,0.3,0"]
# 15 epochs: the classifier then tags 100 held-out images of the pretraining seed at 99.0 mAP
# (6 epochs: 95.4; tools/toy/pretrain_toy.py prints it and records it beside the weights).
PRETRAIN = [
    *TOY_JITTER,
    "--backbone",
    "resnet18",
    "--max_epoch",
    "15",
    "--batch_size",
    "16",
    "--lr",
    "0.05",
    "--crop_size",
    "96",
    "--min_image_size",
    "96",
    "--max_image_size",
    "144",
    "--seed",
    "0",
]
RSEPM_TAG = "toy@ResNet18@RS+EPM"
SEG_TAG = "toy@ResNet18@DeepLabV3+@MS"
# Small settings for 2 CPU cores; the published VOC settings are the scripts' defaults. The RS+EPM
# crop is 128 pixels so that the CAM grid is 8x8: at 64 pixels (4x4) SCG has too little to work
# with and RecurSeed makes the seeds worse (tools/toy/ablation.py, README). lr 0.005: the published
# 0.01 belongs to batch 16, and batch 8 takes half of it (linear scaling). At 0.01 the new layers
# (10x lr) can meet RecurSeed's or EdgePredictMix's first targets with a loss burst that wrecks
# the classifier, and the run loses classes (seed 2: train seeds 56.87 mIoU at 0.01 against 78.95
# at 0.005; the README gives the commands).
RSEPM_TRAIN = [
    *TOY_JITTER,
    "--domain",
    "train_aug",
    "--backbone",
    "resnet18",
    "--pretrained",
    PRETRAINED,
    "--batch_size",
    "8",
    "--max_epoch",
    "10",
    "--rs_start",
    "4",
    "--mix_start",
    "7",
    "--lr",
    "0.005",
    "--crop_size",
    "128",
    "--min_image_size",
    "128",
    "--max_image_size",
    "192",
    "--pamr_dilations",
    "1,2,4,8",
    "--log_interval",
    "25",
    "--resume",
    "true",
]
SEG_TRAIN = [
    *TOY_JITTER,
    "--domain",
    "train_aug",
    "--decoder",
    "deeplabv3+",
    "--backbone",
    "resnet18",
    "--output_stride",
    "16",
    "--pretrained",
    PRETRAINED,
    "--batch_size",
    "8",
    "--max_epoch",
    "12",
    "--lr",
    "0.01",
    "--crop_size",
    "96",
    "--min_image_size",
    "96",
    "--max_image_size",
    "144",
    "--log_interval",
    "25",
    "--resume",
    "true",
]
AFF_TAG = "toy@ResNet18@AffinityNet"
AFF_TRAIN = [
    "--domain",
    "train_aug",
    "--backbone",
    "resnet18",
    "--pretrained",
    PRETRAINED,
    "--crop_size",
    "96",
    "--batch_size",
    "8",
    "--max_epoch",
    "3",
    "--momentum",
    "0.9",
    "--log_interval",
    "25",
    "--resume",
    "true",
]
# IRN's walk (radius 5, beta 10, bg 0.25) with 2^3 = 8 steps instead of 2^8: on the 32x32 stride-4
# grid of a 128-pixel toy image, 256 steps of radius 5 reach every pixel and flood the objects
# (measured: 62 mIoU on train vs 77 with 8 steps); a VOC image has a 125x94 grid. --rw_crf: the
# dense CRF on the walked scores puts the stride-4 borders back on the images' sharp colour edges
# (seed 0 of the previous release: 75.9 -> 90.7 on train, against 85.9 for CRF on the seeds).
RW_CONVERT = ["--mode", "rw", "--affinity_tag", AFF_TAG, "--exp_times", "3", "--rw_crf", "true"]
RW_TAG = RSEPM_TAG + "@rw"
SCALES = ["--scales", "1.0,0.5"]  # the published 1.0,0.5,1.5,2.0 cost 6x more
SEED_FORMAT = ["--seed_format", "uint16"]  # the scripts' default, written out so the digest covers it
CONF_TH = "0.34"


TOY_DATA_COMMAND = ["tools/builders/make_toy_dataset.py", "--out", DATA, "--seed", "0"]
PRETRAIN_DATA_COMMAND = [
    "tools/builders/make_toy_dataset.py",
    "--out",
    PRETRAIN_DATA,
    "--seed",
    PRETRAIN_DATA_SEED,
    "--num_train",
    "0",
    "--num_train_aug",
    "400",
    "--num_validation",
    "100",
    "--num_test",
    "0",
]
# What the README's toy table was measured with: the digest of the settings above, the sha256 of the
# pretrained backbone of that run and its seed-0 rows (written by hand from a --fresh_pretrain run;
# tests/test_toy_reference.py fails when the settings change and this file does not).
REFERENCE = "tools/toy/reference.json"


def settings_digest():
    """sha256 of every setting of the pipeline that shapes a number of its table (the commands'
    flags and the data generators' arguments; not --threads or --num_workers, which the summary records)."""
    import hashlib
    import json

    settings = {
        "toy_data": TOY_DATA_COMMAND,
        "pretrain_data": PRETRAIN_DATA_COMMAND,
        "pretrain": PRETRAIN,
        "rsepm": RSEPM_TRAIN,
        "seg": SEG_TRAIN,
        "affinity": AFF_TRAIN,
        "rw": RW_CONVERT,
        "scales": SCALES,
        "seed_format": SEED_FORMAT,
        "conf_th": CONF_TH,
        "tags": [RSEPM_TAG, SEG_TAG, AFF_TAG],
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def file_sha256(path):
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def reference_check(rows, seed):
    """Lines comparing this run with REFERENCE: the settings digest, the pretrained backbone's
    sha256 and (seed 0) each row's mIoU, so a number that differs from the README is explained at once."""
    try:
        reference = read_json(REFERENCE)
    except ProjectError as e:
        return [f"no reference to compare with ({e})"]
    lines = []
    same_settings = reference.get("settings_digest") == settings_digest()
    lines.append(
        "settings: "
        + (
            "the README table's (digest matches)"
            if same_settings
            else f"differ from the README table's (digest {settings_digest()[:12]} against "
            f"{str(reference.get('settings_digest'))[:12]}): its numbers do not apply"
        )
    )
    backbone = file_sha256(PRETRAINED) if os.path.isfile(PRETRAINED) else None
    wanted = reference.get("pretrained_sha256")
    if backbone == wanted:
        lines.append(f"pretrained backbone: sha256 {backbone[:12]}, the one the README table was made with")
    else:
        lines.append(
            f"pretrained backbone: sha256 {str(backbone)[:12]}, NOT the README table's {str(wanted)[:12]}: "
            "another CPU, thread count or library version made other weights, and every number "
            "below may differ in its last digits (docs/reproduction.md#toy)"
        )
    expected = reference.get("seed0", {})
    if seed == 0 and expected:
        differ = [
            f"{name}: {r['mIoU']:.2f} (README {expected[name]:.2f})"
            for name, r in rows
            if name in expected and f"{r['mIoU']:.2f}" != f"{expected[name]:.2f}"
        ]
        lines.append(
            "seed-0 rows: "
            + (
                "all equal to the README's, to the digit"
                if not differ
                else "differ from the README's: " + "; ".join(differ)
            )
        )
    return lines


def printable(command):
    return " ".join(f'"{c}"' if (" " in c or "@" in c or "+" in c) else c for c in command)


def stage_environment(threads):
    """The environment of every stage: os.environ with the settings the numbers depend on."""
    # Same thread count -> same CPU reduction order -> the same numbers on one machine; a fixed
    # hash seed keeps any iteration over a set of strings in one order.
    return dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONHASHSEED="0")


def environment_record(threads):
    """What the summary records about the set-up the numbers were measured with."""
    import platform

    import torch

    return {
        "threads": threads,
        "PYTHONHASHSEED": "0",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }


class Runner:
    """Runs public commands with a fixed thread count, echoing each and timing each stage."""

    def __init__(self, log, threads):
        self.log, self.threads, self.times = log, threads, []
        self.env = stage_environment(threads)

    def run(self, command, what):
        text = printable(command)
        print(f"\n== [{len(self.times) + 1}] {what}\n$ python3 {text}", flush=True)
        self.log.write(f"$ python3 {text}\n")
        self.log.flush()
        start = time.perf_counter()
        result = subprocess.run([sys.executable, *command], cwd=REPO_ROOT, env=self.env)
        took = time.perf_counter() - start
        self.log.write(f"  (exit {result.returncode}, {took:.0f} s)\n")
        if result.returncode != 0:
            raise ProjectError(f"stage failed (exit {result.returncode}): python3 {text}")
        self.times.append({"stage": what, "seconds": round(took, 1)})
        print(f"== done in {took:.0f} s: {what}", flush=True)

    def evaluation(self, common, pred_dir, folder, tag, domain, what):
        self.run(
            ["evaluate.py", *common, "--domain", domain, "--folder", folder, "--tag", tag, "--num_workers", "1"], what
        )
        return read_json(evaluation_path(pred_dir, folder, tag, domain))


def pretrain_command(workers):
    return ["tools/toy/pretrain_toy.py", "--root_dir", PRETRAIN_DATA, "--out", PRETRAINED, *PRETRAIN, *workers]


def cached_pretraining_problem(workers):
    """None when PRETRAINED exists and its record shows this release's pretraining settings and code,
    else why not.

    A backbone cached by another release (other epochs, or the same settings run by other code: an
    augmentation that changed) would silently change every number of the table; the record names
    the sha256 of every source file that made it, and each is compared with the file of today. The
    worker count does not change the weights and is not compared."""
    from tools.toy import pretrain_toy

    if not os.path.isfile(PRETRAINED):
        return "not made yet"
    try:
        full = read_json(pretrain_toy.record_path(PRETRAINED))
        record, code = full["settings"], full["code"]
    except (ProjectError, KeyError, TypeError) as e:  # missing, unreadable or without settings: an older release's
        return f"no usable record beside it ({e})"
    changed_code = sorted(
        path
        for path, digest in (code.items() if isinstance(code, dict) else [])
        if not os.path.isfile(path) or file_sha256(path) != digest
    )
    if not isinstance(code, dict) or not code or changed_code:
        return "made by other code (" + (", ".join(changed_code[:5]) or "no code record") + ")"
    wanted = pretrain_toy.record_settings(pretrain_toy.get_args_parser().parse_args(pretrain_command(workers)[1:]))
    if "epochs" in record:  # the name of --max_epoch in records of the release before
        record.setdefault("max_epoch", record.pop("epochs"))
    changed = sorted(k for k in wanted if k != "num_workers" and record.get(k) != wanted[k])
    return f"made with other settings ({', '.join(changed)})" if changed else None


def ensure_pretrained(runner, workers):
    """Stage 0: the separate pretraining set and the pretrained backbone (cached)."""
    problem = cached_pretraining_problem(workers)
    if problem is None:
        print(f"\n== pretrained backbone {PRETRAINED} exists: reused (--fresh_pretrain remakes it)")
        return
    if os.path.isfile(PRETRAINED):
        print(f"\n== pretrained backbone {PRETRAINED}: {problem}; making it again")
    shutil.rmtree(PRETRAIN_DATA, ignore_errors=True)  # an input of the backbone only
    runner.run(
        PRETRAIN_DATA_COMMAND,
        "generate the separate pretraining set (another generator seed, 400 images + 100 held out)",
    )
    runner.run(pretrain_command(workers), "pretrain the ResNet-18 backbone on image-level tags (stand-in for ImageNet)")


class SeedRun:
    """What every stage of one training seed needs: the runner, the seed, its folder, flags."""

    def __init__(self, runner, seed, pred_dir, workers):
        self.runner, self.seed, self.pred_dir, self.workers = runner, seed, pred_dir, workers
        self.common = ["--dataset", "TOY", "--root_dir", DATA, "--pred_dir", pred_dir]
        self.seed_arg = ["--seed", str(seed)]

    def run(self, command, what):
        self.runner.run(command, what)

    def evaluate(self, folder, tag, domain, what):
        return self.runner.evaluation(self.common, self.pred_dir, folder, tag, domain, what)


def rsepm_stage(r):
    """Stages 2-3: train RS+EPM, seeds of train_aug with ground-truth tags, CRF pseudo masks."""
    if not os.path.isfile(model_path(r.pred_dir, RSEPM_TAG)):
        r.run(
            ["train_rsepm.py", *r.common, *RSEPM_TRAIN, *r.seed_arg, "--tag", RSEPM_TAG, *r.workers],
            "train single-stage RS+EPM on train_aug (image-level tags only)",
        )
    r.run(
        ["infer_rsepm.py", *r.common, "--domain", "train_aug", "--tag", RSEPM_TAG, *SCALES, *SEED_FORMAT, *r.workers],
        "RS+EPM seeds of train_aug from the ground-truth tags (the multi-stage input)",
    )
    rows = [
        (
            "RS+EPM seeds, train, GT tags (best threshold)",
            r.evaluate("predictions", RSEPM_TAG, "train", "evaluate the seeds"),
        )
    ]
    r.run(
        [
            "convert_seed_to_pseudo_masks.py",
            *r.common,
            "--domain",
            "train_aug",
            "--folder",
            "predictions",
            "--tag",
            RSEPM_TAG,
            *r.workers,
        ],
        "CRF pseudo masks from the seeds",
    )
    rows.append(
        ("RS+EPM + CRF pseudo masks, train", r.evaluate("pseudo-labels", RSEPM_TAG, "train", "evaluate the masks"))
    )
    return rows


def random_walk_stage(r):
    """Stage 3b: the paper's refinement: affinity network on the seeds, random-walk pseudo masks of train."""
    if not os.path.isfile(model_path(r.pred_dir, AFF_TAG)):
        r.run(
            [
                "train_affinity.py",
                *r.common,
                *AFF_TRAIN,
                *r.seed_arg,
                "--seed_tag",
                RSEPM_TAG,
                "--tag",
                AFF_TAG,
                *r.workers,
            ],
            "train the affinity (boundary) network on the seeds' confident regions",
        )
    r.run(
        [
            "convert_seed_to_pseudo_masks.py",
            *r.common,
            "--domain",
            "train_aug",
            "--folder",
            "predictions",
            "--tag",
            RSEPM_TAG,
            *RW_CONVERT,
            *r.workers,
        ],
        "random-walk pseudo masks from the seeds",
    )
    return [
        (
            "RS+EPM + random walk + CRF pseudo masks, train",
            r.evaluate("pseudo-labels", RW_TAG, "train", "evaluate the random-walk masks"),
        )
    ]


def single_stage(r):
    """Stage 4: RS+EPM on validation with predicted classes, CRF, evaluation."""
    val_tag = RSEPM_TAG + "@conf" + CONF_TH
    # Seeds of validation with predicted classes go to their own tag so they never mix
    # with the ground-truth-tag seeds; the weights are read through --weights.
    # the backbone comes from config.json beside the weights, as in every later stage
    r.run(
        [
            "infer_rsepm.py",
            *r.common,
            "--domain",
            "validation",
            "--conf_th",
            CONF_TH,
            "--tag",
            val_tag,
            "--weights",
            model_path(r.pred_dir, RSEPM_TAG),
            *SCALES,
            *SEED_FORMAT,
            *r.workers,
        ],
        "single stage: RS+EPM on validation with predicted classes",
    )
    r.run(
        [
            "convert_seed_to_pseudo_masks.py",
            *r.common,
            "--domain",
            "validation",
            "--folder",
            "predictions",
            "--tag",
            val_tag,
            *r.workers,
        ],
        "single stage: CRF",
    )
    return [
        (
            f"single stage: RS+EPM + CRF, validation, conf_th {CONF_TH}",
            r.evaluate("pseudo-labels", val_tag, "validation", "evaluate the single stage"),
        )
    ]


def multi_stage(r):
    """Stage 5: DeepLabV3+ trained on the random-walk pseudo masks (the paper's path), on validation,
    with and without CRF."""
    if not os.path.isfile(model_path(r.pred_dir, SEG_TAG)):
        r.run(
            ["train_seg.py", *r.common, *SEG_TRAIN, *r.seed_arg, "--label_tag", RW_TAG, "--tag", SEG_TAG, *r.workers],
            "multi stage: train DeepLabV3+ on the random-walk pseudo masks",
        )
    # backbone, decoder and output stride (16) come from the training run's config.json
    r.run(
        ["infer_seg.py", *r.common, "--domain", "validation", "--tag", SEG_TAG, *SCALES, *SEED_FORMAT, *r.workers],
        "multi stage: DeepLabV3+ on validation",
    )
    rows = [
        (
            "multi stage: DeepLabV3+ (argmax), validation",
            r.evaluate("predictions", SEG_TAG, "validation", "evaluate the multi stage"),
        )
    ]
    r.run(
        [
            "convert_seed_to_pseudo_masks.py",
            *r.common,
            "--domain",
            "validation",
            "--folder",
            "predictions",
            "--tag",
            SEG_TAG,
            *r.workers,
        ],
        "multi stage: CRF",
    )
    rows.append(
        (
            "multi stage: DeepLabV3+ + CRF, validation",
            r.evaluate("pseudo-labels", SEG_TAG, "validation", "evaluate the multi stage + CRF"),
        )
    )
    return rows


# The stages of one seed, in order; each takes a SeedRun and returns its table rows
# [(row name, evaluate.py result)]. A new stage is a function appended here (or inserted before
# multi_stage when the retraining should read its masks).
SEED_STAGES = [rsepm_stage, random_walk_stage, single_stage, multi_stage]


def run_seed(runner, seed, pred_dir, workers):
    """Every stage of SEED_STAGES for one training seed into pred_dir; returns the table rows."""
    run = SeedRun(runner, seed, pred_dir, workers)
    return [row for stage in SEED_STAGES for row in stage(run)]


def write_table(path_stem, header, lines):
    write_json(path_stem + ".json", header)
    with atomic_output(path_stem + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")


def seed_summary(rows, seconds, seed, threads, times):
    summary = {
        "stages": [
            {
                "stage": name,
                "mIoU": r["mIoU"],
                "FP": r["FP"],
                "FN": r["FN"],
                "threshold": r.get("threshold"),
                "num_images": r["num_images"],
                "domain": r["domain"],
                "tag": r["tag"],
            }
            for name, r in rows
        ],
        "seconds": round(seconds, 1),
        "seed": seed,
        "threads": threads,
        "environment": environment_record(threads),
        "stage_seconds": times,
    }
    table = ["| stage | images | mIoU (%) | FP | FN |", "|---|---:|---:|---:|---:|"]
    table += [
        f"| {s['stage']} | {s['num_images']} | {s['mIoU']:.2f} | {s['FP']:.3f} | {s['FN']:.3f} |"
        for s in summary["stages"]
    ]
    return summary, table


def seed_list(text):
    """--seeds: comma-separated non-negative integers, at least one."""
    import argparse

    try:
        seeds = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated training seeds, got {text!r}") from None
    if not seeds or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"expected comma-separated non-negative training seeds, got {text!r}")
    return seeds


def spread(values):
    """{"mean", "std", "min", "max"} of a row's values over the training seeds (std 0 for one seed)."""
    import statistics

    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }


def seeds_summary(summaries):
    """Mean, standard deviation, min and max of each row's mIoU over the seeds."""
    stages = []
    for i, first in enumerate(summaries[0]["stages"]):
        values = [s["stages"][i]["mIoU"] for s in summaries]
        stages.append({"stage": first["stage"], "num_images": first["num_images"], "mIoU": values, **spread(values)})
    seeds = [s["seed"] for s in summaries]
    table = [
        f"| stage | images | mIoU (%) mean +- std over seeds {','.join(map(str, seeds))} | min-max |",
        "|---|---:|---:|---:|",
    ]
    table += [
        f"| {s['stage']} | {s['num_images']} | {s['mean']:.2f} +- {s['std']:.2f} | {s['min']:.2f}-{s['max']:.2f} |"
        for s in stages
    ]
    return {
        "seeds": seeds,
        "stages": stages,
        "threads": summaries[0]["threads"],
        "environment": summaries[0].get("environment"),
    }, table


def get_args_parser():
    parser = make_parser(__doc__.splitlines()[0])
    # --fresh alone means --fresh true
    parser.add_argument(
        "--fresh",
        default=False,
        type=str2bool,
        nargs="?",
        const=True,
        help=f"delete {DATA} and {PRED_ROOT} first (the pretrained backbone is kept)",
    )
    parser.add_argument(
        "--fresh_pretrain",
        default=False,
        type=str2bool,
        nargs="?",
        const=True,
        help="also make the pretrained backbone again",
    )
    parser.add_argument("--seed", default=0, type=int, help="training seed (the toy data stays the same)")
    parser.add_argument(
        "--seeds",
        default=None,
        type=seed_list,
        help="comma-separated training seeds: one run each into experiments/toy/seed{N}/, "
        "then mean and spread in experiments/toy/summary_seeds.{json,md}",
    )
    parser.add_argument(
        "--threads", default=2, type=int, help="OMP threads of every stage (recorded; the numbers depend on it)"
    )
    parser.add_argument("--num_workers", default=2, type=int, help="worker processes for data and CRF")
    return parser


def main(args):
    os.chdir(REPO_ROOT)
    if args.fresh or args.fresh_pretrain:
        for path in (DATA, PRED_ROOT):
            shutil.rmtree(path, ignore_errors=True)
    if args.fresh_pretrain:
        for path in (PRETRAIN_DATA, os.path.dirname(PRETRAINED)):
            shutil.rmtree(path, ignore_errors=True)
    seeds = args.seeds or [args.seed]
    os.makedirs(PRED_ROOT, exist_ok=True)
    workers = ["--num_workers", str(args.num_workers)]
    start = time.perf_counter()
    summaries = []
    with open(os.path.join(PRED_ROOT, "commands.log"), "a", encoding="utf-8") as log:
        runner = Runner(log, args.threads)
        runner.run(TOY_DATA_COMMAND, "generate the toy dataset")
        ensure_pretrained(runner, workers)
        for seed in seeds:
            pred_dir = PRED_ROOT if args.seeds is None else os.path.join(PRED_ROOT, f"seed{seed}/")
            seed_start, first = time.perf_counter(), len(runner.times)
            rows = run_seed(runner, seed, pred_dir, workers)
            checks = reference_check(rows, seed)
            summary, table = seed_summary(
                rows, time.perf_counter() - seed_start, seed, args.threads, runner.times[first:]
            )
            summary["pretrained_sha256"] = file_sha256(PRETRAINED)
            summary["settings_digest"] = settings_digest()
            summary["reference_check"] = checks
            write_table(os.path.join(pred_dir, "summary"), summary, table)
            summaries.append(summary)
            if len(seeds) > 1:
                print(f"\nseed {seed} (saved to {pred_dir}summary.md):\n" + "\n".join(table))

    elapsed = time.perf_counter() - start
    print("\nTime per stage:")
    for t in runner.times:
        print(f"  {t['seconds']:7.1f} s  {t['stage']}")
    print(f"  {elapsed:7.1f} s  in all ({elapsed / 60:.1f} min, {args.threads} thread(s) per stage)")
    if args.seeds is not None:
        result, table = seeds_summary(summaries)
        result["seconds"] = round(elapsed, 1)
        write_table(os.path.join(PRED_ROOT, "summary_seeds"), result, table)
        saved = f"{PRED_ROOT}summary_seeds.md and .json"
    else:
        saved = f"{PRED_ROOT}summary.md and summary.json"
    print(f"\nToy results, seed(s) {','.join(map(str, seeds))} (saved to {saved}):\n" + "\n".join(table))
    print(f"\nAgainst the README's table ({REFERENCE}):")
    for line in summaries[0]["reference_check"]:
        print("  " + line)
    print(
        f"\nNext: open {os.path.join(REPO_ROOT, 'demo.ipynb')} (per-image panels and the per-class chart;\n"
        f"  it is stored with the outputs of a seed-0 run: `python tools/toy/make_demo_notebook.py --execute`\n"
        f"  re-executes it on {PRED_ROOT}), e.g. .venv/bin/jupyter notebook demo.ipynb"
    )
    return summaries


if __name__ == "__main__":
    cli(main, get_args_parser())
