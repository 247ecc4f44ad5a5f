"""Evaluate seeds or pseudo masks against the ground truth (docs/formats.md#metrics).

    python3 evaluate.py --root_dir ../VOC2012/ --domain validation --folder pseudo-labels \
        --tag "ResNet50@VOC@RS+EPM@Official"

The folder name picks the mode, as in the original:
- `predictions` (any name containing it): seed files (.pkl). rsepm seeds are swept over background thresholds
  --st_th..--end_th (inclusive) by --th_interval and the best threshold is reported; seg seeds
  are scored by their argmax.
- `pseudo-labels` (any other name): palette PNG masks.

Prints a per-class IoU table and a summary line, and writes the result as JSON beside the
evaluated folder (tools.paths.evaluation_path). Images are spread over --num_workers processes
(tools.pool) whose integer confusion matrices are summed, so the result does not depend on the
worker count. An image whose prediction is bad is skipped and listed with the exit status 1; the
scores over the other images are printed but no result file is written (it would read as the
whole split's), and an earlier one beside the folder is removed.
"""

import contextlib
import math
import os
import shlex

from core.dataset_layout import SeedLayout, load_dataset_info
from core.errors import EvaluationError, UsageError
from core.io import load_seed, read_mask, write_json
from core.progress import progress
from core.safety import OutputBusyError, hold_output, output_writer
from tools import metrics
from tools.args import (
    add_dataset_args,
    add_experiment_args,
    add_seed_limit_arg,
    add_threads_arg,
    cli,
    compatibility_group,
    make_parser,
    str2bool,
)
from tools.paths import evaluation_path, output_dir
from tools.pool import SKIPPED_ERRORS, list_skipped, main_threads, pool_size, run_job

MASK_MODE, SEED_MODE = "mask", "seed"
MAX_CHUNK = 64  # images per worker task: bounds the size of the matrices sent back


def get_args_parser():
    parser = make_parser(description=__doc__.split("\n\n")[0])
    add_dataset_args(parser, domain="validation")
    add_experiment_args(parser)
    parser.add_argument(
        "--folder",
        default="pseudo-labels",
        type=str,
        help="folder under --pred_dir: a name containing 'predictions' holds seed files "
        "(threshold sweep), any other name (e.g. pseudo-labels) PNG masks",
    )
    parser.add_argument("--st_th", default=0.10, type=float, help="first background threshold (seed mode)")
    parser.add_argument("--end_th", default=0.80, type=float, help="last background threshold, inclusive")
    parser.add_argument("--th_interval", default=0.05, type=float, help="threshold step")
    parser.add_argument(
        "--single", default=False, type=str2bool, help="evaluate only the images with exactly one image-level tag"
    )
    parser.add_argument(
        "--num_workers",
        default=16,
        type=int,
        help="worker processes (capped at the CPU count); 0 or 1 = in this process",
    )
    add_threads_arg(parser)
    add_seed_limit_arg(parser)
    # Accepted so the original commands run unchanged; they change nothing here.
    compatibility = compatibility_group(parser)
    compatibility.add_argument("--gpus", default="0", type=str, help="ignored: evaluation runs on the CPU")
    compatibility.add_argument(
        "--parallel",
        default=False,
        type=str2bool,
        help="ignored: images are always spread over --num_workers processes",
    )
    return parser


# ---------------------------------------------------------------------------------------------
# Per-image work (runs in the worker processes)
# ---------------------------------------------------------------------------------------------
class Job:
    """Everything a worker needs to score one image; pickled once per worker process."""

    def __init__(self, layout, pred_dir, mode, tag, thresholds, tag_rule, max_seed_bytes=None):
        self.max_seed_bytes = max_seed_bytes
        self.layout = layout
        self.pred_dir = pred_dir
        self.mode = mode
        self.tag = tag
        self.thresholds = thresholds
        self.tag_rule = tag_rule
        self.num_classes = layout.info.num_classes
        self.extension = ".pkl" if mode == SEED_MODE else ".png"

    def prediction_path(self, image_id):
        return os.path.join(self.pred_dir, image_id + self.extension)

    def rows(self):
        return len(self.thresholds) if self.mode == SEED_MODE else 1

    def score_image(self, image_id):
        """Confusion matrices of one image: int64 (R or 1, C+1, C+1), and the seed dialect."""
        gt = self.layout.read_mask(image_id)
        path = self.prediction_path(image_id)
        if self.mode == MASK_MODE:
            pred, dialect = read_mask(path), None
            size = pred.shape
        else:
            seed = load_seed(path, tag=self.tag, max_bytes=self.max_seed_bytes)
            dialect, size = seed["dialect"], seed["seed"].shape[1:]
        if tuple(size) != tuple(gt.shape):
            raise EvaluationError(
                f"{path}: prediction size {size[1]}x{size[0]} differs from the ground "
                f"truth {gt.shape[1]}x{gt.shape[0]} ({self.layout.mask_path(image_id)})"
            )
        try:
            if self.mode == MASK_MODE:
                return metrics.confusion_matrix(pred, gt, self.num_classes)[None], dialect
            keep = None
            if self.tag_rule:
                keep = metrics.tag_keep_mask(self.layout.read_tags(image_id), self.num_classes)
            return metrics.seed_sweep_confusions(seed, gt, self.thresholds, self.num_classes, keep), dialect
        except ValueError as e:
            raise EvaluationError(f"{path} against {self.layout.mask_path(image_id)}: {e}") from None

    def score_chunk(self, image_ids):
        """Summed matrices (R, C+1, C+1) of several images, the number of images, a count
        of seed dialects seen, and the problems of the images skipped (one message each: a bad
        file is counted and listed, the others are still scored)."""
        meter = metrics.ConfusionMeter(self.num_classes, self.rows())
        dialects, failed = {}, []
        for image_id in image_ids:
            try:
                confusion, dialect = self.score_image(image_id)
            except SKIPPED_ERRORS as e:
                failed.append({"id": image_id, "problem": str(e)})
                continue
            meter.add(confusion)
            if dialect:
                dialects[dialect] = dialects.get(dialect, 0) + 1
        return meter.matrix, len(image_ids), dialects, failed


def chunked(items, size):
    return [items[i : i + size] for i in range(0, len(items), size)]


def accumulate(job, image_ids, workers):
    """Score every image over `workers` processes (0: here); returns (ConfusionMeter, dialect
    counts, [{"id", "problem"}] of skipped images). Workers get chunks of ids and send back one
    summed matrix per chunk."""
    size = max(1, min(MAX_CHUNK, math.ceil(len(image_ids) / (max(1, workers) * 8))))
    meter = metrics.ConfusionMeter(job.num_classes, job.rows())
    dialects, failed = {}, []
    with progress(total=len(image_ids), desc="evaluate", unit="image", dynamic_ncols=True) as bar:
        for matrix, count, seen, problems in run_job(job, chunked(image_ids, size), workers, method="score_chunk"):
            meter.add(matrix)
            failed.extend(problems)
            for name, n in seen.items():
                dialects[name] = dialects.get(name, 0) + n
            bar.update(count)
    return meter, dialects, failed


# ---------------------------------------------------------------------------------------------
# Set-up, checks and report
# ---------------------------------------------------------------------------------------------
def select_ids(layout, single):
    if not single:
        return list(layout.ids)
    return [i for i in layout.ids if len(layout.read_tags(i, required=True)) == 1]


def check_predictions_exist(job, image_ids, shown=5):
    missing = [job.prediction_path(i) for i in image_ids if not os.path.isfile(job.prediction_path(i))]
    if missing:
        raise EvaluationError(
            f"{len(missing)} of {len(image_ids)} prediction files are missing from "
            f"{job.pred_dir}, e.g. {', '.join(missing[:shown])}"
        )


def _number(value):
    """float for JSON, None for NaN (JSON has no NaN)."""
    value = float(value)
    return None if math.isnan(value) else value


def summarise(meter, dialects, job, args, num_images, command):
    """The result dict (also the JSON content) from the accumulated matrices."""
    scores = meter.scores()
    sweep, best, threshold = [], 0, None
    if job.mode == SEED_MODE and dialects.get("rsepm"):
        sweep = [
            {
                "threshold": t,
                "mIoU": _number(scores["mIoU"][r]),
                "FP": _number(scores["FP"][r]),
                "FN": _number(scores["FN"][r]),
            }
            for r, t in enumerate(job.thresholds)
        ]
        best = metrics.best_threshold_index(scores["mIoU"])
        best = 0 if best is None else best
        threshold = job.thresholds[best]
    names = job.layout.info.class_names
    return {
        "tag": args.tag,
        "dataset": args.dataset,
        "domain": args.domain,
        "folder": args.folder,
        "mode": job.mode,
        "dialects": dialects,
        "num_images": num_images,
        "mIoU": _number(scores["mIoU"][best]),
        "FP": _number(scores["FP"][best]),
        "FN": _number(scores["FN"][best]),
        "iou": {name: _number(v * 100.0) for name, v in zip(names, scores["iou"][best])},
        "threshold": threshold,
        "sweep": sweep,
        "train_tag_rule": job.tag_rule,
        "pred_dir": job.pred_dir,
        "command": command,
    }


def format_report(result):
    """Per-class IoU table (percent), the sweep in seed mode, and the original's summary line."""
    width = max(len("class"), *(len(n) for n in result["iou"]))
    lines = [f"{'class':<{width}}  IoU (%)"]
    for name, value in result["iou"].items():
        lines.append(f"{name:<{width}}  {'n/a' if value is None else f'{value:7.2f}':>7}")
    if result["sweep"]:
        lines.append("")
        lines.append("threshold  mIoU (%)      FP      FN")
        for row in result["sweep"]:
            lines.append(
                f"{row['threshold']:9.2f}  {_fmt(row['mIoU'], '8.2f')}  "
                f"{_fmt(row['FP'], '.4f'):>6}  {_fmt(row['FN'], '.4f'):>6}"
            )
    lines.append("")
    summary = (
        f"mIoU = {_fmt(result['mIoU'], '.2f')}%, FP = {_fmt(result['FP'], '.4f')}, FN = {_fmt(result['FN'], '.4f')}"
    )
    if result["threshold"] is not None:
        summary = f"Threshold = {result['threshold']:.2f}, " + summary
    lines.append(f"[{result['tag']}] {summary}")
    return "\n".join(lines)


def _fmt(value, spec):
    return "nan" if value is None else format(value, spec)


def build_job(args):
    info = load_dataset_info(args.dataset)
    mode = SEED_MODE if "predictions" in args.folder else MASK_MODE
    try:
        pred_dir = output_dir(args.pred_dir, args.folder, args.tag, args.domain)
    except ValueError as e:
        raise EvaluationError(str(e)) from None
    try:  # contradictory sweep flags (--st_th above --end_th, ...) are a usage error: exit 2
        thresholds = metrics.sweep_thresholds(args.st_th, args.end_th, args.th_interval) if mode == SEED_MODE else []
    except ValueError as e:
        raise UsageError(str(e)) from None
    # The original applied the tag rule when --domain is literally "train" (seed mode only).
    tag_rule = mode == SEED_MODE and args.domain == "train"
    layout = SeedLayout(args.root_dir, args.domain, info, require_masks=True, require_xml=tag_rule or args.single)
    if not os.path.isdir(pred_dir):
        raise EvaluationError(f"{pred_dir}: prediction folder not found")
    writer = output_writer(pred_dir)
    if writer:  # a score of a folder still being written would describe part of it
        raise OutputBusyError(
            f"{pred_dir}: another run is still writing it ({writer}); evaluate it once that run has ended"
        )
    return Job(layout, pred_dir, mode, args.tag, thresholds, tag_rule, args.max_seed_bytes)


def command_line(args):
    """The command as flags (recorded in the result)."""
    return shlex.join(["evaluate.py"] + [part for k, v in vars(args).items() for part in (f"--{k}", str(v))])


def main(args):
    """Run the evaluation; returns the result dict (with "failed": the images skipped)."""
    job = build_job(args)
    hold_output(evaluation_path(args.pred_dir, args.folder, args.tag, args.domain))  # one evaluator per result
    image_ids = select_ids(job.layout, args.single)
    if not image_ids:
        raise EvaluationError(f"{job.layout.split_dir}: no images to evaluate")
    check_predictions_exist(job, image_ids)
    workers = pool_size(args.num_workers, len(image_ids))
    main_threads(args.threads, workers)
    meter, dialects, failed = accumulate(job, image_ids, workers)
    result = summarise(meter, dialects, job, args, len(image_ids) - len(failed), command_line(args))
    result["failed"] = sorted(failed, key=lambda f: f["id"])
    print(format_report(result))
    if len(dialects) > 1:
        print(f"warning: the folder mixes seed dialects {dialects}; seg seeds do not depend on the threshold")
    path = evaluation_path(args.pred_dir, args.folder, args.tag, args.domain)
    if failed:
        # a score over the other images would read as one of the whole split: none is written,
        # and an earlier result beside the folder no longer describes it
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
        print(
            f"warning: {len(failed)} of {len(image_ids)} images could not be evaluated: the scores above "
            f"leave them out, and no result file is written"
        )
    else:
        write_json(path, result)
        print(f"result written to {path}")
    list_skipped(failed)
    return result


if __name__ == "__main__":
    cli(main, get_args_parser())
