"""Benchmark of evaluate.py on synthetic VOC-sized data (not run by the tests).

    python tools/bench/bench_evaluate.py [--num_masks 1449] [--num_seeds 300] [--workers 1,2] [--repeat 3]

Builds, in a temporary folder, a VOC-like validation split (500x375 blocky ground-truth masks
with 255 borders; the image files are 1-pixel placeholders since evaluate.py never decodes them),
pseudo masks (the ground truth with shifted, relabelled blocks) and rsepm seed files with 1-3
classes. Then reports seconds per 100 images for
- reading the PNG pairs (prediction + ground truth) / loading the seed files,
- computing the metric on arrays already in memory (confusion matrix, or the 15-threshold sweep),
  the confusion matrix side by side with the plain per-class mask loop, as a ratio,
- evaluate.main end to end with each --num_workers value.
Every in-memory figure is the minimum and median of --repeat runs, 1 thread per process.
"""

import contextlib
import io
import os
import shutil
import sys
import tempfile
import time

import numpy as np
from PIL import Image

if __package__ in (None, ""):  # run as a file, python tools/GROUP/NAME.py: the repository root on the import path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import evaluate  # noqa: E402
from core.dataset_layout import load_dataset_info  # noqa: E402
from core.io import load_seed, read_mask, save_mask, save_seed  # noqa: E402
from tools import metrics  # noqa: E402
from tools.args import cli, int_list, make_parser, positive_int, str2bool  # noqa: E402
from tools.bench.measure import Machine, cpus, ratio, run_main, set_threads, show, show_ratio, side_by_side  # noqa: E402
from tools.paths import output_dir  # noqa: E402

HEIGHT, WIDTH = 375, 500
TAG = "Bench@VOC"


def blocky_labels(rng, classes, block, shape=(HEIGHT, WIDTH)):
    """(H, W) uint8 piecewise-constant map of `classes` on a random-offset grid of `block` pixels."""
    h, w = shape
    dy, dx = rng.integers(0, block, size=2)
    grid = rng.choice(classes, size=((h + dy) // block + 1, (w + dx) // block + 1))
    full = np.repeat(np.repeat(grid, block, axis=0), block, axis=1)
    return full[dy : dy + h, dx : dx + w].astype(np.uint8)


def with_ignore_border(mask, width=3):
    """Mark a band around every region boundary as 255, as in the VOC annotations."""
    edge = np.zeros(mask.shape, dtype=bool)
    edge[:, 1:] |= mask[:, 1:] != mask[:, :-1]
    edge[1:, :] |= mask[1:, :] != mask[:-1, :]
    grown = edge.copy()
    for shift in range(1, width // 2 + 1):
        grown[shift:, :] |= edge[:-shift, :]
        grown[:, shift:] |= edge[:, :-shift]
    out = mask.copy()
    out[grown] = 255
    return out


def image_classes(rng, num_classes):
    return np.array(
        [0] + sorted(rng.choice(np.arange(1, num_classes), size=rng.integers(1, 4), replace=False).tolist())
    )


def build(root, pred_dir, num_masks, num_seeds, info, rng):
    """Write the split, the pseudo masks and the seeds; returns the ids."""
    ids = [f"{2007 + i // 10000}_{i:06d}" for i in range(num_masks)]
    image_dir = os.path.join(root, "validation", "image")
    os.makedirs(image_dir, exist_ok=True)
    placeholder = io.BytesIO()
    Image.new("RGB", (1, 1)).save(placeholder, format="JPEG")
    mask_dir = os.path.join(root, "validation", "mask")
    labels_dir = output_dir(pred_dir, "pseudo-labels", TAG, "validation")
    seeds_dir = output_dir(pred_dir, "predictions", TAG + "-seeds", "validation")
    for n, image_id in enumerate(ids):
        with open(os.path.join(image_dir, image_id + ".jpg"), "wb") as f:
            f.write(placeholder.getvalue())
        classes = image_classes(rng, info.num_classes)
        gt = blocky_labels(rng, classes, block=int(rng.integers(40, 120)))
        save_mask(os.path.join(mask_dir, image_id + ".png"), with_ignore_border(gt), info.palette)
        pred = np.where(
            blocky_labels(rng, [0, 1], block=60) == 1, gt, blocky_labels(rng, classes, block=int(rng.integers(40, 120)))
        )
        save_mask(os.path.join(labels_dir, image_id + ".png"), pred, info.palette)
        if n < num_seeds:
            seed = np.stack(
                [(gt == c) * rng.uniform(0.3, 1.0) + rng.random(gt.shape) * 0.4 for c in classes[1:]]
            ).astype(np.float32)
            save_seed(os.path.join(seeds_dir, image_id + ".pkl"), classes, seed, "rsepm")
    return ids


def per_class_iou(pairs, num_classes):
    """The plain way: a boolean mask per class and image, intersections and unions summed."""
    inter, union = np.zeros(num_classes), np.zeros(num_classes)
    for pred, gt in pairs:
        valid = gt != 255
        for c in range(num_classes):
            p, g = (pred == c) & valid, gt == c
            inter[c] += np.count_nonzero(p & g)
            union[c] += np.count_nonzero(p | g)
    return inter / np.maximum(union, 1)


def confusion_iou(pairs, num_classes):
    meter = metrics.ConfusionMeter(num_classes)
    for pred, gt in pairs:
        meter.add_prediction(pred, gt)
    confusion = meter.matrix[0]  # (C+1, C+1), last row/column "no class" (tools/metrics.py)
    inter = np.diag(confusion)[:num_classes]
    union = confusion[:num_classes].sum(1) + confusion[:, :num_classes].sum(0) - inter
    return inter / np.maximum(union, 1)


def timed(function, *args):
    start = time.perf_counter()
    value = function(*args)
    return time.perf_counter() - start, value


def quiet_main(argv):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return run_main(evaluate, argv)


def bench(args):
    info = load_dataset_info("VOC")
    rng = np.random.default_rng(0)
    tmp = tempfile.mkdtemp(prefix="bench_evaluate_", dir=args.tmp_dir)
    rows = []
    try:
        root, pred_dir = os.path.join(tmp, "VOC2012"), os.path.join(tmp, "experiments")
        seconds, ids = timed(build, root, pred_dir, args.num_masks, args.num_seeds, info, rng)
        print(f"built {len(ids)} mask pairs and {args.num_seeds} seed files in {seconds:.1f} s ({tmp})")
        labels_dir = output_dir(pred_dir, "pseudo-labels", TAG, "validation")
        seeds_dir = output_dir(pred_dir, "predictions", TAG + "-seeds", "validation")
        mask_dir = os.path.join(root, "validation", "mask")

        # masks: reading vs computing
        read_s, pairs = timed(
            lambda: [
                (read_mask(os.path.join(labels_dir, i + ".png")), read_mask(os.path.join(mask_dir, i + ".png")))
                for i in ids
            ]
        )
        if not np.allclose(confusion_iou(pairs, info.num_classes), per_class_iou(pairs, info.num_classes)):
            raise RuntimeError("bench_evaluate: the confusion matrix and the per-class loop disagree")
        compared = side_by_side(
            {
                "confusion matrix": lambda: confusion_iou(pairs, info.num_classes),
                "per-class mask loop": lambda: per_class_iou(pairs, info.num_classes),
            },
            args.repeat,
        )
        per = 100.0 / len(ids)
        figures = {
            f"{name} per 100 masks": {k: v * per if k != "runs" else v for k, v in figure.items()}
            for name, figure in compared.items()
        }
        figures["confusion matrix speed-up"] = ratio(compared["per-class mask loop"], compared["confusion matrix"])
        rows.append(("masks: read PNG pairs", len(ids), read_s, read_s * per))
        rows.append(
            (
                "masks: confusion matrix",
                len(ids),
                compared["confusion matrix"]["min"],
                compared["confusion matrix"]["min"] * per,
            )
        )
        common = ["--root_dir", root, "--dataset", "VOC", "--domain", "validation", "--pred_dir", pred_dir]
        for workers in args.workers:
            seconds, result = timed(
                quiet_main, common + ["--tag", TAG, "--folder", "pseudo-labels", "--num_workers", str(workers)]
            )
            rows.append((f"masks: evaluate.py, {workers} worker(s)", len(ids), seconds, seconds * per))
        mask_miou = result["mIoU"]

        # seeds: loading vs the 15-threshold sweep; the seed split is the first num_seeds ids
        seed_ids = ids[: args.num_seeds]
        gts = [pair[1] for pair in pairs[: args.num_seeds]]
        load_s, seeds = timed(lambda: [load_seed(os.path.join(seeds_dir, i + ".pkl")) for i in seed_ids])
        thresholds = metrics.sweep_thresholds()
        sweep_s, _ = timed(
            lambda: [metrics.seed_sweep_confusions(s, g, thresholds, info.num_classes) for s, g in zip(seeds, gts)]
        )
        per = 100.0 / len(seed_ids)
        rows.append(("seeds: load .pkl", len(seed_ids), load_s, load_s * per))
        rows.append((f"seeds: {len(thresholds)}-threshold sweep", len(seed_ids), sweep_s, sweep_s * per))
        seeds = None  # the loaded seeds are not needed below
        seed_root = os.path.join(tmp, "VOC2012-seeds")  # a split holding only the seeded images
        os.makedirs(os.path.join(seed_root, "validation", "image"))
        os.symlink(mask_dir, os.path.join(seed_root, "validation", "mask"))
        for i in seed_ids:
            shutil.copyfile(
                os.path.join(root, "validation", "image", i + ".jpg"),
                os.path.join(seed_root, "validation", "image", i + ".jpg"),
            )
        common = ["--root_dir", seed_root, "--dataset", "VOC", "--domain", "validation", "--pred_dir", pred_dir]
        for workers in args.workers:
            seconds, result = timed(
                quiet_main, common + ["--tag", TAG + "-seeds", "--folder", "predictions", "--num_workers", str(workers)]
            )
            rows.append((f"seeds: evaluate.py, {workers} worker(s)", len(seed_ids), seconds, seconds * per))
        seed_result = (result["mIoU"], result["threshold"])
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    print(f"\n{'step':<36} {'images':>6} {'total s':>8} {'s / 100':>8}")
    for name, count, total, per_100 in rows:
        print(f"{name:<36} {count:>6} {total:>8.2f} {per_100:>8.3f}")
    print(
        f"\n(sanity: mask mIoU {mask_miou:.2f}%, seed mIoU {seed_result[0]:.2f}% at threshold "
        f"{seed_result[1]:.2f}; {cpus()} CPUs available)"
    )
    for name, figure in figures.items():
        (show_ratio if "speed-up" in name else show)(name, figure)
    return figures


def get_args_parser():
    parser = make_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--num_masks", default=1449, type=positive_int, help="mask pairs (VOC validation: 1,449)")
    parser.add_argument("--num_seeds", default=300, type=positive_int, help="seed files (1-3 classes each)")
    parser.add_argument("--workers", default=(1, 2), type=int_list, help="comma-separated --num_workers values")
    parser.add_argument("--repeat", default=3, type=positive_int, help="runs per in-memory figure (min and median)")
    parser.add_argument("--threads", default=1, type=positive_int, help="threads per process")
    parser.add_argument(
        "--tmp_dir", default=None, type=str, help="where to build the data; None: the system temp folder"
    )
    parser.add_argument("--keep", default=False, type=str2bool, help="keep the generated data")
    return parser


def main(args):
    set_threads(args.threads)
    args.num_seeds = min(args.num_seeds, args.num_masks)
    with Machine() as machine:
        result = bench(args)
    result["machine"] = machine.record
    return result


if __name__ == "__main__":
    cli(main, get_args_parser())
