"""Cost of `convert_seed_to_pseudo_masks.py --mode rw` on the CPU at VOC size, and of its random
walk against IRN's dense procedure.

A randomly initialised affinity network (the speed does not depend on its weights) on synthetic
500x375 images with 2-class rsepm seeds, 1 thread unless --threads says otherwise:
  - the boundary map, image and mirror zero-padded to 512x512 as IRN computes it, side by side
    with the same forward on the unpadded pair (the cost of the padding);
  - the walk (2 ** exp_times sparse products) on the image's 125x94 cells;
  - the sparse walk against IRN's dense transition-matrix power at --small (where the N x N matrix
    fits), and the dense one extrapolated to VOC size by its cost, N^3 per squaring;
  - `convert_seed_to_pseudo_masks.py --mode rw --num_workers 1` end to end on --num_images images.

    python tools/bench/bench_rw.py
    python tools/bench/bench_rw.py --num_images 6 --threads 2
"""

import os
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

if __package__ in (None, ""):  # run as a file, python tools/GROUP/NAME.py: the repository root on the import path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import convert_seed_to_pseudo_masks as convert  # noqa: E402
from core.affinity import AffinityNet  # noqa: E402
from core.dataset_layout import normalize_image  # noqa: E402
from core.io import save_seed  # noqa: E402
from core.randomwalk import random_walk, random_walk_planes, scores_to_stride  # noqa: E402
from core.weights import save_weights  # noqa: E402
from tools.args import cli, int_list, make_parser, positive_int  # noqa: E402
from tools.bench.bench_crf import DOMAIN, TAG, synthetic_scene  # noqa: E402
from tools.bench.measure import Machine, ratio, run_main, set_threads, show, show_ratio, side_by_side, timed  # noqa: E402
from tools.paths import model_path  # noqa: E402


def build(base, num_images, backbone, seed=0):
    rng = np.random.default_rng(seed)
    root, pred = os.path.join(base, "root"), os.path.join(base, "pred")
    os.makedirs(os.path.join(root, DOMAIN, "image"))
    samples = []
    for i in range(max(num_images, 2)):
        height, width = (375, 500) if i % 3 else (500, 375)
        image, planes = synthetic_scene(rng, height, width, 2)
        keys = [0] + sorted(rng.choice(np.arange(1, 21), 2, replace=False).tolist())
        if i < num_images:
            Image.fromarray(image).save(os.path.join(root, DOMAIN, "image", f"{i:06d}.jpg"), quality=90)
            save_seed(os.path.join(pred, "predictions", TAG, DOMAIN, f"{i:06d}.pkl"), keys, planes, "rsepm")
        samples.append((image, planes))
    torch.manual_seed(seed)
    network = AffinityNet(backbone).eval()
    save_weights(network, model_path(pred, "bench-affinity"))
    return root, pred, network, samples


def bench_walks(edge, scores, small, repeat):
    """Sparse walk at VOC size; sparse against dense at `small` (H, W) pixels, dense extrapolated."""
    cells = ((small[0] + 3) // 4, (small[1] + 3) // 4)
    small_edge, small_scores = edge[: cells[0], : cells[1]].contiguous(), scores[:, : cells[0], : cells[1]].contiguous()
    figures = {"walk, sparse": timed(lambda: random_walk(scores, edge), repeat)}
    figures.update(
        side_by_side(
            {
                "walk, sparse, small": lambda: random_walk(small_scores, small_edge),
                "walk, dense, small": lambda: random_walk(small_scores, small_edge, method="dense"),
            },
            repeat,
        )
    )
    growth = (edge.numel() / small_edge.numel()) ** 3  # N x N squaring: N^3 multiply-adds, 2 ** 0..exp_times times
    figures["walk, dense, extrapolated"] = {
        k: v * growth if k != "runs" else v for k, v in figures["walk, dense, small"].items()
    }
    return figures, cells


def get_args_parser():
    parser = make_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--num_images", default=3, type=int, help="images of the end-to-end run")
    parser.add_argument("--repeat", default=3, type=positive_int, help="runs per measurement (min and median)")
    parser.add_argument("--threads", default=1, type=positive_int, help="threads per process")
    parser.add_argument("--backbone", default="resnet50", help="affinity network backbone")
    parser.add_argument(
        "--small",
        default=(120, 160),
        type=int_list,
        help="H,W of the image where the dense walk is timed beside the sparse one",
    )
    return parser


def main(args):
    set_threads(args.threads)
    result = {}
    with Machine() as machine, tempfile.TemporaryDirectory() as base, torch.no_grad():
        root, pred, network, samples = build(base, args.num_images, args.backbone)
        image, planes = samples[1]  # 500x375
        x = normalize_image(image)[None]
        boundary = side_by_side(
            {
                "boundary map, padded to 512": lambda: network.predict_boundary(x),
                "boundary map, unpadded": lambda: network.predict_boundary(x, pad_to=0),
            },
            args.repeat,
        )
        edge = network.predict_boundary(x)[0]
        scores = scores_to_stride(torch.from_numpy(planes)) * (1 - edge)
        walks, cells = bench_walks(edge, scores, args.small, args.repeat)
        whole = timed(lambda: random_walk_planes(torch.from_numpy(planes), network.predict_boundary(x)[0]), args.repeat)
        result.update(boundary, **walks)
        result["per image (boundary map + walk)"] = whole
        print(
            f"{args.backbone} random weights, 500x375 image ({edge.shape[1]}x{edge.shape[0]} cells), "
            f"dense against sparse at {args.small[1]}x{args.small[0]} ({cells[1]}x{cells[0]} cells)"
        )
        for name, figure in result.items():
            show(name, figure, "s", 1)
        result["padding cost"] = ratio(boundary["boundary map, padded to 512"], boundary["boundary map, unpadded"])
        result["sparse against dense, small"] = ratio(walks["walk, dense, small"], walks["walk, sparse, small"])
        result["sparse against dense, VOC (extrapolated)"] = ratio(
            walks["walk, dense, extrapolated"], walks["walk, sparse"]
        )
        for name in ("padding cost", "sparse against dense, small", "sparse against dense, VOC (extrapolated)"):
            show_ratio(name, result[name])
        if args.num_images > 0:
            start = time.perf_counter()
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
                    pred,
                    "--gpus",
                    "cpu",
                    "--mode",
                    "rw",
                    "--affinity_tag",
                    "bench-affinity",
                    "--affinity_backbone",
                    args.backbone,
                    "--num_workers",
                    "1",
                ],
            )
            seconds = (time.perf_counter() - start) / args.num_images
            if summary["written"] != args.num_images or summary["failed"]:
                raise RuntimeError(f"bench_rw: the conversion did not write every mask: {summary}")
            result["convert --mode rw, end to end"] = {"min": seconds, "median": seconds, "runs": 1}
            print(
                f"convert --mode rw --num_workers 1: {seconds:.2f} s per image over {args.num_images} images "
                f"(network loading, JPEG decode and PNG writing included)"
            )
    result["machine"] = machine.record
    return result


if __name__ == "__main__":
    cli(main, get_args_parser())
