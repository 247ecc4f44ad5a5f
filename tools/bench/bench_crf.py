"""Throughput of convert_seed_to_pseudo_masks.py on synthetic VOC-sized images.

Builds a throw-away seed-layout dataset (images about 500x375 with 2-3 rsepm seed classes) in a
temporary folder, converts it --repeat times per --num_workers value, runs alternating, and
prints images per second (min and median over the runs), CPU time per image, and the speed-up of
the largest worker count over the first. 1 thread per process.

    python tools/bench/bench_crf.py --num_images 16 --workers 1,2
"""

import contextlib
import io
import os
import resource
import sys
import tempfile
import time

import numpy as np
from PIL import Image

if __package__ in (None, ""):  # run as a file, python tools/GROUP/NAME.py: the repository root on the import path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import convert_seed_to_pseudo_masks as convert  # noqa: E402
from core.io import save_seed  # noqa: E402
from tools.args import cli, int_list, make_parser, positive_int  # noqa: E402
from tools.bench.measure import Machine, ratio, run_main, set_threads, show, show_ratio, stats  # noqa: E402

TAG = "bench"
DOMAIN = "validation"


def synthetic_scene(rng, height, width, num_classes):
    """Image (H, W, 3) uint8 with `num_classes` coloured ellipses, and rsepm seeds (K, H, W)
    that cover each object roughly (blurred, noisy, max-normalised as infer_rsepm writes them)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    image = rng.normal(110, 20, (height, width, 3))
    seed = np.empty((num_classes, height, width), np.float32)
    for k in range(num_classes):
        cy, cx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
        ry, rx = rng.uniform(0.1, 0.3) * height, rng.uniform(0.1, 0.3) * width
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
        image[inside < 1] = rng.uniform(0, 255, 3)
        score = np.exp(-inside * 1.5) + rng.uniform(0, 0.15, inside.shape)
        seed[k] = score / (score.max() + 1e-5)
    return np.clip(image, 0, 255).astype(np.uint8), seed


def build_dataset(base, num_images, seed=0):
    rng = np.random.default_rng(seed)
    image_dir = os.path.join(base, "root", DOMAIN, "image")
    os.makedirs(image_dir)
    for i in range(num_images):
        height, width = (375, 500) if i % 3 else (500, 375)  # VOC has both orientations
        num_classes = 2 + i % 2
        image, seed_planes = synthetic_scene(rng, height, width, num_classes)
        Image.fromarray(image).save(os.path.join(image_dir, f"{i:06d}.jpg"), quality=90)
        keys = [0] + sorted(rng.choice(np.arange(1, 21), num_classes, replace=False).tolist())
        save_seed(os.path.join(base, "pred", "predictions", TAG, DOMAIN, f"{i:06d}.pkl"), keys, seed_planes, "rsepm")
    return os.path.join(base, "root"), os.path.join(base, "pred")


def _cpu_seconds():
    """CPU time of this process and its finished children (the pool workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def get_args_parser():
    parser = make_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--num_images", default=16, type=positive_int, help="synthetic 500x375 seed files")
    parser.add_argument("--workers", default=(1, 2), type=int_list, help="comma-separated --num_workers values")
    parser.add_argument("--repeat", default=3, type=positive_int, help="runs per worker count (min and median)")
    return parser


def main(args):
    set_threads(1)  # one CRF per worker process, each on one core
    times = {w: [] for w in args.workers}
    cpu_times = {w: [] for w in args.workers}
    with Machine() as machine, tempfile.TemporaryDirectory() as base:
        root, pred = build_dataset(base, args.num_images)
        print(
            f"{args.num_images} synthetic images (500x375 / 375x500, 2-3 classes), {args.repeat} runs per worker count",
            flush=True,
        )
        for run in range(args.repeat):
            for workers in args.workers:
                # a fresh experiment folder per run (sharing the seeds), so nothing is skipped as done
                run_dir = os.path.join(base, f"run{run}-{workers}")
                os.makedirs(run_dir)
                os.symlink(os.path.join(pred, "predictions"), os.path.join(run_dir, "predictions"))
                start, cpu_start = time.perf_counter(), _cpu_seconds()
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                    summary = run_main(
                        convert,
                        [
                            "--root_dir",
                            root,
                            "--dataset",
                            "VOC",
                            "--domain",
                            DOMAIN,
                            "--tag",
                            TAG,
                            "--pred_dir",
                            run_dir,
                            "--num_workers",
                            str(workers),
                        ],
                    )
                if summary["written"] != args.num_images or summary["failed"]:
                    raise RuntimeError(f"bench_crf: the conversion did not write every mask: {summary}")
                times[workers].append((time.perf_counter() - start) / args.num_images)
                cpu_times[workers].append((_cpu_seconds() - cpu_start) / args.num_images)
    result = {f"CRF, {w} worker(s), per image": stats(times[w], cpu_times[w]) for w in args.workers}
    for name, figure in result.items():
        show(name, figure)
    first, last = (f"CRF, {w} worker(s), per image" for w in (args.workers[0], args.workers[-1]))
    result["worker speed-up"] = {k: v for k, v in ratio(result[first], result[last]).items() if k != "cpu"}
    show_ratio(f"{args.workers[-1]} workers against {args.workers[0]}", result["worker speed-up"])
    result["machine"] = machine.record
    return result


if __name__ == "__main__":
    cli(main, get_args_parser())
