"""Time of the multi-scale seed inference (core.inference.multiscale_inference) per image.

Random-weight networks on random images of fixed size: RSEPM ResNet-50 at the VOC size 500x375
and RSEPM ResNet-18 at the TOY size 128x128, with the published 4 scales (each with its flip) and
with `--scales 1.0` (one scale + flip). Also reports the forward calls per image, and with
--unbatched the time of running the image and its flip as two separate forwards.

    python tools/bench/bench_inference.py                # CPU, both cases
    python tools/bench/bench_inference.py --repeat 3 --threads 2 --unbatched
"""
import os
import statistics
import sys
import time

import torch
from torch import nn

if __package__ in (None, ""):  # run as a file, python tools/GROUP/NAME.py: the repository root on the import path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from core.inference import SCALES, multiscale_inference  # noqa: E402
from core.networks import RSEPM  # noqa: E402
from tools.args import make_parser  # noqa: E402

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
    """(min, median) seconds per image over `repeat` timed runs after one warm-up, and forward
    calls per image. On a shared machine the minimum is the steadier figure."""
    counter = CountingModel(model, unbatched)
    multiscale_inference(counter, image, "rsepm", scales=scales, interpolation="nearest", with_scores=True)
    calls = counter.calls
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        multiscale_inference(counter, image, "rsepm", scales=scales, interpolation="nearest", with_scores=True)
        if image.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times), calls


def parse_args(argv=None):
    parser = make_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {list(CASES)}")
    parser.add_argument("--repeat", default=3, type=int, help="timed runs per setting (min and median reported)")
    parser.add_argument("--threads", default=None, type=int, help="torch intra-op threads; None: torch's choice")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--unbatched", action="store_true",
                        help="also time two forwards per scale (image and flip apart) for comparison")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{args.repeat} timed runs after a warm-up")
    header = (f"{'case':<9} {'image':>8} {'scales':<9} {'mode':<9} {'forwards':>8} "
              f"{'min s/img':>9} {'median':>8}")
    print(header)
    print("-" * len(header))
    for name in args.cases.split(","):
        backbone, classes, height, width = CASES[name]
        torch.manual_seed(0)
        model = RSEPM(backbone, num_classes=classes).to(device).eval()
        image = torch.randn(3, height, width, device=device)
        modes = (False, True) if args.unbatched else (False,)
        for label, scales in SCALE_SETS.items():
            for unbatched in modes:
                fastest, median, calls = time_case(model, image, scales, args.repeat, unbatched)
                mode = "unbatched" if unbatched else "batched"
                print(f"{name:<9} {f'{width}x{height}':>8} {label:<9} {mode:<9} {calls:>8} "
                      f"{fastest:>9.3f} {median:>8.3f}", flush=True)


if __name__ == "__main__":
    main()
