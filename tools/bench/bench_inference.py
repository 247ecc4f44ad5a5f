"""Time of the multi-scale seed inference (core.multiscale.multiscale_inference) per image.

Random-weight networks on random images of fixed size: RSEPM ResNet-50 at the VOC size 500x375
and RSEPM ResNet-18 at the TOY size 128x128, with the published 4 scales (each with its flip) and
with `--scales 1.0` (one scale + flip). Also reports the forward calls per image, and with
--unbatched the time of running the image and its flip as two separate forwards.

    python tools/bench/bench_inference.py                # CPU, both cases, 1 thread
    python tools/bench/bench_inference.py --repeat 3 --threads 2 --unbatched true
    python tools/bench/bench_inference.py --processes 1,2 --repeat 3   # the scaling of infer_rsepm

With --processes, the per-image loop of infer_rsepm.py (tools/seeds/infer_loop.py) runs over a
generated TOY set with 1, 2, ... processes of one thread each (tools.shards.run_spawned, as
`--gpus 0,1` or torchrun spread it): images/s from the slowest share's loop (the process start-up
apart, also shown), its ratio to 1 process, and the bytes of a seed file.
"""

import os
import sys
import time

import torch
from torch import nn

if __package__ in (None, ""):  # run as a file, python tools/GROUP/NAME.py: the repository root on the import path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from core.multiscale import SCALES, multiscale_inference  # noqa: E402
from core.networks import RSEPM  # noqa: E402
from tools.args import cli, int_list, make_parser, positive_int, str2bool  # noqa: E402
from tools.bench.measure import Machine, set_threads, timed  # noqa: E402

# (backbone, classes incl. background, height, width)
CASES = {"r50-voc": ("resnet50", 21, 375, 500), "r18-toy": ("resnet18", 6, 128, 128)}
SCALE_SETS = {"4 scales": SCALES, "1.0 only": (1.0,)}


class CountingModel(nn.Module):
    """Counts forward calls; with unbatched=True runs each batch item as its own forward
    (the pre-batching way: the image and its flip separately) and concatenates the outputs."""

    def __init__(self, model, unbatched=False):
        super().__init__()
        self.model, self.unbatched, self.calls = model, unbatched, 0

    def forward(self, x):
        if not self.unbatched:
            self.calls += 1
            return self.model(x)
        outs = []
        for item in x.split(1):
            self.calls += 1
            outs.append(self.model(item))
        return {k: torch.cat([o[k] for o in outs]) for k in outs[0]}


def time_case(model, image, scales, repeat, unbatched=False):
    """Seconds per image (min, median, CPU) over `repeat` timed runs after one warm-up, and forward
    calls per image."""
    counter = CountingModel(model, unbatched)

    def run():
        multiscale_inference(counter, image, "rsepm", scales=scales, interpolation="nearest", with_scores=True)

    run()
    calls = counter.calls
    sync = torch.cuda.synchronize if image.is_cuda else None
    return timed(run, repeat, sync=sync), calls


def get_args_parser():
    parser = make_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {list(CASES)}")
    parser.add_argument("--repeat", default=3, type=positive_int, help="timed runs per setting (min and median)")
    parser.add_argument("--threads", default=1, type=positive_int, help="torch intra-op threads per process")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument(
        "--unbatched",
        default=False,
        type=str2bool,
        help="also time two forwards per scale (image and flip apart) for comparison",
    )
    parser.add_argument(
        "--processes",
        default=None,
        type=int_list,
        help="instead of the cases: the inference loop over 1 thread per process, for each "
        "count (e.g. 1,2), on --num_images generated TOY images",
    )
    parser.add_argument("--num_images", default=32, type=positive_int, help="images of the --processes run")
    return parser


def float32_bytes(folder, scratch):
    """Mean bytes of the seed files of `folder` written again in the authors' float32 form."""
    from core.io import load_seed, save_seed

    sizes = []
    os.makedirs(scratch, exist_ok=True)
    for name in sorted(os.listdir(folder)):
        if name.endswith(".pkl"):
            data = load_seed(os.path.join(folder, name))
            path = os.path.join(scratch, name)
            save_seed(path, data["keys"], data["seed"], data["dialect"], "float32")
            sizes.append(os.path.getsize(path))
    return sum(sizes) / max(1, len(sizes))


def process_scaling(counts, repeat, num_images, size=160):
    """{count: {"loop": stats of images/s, "wall": stats, "ratio", "seed_bytes"}} of the inference
    loop spread over `count` CPU processes of one thread each (tools.shards.run_spawned)."""
    import shutil
    import statistics
    import tempfile

    import infer_rsepm
    from core.dataset_layout import SeedLayout, load_dataset_info
    from core.weights import save_weights
    from tools.builders.make_toy_dataset import make_toy_dataset
    from tools.seeds import infer_loop
    from tools.shards import run_spawned

    work = tempfile.mkdtemp(prefix="bench_inference_")
    try:
        root = os.path.join(work, "TOY")
        make_toy_dataset(
            root,
            num_train=0,
            num_train_aug=0,
            num_validation=num_images,
            num_test=0,
            min_size=size,
            max_size=size,
            progress=False,
        )
        torch.manual_seed(0)
        network = RSEPM("resnet18", num_classes=6).eval()
        weights = os.path.join(work, "last.pth")
        save_weights(network, weights)
        args = infer_rsepm.get_args_parser().parse_args(
            [
                "--root_dir",
                root,
                "--dataset",
                "TOY",
                "--domain",
                "validation",
                "--weights",
                weights,
                "--backbone",
                "resnet18",
                "--scales",
                "1.0,0.5",
                "--conf_th",
                "0.3",
                "--num_workers",
                "0",
                "--gpus",
                "cpu",
                "--threads",
                "1",
                "--pred_dir",
                work,
            ]
        )
        layout = SeedLayout(root, "validation", load_dataset_info("TOY"))
        ids = infer_loop.image_order(layout, args)
        result = {}
        for count in counts:
            loop, wall, sizes = [], [], []
            for run in range(repeat):
                out = os.path.join(work, f"seeds{count}-{run}")
                os.makedirs(out)
                start = time.perf_counter()
                shares = run_spawned(
                    infer_loop._infer_share,
                    [torch.device("cpu")] * count,
                    args,
                    network,
                    "rsepm",
                    True,
                    "nearest",
                    "sigmoid",
                    False,
                    layout,
                    ids,
                    out,
                )
                wall.append(num_images / (time.perf_counter() - start))
                loop.append(num_images / max(share["seconds"] for share in shares))
                sizes = [os.path.getsize(os.path.join(out, name)) for name in os.listdir(out)]
            result[count] = {
                "loop": {"max": max(loop), "median": statistics.median(loop)},
                "wall": {"max": max(wall), "median": statistics.median(wall)},
                "seed_bytes": statistics.fmean(sizes),
                "seed_bytes_float32": float32_bytes(out, os.path.join(work, "float32")),
            }
        base = result[counts[0]]["loop"]["max"]
        for count in counts:
            result[count]["ratio"] = result[count]["loop"]["max"] / base
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(args):
    set_threads(args.threads)
    device = torch.device(args.device)
    result = {}
    if args.processes:
        with Machine() as machine:
            print(
                f"inference loop of infer_rsepm.py (ResNet-18 RS+EPM, scales 1.0,0.5 + flips) on {args.num_images} "
                f"160x160 TOY images, 1 thread per process, best (max) and median of {args.repeat} runs"
            )
            header = (
                f"{'processes':>9} {'images/s':>9} {'median':>8} {'ratio':>6} {'with start-up':>14} "
                f"{'seed bytes':>11} {'as float32':>11}"
            )
            print(header)
            print("-" * len(header))
            scaling = process_scaling(list(args.processes), args.repeat, args.num_images)
            for count, row in scaling.items():
                print(
                    f"{count:>9} {row['loop']['max']:>9.2f} {row['loop']['median']:>8.2f} x{row['ratio']:>5.2f} "
                    f"{row['wall']['max']:>14.2f} {row['seed_bytes']:>11.0f} {row['seed_bytes_float32']:>11.0f}",
                    flush=True,
                )
        return {"processes": scaling, "machine": machine.record}
    with Machine() as machine:
        print(f"device {device}, torch {torch.__version__}, {args.repeat} timed runs after a warm-up")
        header = (
            f"{'case':<9} {'image':>8} {'scales':<9} {'mode':<9} {'forwards':>8} "
            f"{'min s/img':>9} {'median':>8} {'CPU s':>8}"
        )
        print(header)
        print("-" * len(header))
        for name in args.cases.split(","):
            backbone, classes, height, width = CASES[name]
            torch.manual_seed(0)
            model = RSEPM(backbone, num_classes=classes).to(device).eval()
            image = torch.randn(3, height, width, device=device)
            for label, scales in SCALE_SETS.items():
                for unbatched in (False, True) if args.unbatched else (False,):
                    figure, calls = time_case(model, image, scales, args.repeat, unbatched)
                    mode = "unbatched" if unbatched else "batched"
                    result[f"{name} {label} {mode}"] = dict(figure, forwards=calls)
                    print(
                        f"{name:<9} {f'{width}x{height}':>8} {label:<9} {mode:<9} {calls:>8} "
                        f"{figure['min']:>9.3f} {figure['median']:>8.3f} {figure['cpu']:>8.3f}",
                        flush=True,
                    )
    result["machine"] = machine.record
    return result


if __name__ == "__main__":
    cli(main, get_args_parser())
