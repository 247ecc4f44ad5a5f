"""Throughput of `convert_seed_to_pseudo_masks.py --mode rw` on the CPU at VOC size.

Builds a throw-away dataset of synthetic 500x375 / 375x500 images with 2-class rsepm seeds, a
randomly initialised ResNet-50 affinity network (the speed does not depend on its weights),
converts the set once per --num_workers value and prints images per second, plus the split of
one image's time between the network forward (image + mirror) and the random walk.

    OMP_NUM_THREADS=2 python tools/bench/bench_rw.py --num_images 6 --workers 1
"""
import os
import sys
import tempfile
import time

import numpy as np
import torch

if __package__ in (None, ""):  # run as a file, python tools/GROUP/NAME.py: the repository root on the import path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import convert_seed_to_pseudo_masks as convert  # noqa: E402
from core.affinity import AffinityNet  # noqa: E402
from core.checkpoint import save_weights  # noqa: E402
from core.datasets import normalize_image  # noqa: E402
from core.io import save_seed  # noqa: E402
from core.randomwalk import random_walk_labels  # noqa: E402
from tools.args import make_parser  # noqa: E402
from tools.bench.bench_crf import DOMAIN, TAG, synthetic_scene  # noqa: E402
from tools.paths import model_path  # noqa: E402
from PIL import Image  # noqa: E402


def build(base, num_images, backbone, seed=0):
    rng = np.random.default_rng(seed)
    root, pred = os.path.join(base, "root"), os.path.join(base, "pred")
    os.makedirs(os.path.join(root, DOMAIN, "image"))
    samples = []
    for i in range(num_images):
        height, width = (375, 500) if i % 3 else (500, 375)
        image, planes = synthetic_scene(rng, height, width, 2)
        Image.fromarray(image).save(os.path.join(root, DOMAIN, "image", f"{i:06d}.jpg"), quality=90)
        keys = [0] + sorted(rng.choice(np.arange(1, 21), 2, replace=False).tolist())
        save_seed(os.path.join(pred, "predictions", TAG, DOMAIN, f"{i:06d}.pkl"), keys, planes, "rsepm")
        samples.append((image, planes, keys[1:]))
    torch.manual_seed(seed)
    network = AffinityNet(backbone).eval()
    save_weights(network, model_path(pred, "bench-affinity"))
    return root, pred, network, samples


def main():
    parser = make_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--num_images", default=6, type=int, help="synthetic VOC-sized seed files")
    parser.add_argument("--workers", default="1", type=str, help="comma-separated --num_workers values")
    parser.add_argument("--backbone", default="resnet50", help="affinity network backbone")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as base:
        root, pred, network, samples = build(base, args.num_images, args.backbone)
        print(f"{args.num_images} synthetic images (500x375 / 375x500, 2 classes), {args.backbone} random weights, "
              f"CPU cores {os.cpu_count()}, torch threads {torch.get_num_threads()}, "
              f"load average {os.getloadavg()[0]:.1f}")
        image, planes, keys = samples[1]
        with torch.no_grad():
            start = time.perf_counter()
            edge = network.predict_boundary(normalize_image(image)[None])[0]
            forward = time.perf_counter() - start
            start = time.perf_counter()
            random_walk_labels(torch.from_numpy(planes), keys, edge)
            walk = time.perf_counter() - start
        print(f"one 500x375 image: forward (image + mirror) {forward:.2f} s, random walk {walk:.2f} s")
        for run, workers in enumerate(int(w) for w in args.workers.split(",")):
            run_dir = os.path.join(base, f"run{run}")  # fresh output folder: nothing skipped as done
            os.makedirs(run_dir)
            for name in ("predictions", "models"):
                os.symlink(os.path.join(pred, name), os.path.join(run_dir, name))
            start = time.perf_counter()
            summary = convert.main(convert.get_args_parser().parse_args(["--root_dir", root, "--dataset", "VOC", "--domain", DOMAIN, "--tag", TAG,
                                    "--pred_dir", run_dir, "--gpus", "cpu", "--mode", "rw", "--affinity_tag",
                                    "bench-affinity", "--affinity_backbone", args.backbone,
                                    "--num_workers", str(workers)]))
            elapsed = time.perf_counter() - start
            assert summary["written"] == args.num_images and not summary["failed"], summary
            print(f"num_workers={workers}: {elapsed:.2f} s, {args.num_images / elapsed:.2f} images/s "
                  f"(network loading included)")


if __name__ == "__main__":
    main()
