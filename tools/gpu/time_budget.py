"""Estimated wall time of the full VOC and COCO pipelines, stage by stage, on one H100-class GPU
with 16 CPU cores and on 8 such GPUs under torchrun (docs/performance.md#time-budget-for-the-full-runs-estimated).

GPU stages: FLOPs counted by tools/engine/flops.py (on the meta device where the code allows, RS+EPM
on the CPU at --rsepm_crop, scaled to 512 by area) at a stated share of the bf16 peak. CPU stages:
CPU seconds per image from `run_all.py --json` (or the defaults below) over the worker count.
Each stage is spread the way the code spreads it (SPREAD): training over DDP ranks at --scaling,
the per-image GPU stages over one process per GPU with nothing to exchange (tools/shards.py),
the CPU stages over every core. A disk table adds the bytes each stage leaves: seeds (uint16 by
default, and float32 planes, the authors' format), masks, the relation-label cache and checkpoints (from the networks'
parameter counts). Every figure it prints is an estimate.

    python tools/gpu/time_budget.py --figures /tmp/figures.json
"""

import json
import os
import sys

if __package__ in (None, ""):  # run as a file, python tools/GROUP/NAME.py: the repository root on the import path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import torch  # noqa: E402

import train_seg  # noqa: E402
from core.affinity import AffinityNet  # noqa: E402
from core.multiscale import SCALES  # noqa: E402
from core.networks import RSEPM, build_network  # noqa: E402
from core.rsepm import RSEPMConfig  # noqa: E402
from tools.args import cli, make_parser, positive_int  # noqa: E402
from tools.engine import flops  # noqa: E402

PEAK = dict(flops.PEAK_TFLOPS)["H100"]["bf16"] * 1e12
# CPU seconds per image, 1 thread (tools/bench/run_all.py, 2 cores at load 8); label cache: the
# "about a second" of docs/reproduction.md
CPU = {"crf": 0.53, "rw": 2.18, "augment": 0.0134, "label cache": 1.0, "evaluate": 0.002}
DATASETS = {
    "VOC": {"train": 10582, "val": 1449, "rsepm_epochs": 30, "seg_epochs": 50, "size": (375, 500)},
    "COCO": {"train": 82081, "val": 40137, "rsepm_epochs": 10, "seg_epochs": 50, "size": (480, 640)},
}
RW_GPU_SECONDS = 0.05  # per image: 2^8 small sparse products and one process's file work, not FLOPs
# How each stage spreads in the code: "ddp" (training: torchrun ranks, at --scaling), "shards" (one
# process per GPU over every n-th image, no exchange: tools/shards.py), "cores" (worker pools).
SPREAD = {
    "RS+EPM training (GPU)": "ddp",
    "seeds of train_aug / train, 4 scales + flips (GPU)": "shards",
    "CRF of the seeds (CPU)": "cores",
    "affinity network: label cache (CPU) + 3 epochs (GPU)": "ddp",
    "random walk (one process per GPU)": "shards",
    "random walk on the CPU instead": "cores",
    "DeepLabV3+ training (GPU)": "ddp",
    "validation inference (GPU) + CRF (CPU)": "shards",
    "evaluation (CPU)": "cores",
}
# Disk: foreground classes per image with the ground-truth tags (VOC train_aug about 1.5, COCO
# train about 2.9), DeepLabV3+ seeds keep the background and the classes reaching 0.05 (about one
# more); a palette PNG mask or relation-label map about 5 KB. Our estimates, not measurements.
CLASSES_PER_IMAGE = {"VOC": 1.5, "COCO": 2.9}
PNG_BYTES = 5e3
# The default seed format (uint16) against the authors' float32: x12 measured on the toy run's trained
# seeds at their own size and x12.6 upsampled to 500x375 (docs/formats.md#seed-files). An estimate for
# VOC and COCO seeds, whose borders are less regular.
UINT16_RATIO = 12


def count_flops(rsepm_crop):
    meta = torch.device("meta")
    scale = (512 / rsepm_crop) ** 2
    counted = {
        "rsepm train": flops.rsepm_train_flops(RSEPMConfig(), "resnet50", 21, rsepm_crop, torch.device("cpu")) * scale,
        "seg train": flops.seg_train_flops("deeplabv3+", "resnet101", 21, 8, 512, meta, train_seg.segmentation_loss),
        "affinity forward": flops._count(
            lambda: AffinityNet("resnet50").to(meta)(torch.randn(2, 3, 512, 512, device=meta))
        )
        / 2,
    }
    for name, (h, w) in ((k, v["size"]) for k, v in DATASETS.items()):
        counted[f"rsepm infer {name}"] = flops.inference_flops(
            RSEPM("resnet50", 21, output_stride=16), "rsepm", h, w, SCALES, meta, interpolation="nearest"
        )
        counted[f"seg infer {name}"] = flops.inference_flops(
            build_network("deeplabv3+", "resnet101", 21, output_stride=8), "seg", h, w, SCALES, meta
        )
    return counted


def stages(name, gpus, f, cpu, args):
    """[(stage, seconds)] on `gpus` GPUs with --cores cores each, each stage spread as SPREAD says."""
    d = DATASETS[name]
    n, v = d["train"], d["val"]
    ddp = PEAK * gpus * args.scaling ** (gpus > 1)  # torchrun training: gradients exchanged every step
    shards = PEAK * gpus  # one process per GPU over its share of the images: nothing exchanged
    cores = args.cores * gpus
    train, infer = ddp * args.train_utilisation, shards * args.infer_utilisation
    return [
        ("RS+EPM training (GPU)", f["rsepm train"] * n * d["rsepm_epochs"] / train),
        ("seeds of train_aug / train, 4 scales + flips (GPU)", f[f"rsepm infer {name}"] * n / infer),
        ("CRF of the seeds (CPU)", cpu["crf"] * n / cores),
        (
            "affinity network: label cache (CPU) + 3 epochs (GPU)",
            cpu["label cache"] * n / cores + 3 * n * f["affinity forward"] * 1.2 / train,
        ),
        ("random walk (one process per GPU)", RW_GPU_SECONDS * n / gpus),
        ("random walk on the CPU instead", cpu["rw"] * n / cores),
        ("DeepLabV3+ training (GPU)", f["seg train"] * n * d["seg_epochs"] / train),
        ("validation inference (GPU) + CRF (CPU)", f[f"seg infer {name}"] * v / infer + cpu["crf"] * v / cores),
        ("evaluation (CPU)", cpu["evaluate"] * v / cores),
    ]


def checkpoint_bytes():
    """{name: bytes} of the checkpoints a run writes, from the parameter and buffer counts: last.pth
    (the weights in float32), resume.pth (weights, SGD momentum, and RS+EPM's EMA copy)."""
    meta = torch.device("meta")
    sizes = {}
    for name, network, ema in (
        ("RS+EPM ResNet-50", RSEPM("resnet50", 21, output_stride=16).to(meta), True),
        ("affinity network", AffinityNet("resnet50").to(meta), False),
        ("DeepLabV3+ ResNet-101", build_network("deeplabv3+", "resnet101", 21, output_stride=8).to(meta), False),
    ):
        weights = sum(t.numel() * 4 for t in network.state_dict().values())
        trained = sum(p.numel() * 4 for p in network.parameters() if p.requires_grad)
        sizes[name] = {"last": weights, "resume": weights * (2 if ema else 1) + trained}
    return sizes


def disk(name):
    """[(what, bytes in float32, bytes by default)] a run on dataset `name` leaves on disk (estimates:
    CLASSES_PER_IMAGE, PNG_BYTES, UINT16_RATIO for the seeds)."""
    d = DATASETS[name]
    pixels = d["size"][0] * d["size"][1]
    planes = CLASSES_PER_IMAGE[name]
    checkpoints = checkpoint_bytes()
    seeds_train, seeds_val = d["train"] * planes * pixels * 4, d["val"] * (2 * planes + 1) * pixels * 4
    fixed = [
        ("CRF and random-walk masks of train", 2 * d["train"] * PNG_BYTES),
        ("relation-label cache", d["train"] * PNG_BYTES),
        ("masks of validation", 2 * d["val"] * PNG_BYTES),
        (
            "checkpoints (last.pth and resume.pth of the three networks)",
            sum(c["last"] + c["resume"] for c in checkpoints.values()),
        ),
    ]
    return [
        ("seeds of train", seeds_train, seeds_train / UINT16_RATIO),
        ("seeds of validation (RS+EPM and DeepLabV3+)", seeds_val, seeds_val / UINT16_RATIO),
        *[(what, size, size) for what, size in fixed],
    ]


def get_args_parser():
    parser = make_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--figures", default="", help="run_all.py --json output for the CPU seconds per image")
    parser.add_argument("--rsepm_crop", default=128, type=positive_int, help="crop where RS+EPM's FLOPs are counted")
    parser.add_argument("--train_utilisation", default=0.30, type=float, help="share of the bf16 peak in training")
    parser.add_argument("--infer_utilisation", default=0.20, type=float, help="share of the peak in inference")
    parser.add_argument("--scaling", default=0.90, type=float, help="torchrun efficiency on 8 GPUs")
    parser.add_argument("--cores", default=16, type=positive_int, help="CPU cores per GPU")
    return parser


def main(args):
    torch.set_num_threads(max(1, torch.get_num_threads()))
    cpu = dict(CPU)
    if args.figures:
        with open(args.figures, encoding="utf-8") as f:
            measured = json.load(f)
        cpu["crf"] = measured["crf"]["CRF, 1 worker(s), per image"]["cpu"]
        cpu["rw"] = measured["rw"]["per image (boundary map + walk)"]["cpu"]
        cpu["augment"] = measured["data"]["augmentation"]["cpu"] + measured["data"]["decode PIL"]["cpu"]
    f = count_flops(args.rsepm_crop)
    print("GFLOP per image: " + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in f.items()))
    result = {"flops": f, "cpu": cpu}
    for name in DATASETS:
        one, eight = stages(name, 1, f, cpu, args), stages(name, 8, f, cpu, args)
        print(
            f"\n| {name} stage (*estimated*) | spreads over | 1 GPU, 16 cores | 8 GPUs, 128 cores |\n|---|---|---|---|"
        )
        for (stage, a), (_, b) in zip(one, eight):
            spread = {"ddp": "GPUs (DDP)", "shards": "GPUs (a share each)", "cores": "cores"}[SPREAD[stage]]
            print(f"| {stage} | {spread} | {a / 60:.1f} min | {b / 60:.1f} min |")
        fast = [(a, b) for (stage, a), (_, b) in zip(one, eight) if stage != "random walk on the CPU instead"]
        print(f"| total | | {sum(a for a, _ in fast) / 3600:.1f} h | {sum(b for _, b in fast) / 3600:.1f} h |")
        rows = disk(name)
        print(
            f"\n| {name} disk (*estimated*) | GB, seeds in float32 (`--seed_format float32`) | GB, seeds in "
            "uint16 (the default) |\n|---|---|---|"
        )
        for what, full, default in rows:
            print(f"| {what} | {full / 1e9:.1f} | {default / 1e9:.1f} |")
        print(f"| total | {sum(r[1] for r in rows) / 1e9:.0f} | {sum(r[2] for r in rows) / 1e9:.0f} |")
        result[name] = {"1": one, "8": eight, "disk": rows}
    per_core = 1 / cpu["augment"]
    need = PEAK * args.train_utilisation / f["rsepm train"]
    print(
        f"\ndata loading: {per_core:.0f} images/s per core; RS+EPM at {args.train_utilisation:.0%} needs "
        f"{need:.0f} images/s per GPU = {need / per_core:.1f} busy cores; 14 workers give {14 * per_core:.0f}"
    )
    return result


if __name__ == "__main__":
    cli(main, get_args_parser())
