"""CAM alone vs RecurSeed vs RecurSeed + EdgePredictMix on the toy dataset, through the public scripts.

    python tools/toy/ablation.py                                          the quick-start run (seed 0)
    python tools/toy/ablation.py --seed 1 --pred_dir ./experiments/toy/seed1/   one run of toy_pipeline.py --seeds
    python tools/toy/ablation.py --seeds 0,1,2 --threads 1     every run of toy_pipeline.py --seeds 0,1,2,
                                                               then the mean and spread

Runs on the quick-start's own RS+EPM schedule and pretrained backbone (RSEPM_TRAIN, SCALES and
RSEPM_TAG of tools/toy/toy_pipeline.py, so the two never drift apart). Run it after
tools/quickstart.sh: the RS+EPM row is the quick-start's model, so only the CAM-only and RS-only
networks are trained here (about 3 minutes each on 2 cores; a finished one is reused). Each variant's
network then makes validation seeds from the ground-truth tags (infer_rsepm.py --conf_th -1; the
CAM-only run trains no decoder, so its seeds are the classifier's CAMs, --seed_source cam), which
evaluate.py scores (best background threshold), convert_seed_to_pseudo_masks.py turns into CRF
masks and evaluate.py scores again. Prints one line per variant: seed mIoU (threshold) and CRF mask
mIoU; the rows are saved to {pred_dir}ablation.json. With --seeds, one run per seed into
{pred_dir}seed{N}/, then the mean +- std (min-max) table in {pred_dir}ablation_seeds.md.
Every command runs as toy_pipeline.py runs its stages (its Runner: echoed, timed, appended to
{pred_dir}commands.log, OMP_NUM_THREADS = MKL_NUM_THREADS = --threads, PYTHONHASHSEED=0).
"""

import os
import shlex
import sys
import time

if __package__ in (None, ""):  # run as a file, python tools/GROUP/NAME.py: the repository root on the import path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from core.errors import MissingFileError  # noqa: E402
from core.io import atomic_output, write_json  # noqa: E402
from tools.args import cli, make_parser, positive_int  # noqa: E402
from tools.paths import REPO_ROOT, model_path  # noqa: E402
from tools.toy.toy_pipeline import DATA, PRED_ROOT, RSEPM_TAG, RSEPM_TRAIN, SCALES, Runner, seed_list, spread  # noqa: E402

# (key, row name, training tag, seed source, training flags after the quick-start schedule or None:
# the quick-start's own model). Later arguments win in argparse: CAM only never starts RecurSeed;
# RS only never mixes.
VARIANTS = (
    ("cam", "CAM only", "toy@ResNet18@CAM", "cam", ["--rs_start", "100000", "--mix", "none"]),
    ("rs", "RS", "toy@ResNet18@RS", "decoder", ["--mix", "none"]),
    ("rsepm", "RS+EPM", RSEPM_TAG, "decoder", None),
)
OUT_SUFFIX = "@val-gt-tags"  # the tag of a variant's validation seeds and masks


def get_args_parser():
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--seed", default=0, type=int, help="training seed of the CAM-only and RS-only runs (ignored with --seeds)"
    )
    parser.add_argument(
        "--seeds",
        default=None,
        type=seed_list,
        help="comma-separated training seeds: one run each into {pred_dir}seed{N}/ (where "
        "toy_pipeline.py --seeds left each seed's model), then mean and spread in "
        "{pred_dir}ablation_seeds.md",
    )
    parser.add_argument(
        "--pred_dir",
        default=PRED_ROOT,
        help="the quick-start's experiment folder, holding models/" + RSEPM_TAG + "/last.pth "
        "(with --seeds: the folder above the seed{N}/ folders)",
    )
    parser.add_argument("--root_dir", default=DATA, help="the toy dataset (the quick-start's)")
    parser.add_argument(
        "--threads", default=2, type=positive_int, help="OMP threads of every command (the numbers depend on it)"
    )
    parser.add_argument(
        "--num_workers",
        default=2,
        type=int,
        help="worker processes of training, inference and CRF (evaluate.py runs with 1)",
    )
    parser.add_argument(
        "--train_args",
        default="",
        help="extra flags for both training commands, placed after the quick-start schedule "
        "(so they override it) and before the variant's own flags; for tests and quick "
        "looks only (e.g. --train_args='--max_epoch 1'): the ablation's numbers come "
        "from the default, none",
    )
    return parser


def quickstart_model(pred_dir):
    path = model_path(pred_dir, RSEPM_TAG)
    if not os.path.isfile(path):
        raise MissingFileError(
            f"{path} missing: the RS+EPM row is the quick-start's model; run "
            "tools/quickstart.sh (or tools/toy/toy_pipeline.py with this seed) first"
        )
    return path


def run_ablation(runner, pred_dir, seed, args):
    """One run: train the CAM-only and RS-only networks (unless finished), then seeds, evaluation, CRF
    and evaluation of each variant on validation; prints and saves the rows. Returns them."""
    common = ["--dataset", "TOY", "--root_dir", args.root_dir, "--pred_dir", pred_dir]
    train = [*RSEPM_TRAIN, "--seed", str(seed), "--num_workers", str(args.num_workers), *shlex.split(args.train_args)]
    infer = ["--domain", "validation", "--backbone", "resnet18", *SCALES, "--num_workers", str(args.num_workers)]
    for _, name, tag, _, flags in VARIANTS:
        if flags is not None and not os.path.isfile(model_path(pred_dir, tag)):
            runner.run(
                ["train_rsepm.py", *common, *train, *flags, "--tag", tag],
                f"train {name} on train_aug, seed {seed} ({' '.join(flags)})",
            )
        elif flags is not None:
            print(f"\n== {name}: {model_path(pred_dir, tag)} exists: reused")
    results = []
    for _, name, tag, source, _ in VARIANTS:
        out = tag + OUT_SUFFIX
        runner.run(
            [
                "infer_rsepm.py",
                *common,
                *infer,
                "--conf_th",
                "-1",
                "--seed_source",
                source,
                "--tag",
                out,
                "--weights",
                model_path(pred_dir, tag),
            ],
            f"{name}: seeds of validation from the ground-truth tags (--seed_source {source})",
        )
        seeds = runner.evaluation(common, pred_dir, "predictions", out, "validation", f"{name}: evaluate the seeds")
        runner.run(
            [
                "convert_seed_to_pseudo_masks.py",
                *common,
                "--domain",
                "validation",
                "--folder",
                "predictions",
                "--tag",
                out,
                "--num_workers",
                str(args.num_workers),
            ],
            f"{name}: CRF masks from the seeds",
        )
        masks = runner.evaluation(common, pred_dir, "pseudo-labels", out, "validation", f"{name}: evaluate the masks")
        results.append((name, out, seeds, masks))
    rows = []
    for name, out, seeds, masks in results:
        rows.append(
            {"variant": name, "tag": out, "seeds": seeds["mIoU"], "threshold": seeds["threshold"], "crf": masks["mIoU"]}
        )
        print(f"{out:40s} seeds {seeds['mIoU']:6.2f} (t={seeds['threshold']:.2f})   CRF masks {masks['mIoU']:6.2f}")
    write_json(os.path.join(pred_dir, "ablation.json"), rows)
    return rows


def seeds_table(seeds, runs):
    """The markdown lines of the mean +- std (min-max) over the seeds of each variant's two numbers."""
    lines = [
        f"| training | seeds mean +- std (min-max) over seeds {','.join(map(str, seeds))} | "
        "+ CRF mean +- std (min-max) |",
        "|---|---:|---:|",
    ]
    for i, row in enumerate(runs[0]):
        cells = []
        for key in ("seeds", "crf"):
            s = spread([r[i][key] for r in runs])
            cells.append(f"{s['mean']:.2f} +- {s['std']:.2f} ({s['min']:.2f}-{s['max']:.2f})")
        lines.append(f"| {row['variant']} | {cells[0]} | {cells[1]} |")
    return lines


def main(args):
    os.chdir(REPO_ROOT)  # as the commands run: relative folders are the repository's
    seeds = args.seeds if args.seeds is not None else [args.seed]
    folders = [os.path.join(args.pred_dir, f"seed{s}/") for s in seeds] if args.seeds is not None else [args.pred_dir]
    for folder in folders:  # every run's quick-start model before the first command
        quickstart_model(folder)
    start = time.perf_counter()
    with open(os.path.join(args.pred_dir, "commands.log"), "a", encoding="utf-8") as log:
        runner = Runner(log, args.threads)
        runs = []
        for seed, folder in zip(seeds, folders):
            if args.seeds is not None:
                print(f"== ablation, training seed {seed}", flush=True)
            runs.append(run_ablation(runner, folder, seed, args))
    summary = {
        "seeds": seeds,
        "pred_dirs": folders,
        "rows": runs,
        "threads": args.threads,
        "stage_seconds": runner.times,
        "seconds": round(time.perf_counter() - start, 1),
        "failed": [],
    }
    if args.seeds is not None:
        lines = seeds_table(seeds, runs)
        path = os.path.join(args.pred_dir, "ablation_seeds.md")
        with atomic_output(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        print("\n".join(lines))
        summary["table"] = path
    return summary


if __name__ == "__main__":
    cli(main, get_args_parser())
