"""Time of one training iteration of train_rsepm.py and train_seg.py, the host syncs it makes, and
the data loading cost per image.

Random-weight networks on random crops (no dataset needed). For each step it times `--iterations`
iterations after `--warmup` untimed ones, in the variants the training scripts can run:
  - rsepm: RSEPMTraining forward (RS and EPM active: SCG, PAMR, certain filter, edge predict and
    the second forward of the mixed images) + backward + SGD step, as train_rsepm.py does it;
    also the target generation alone (recur_seed + mix_labels, no grad);
  - seg: DeepLabV3+ (or --seg_decoder) forward + cross entropy + backward + SGD step;
  - memory formats: contiguous and channels-last (--channels_last true);
  - loss bookkeeping: `sync` (check_finite with one host sync per iteration and float() of the
    statistics, the loop before LossMonitor) and `deferred` (check_finite with a LossMonitor,
    read at the one log line at the end, the current loop).
Host syncs are counted by wrapping torch.Tensor.item / tolist / cpu / numpy / __float__ / __int__ /
__bool__ during the timed loop (on CPU nothing waits, but on a GPU each one drains the queue).
Then the data side: JPEG decode at the VOC size (500x375) with PIL and with OpenCV, and the
training augmentation (core.transforms.TrainTransform, crop 512) per image, side by side with the
plain torchvision pipeline of the same steps (PIL resize, RandomHorizontalFlip, ColorJitter,
ToTensor, Normalize, RandomCrop with padding), as a ratio.

    python tools/bench/bench_train_step.py                 # CPU, small sizes, 1 thread
    python tools/bench/bench_train_step.py --only data
    python tools/bench/bench_train_step.py --device cuda --backbone resnet50 --crop 512 --batch 16 --threads 16
"""

import io
import os
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

if __package__ in (None, ""):  # run as a file, python tools/GROUP/NAME.py: the repository root on the import path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from core.dataset_layout import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from core.io import IGNORE_INDEX  # noqa: E402
from core.networks import RSEPM, build_network, split_parameters  # noqa: E402
from core.rsepm import LOSS_TERMS, RSEPMConfig, RSEPMTraining  # noqa: E402
from core.transforms import JITTER, TrainTransform  # noqa: E402
from tools.args import cli, make_parser, positive_int  # noqa: E402
from tools.bench.measure import Machine, ratio, set_threads, show, show_ratio, side_by_side  # noqa: E402
from tools.engine import optim, runlog  # noqa: E402

SYNC_METHODS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__")
FORMATS = {"contiguous": torch.contiguous_format, "channels-last": torch.channels_last}


class SyncCounter:
    """Context manager counting tensor-to-host calls (the methods of SYNC_METHODS)."""

    def __enter__(self):
        self.count, self.saved = 0, {}
        for name in SYNC_METHODS:
            original = self.saved[name] = getattr(torch.Tensor, name)
            setattr(torch.Tensor, name, self._counting(original))
        return self

    def _counting(self, original):
        def method(tensor, *args, **kwargs):
            self.count += 1
            return original(tensor, *args, **kwargs)

        return method

    def __exit__(self, *exc):
        for name, original in self.saved.items():
            setattr(torch.Tensor, name, original)
        return False


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bookkeeping(losses, stats, iteration, mode, monitor):
    """What the scripts do with the loss terms each iteration: `sync` = the old per-step check and
    float() of the statistics; `deferred` = tensors into the LossMonitor, nothing read back."""
    if mode == "sync":
        values = runlog.check_finite(losses, iteration)
        return {**values, **{k: float(v) for k, v in stats.items()}}
    runlog.check_finite({**losses, **stats}, iteration, monitor=monitor)
    return None


def time_loop(step, iterations, warmup, device, mode):
    """(seconds per iteration over the timed loop, host syncs per iteration)."""
    monitor = runlog.LossMonitor()
    for i in range(warmup):
        step(i, mode, monitor)
    monitor.means()
    synchronize(device)
    with SyncCounter() as counter:
        start = time.perf_counter()
        for i in range(iterations):
            step(i, mode, monitor)
        if mode == "deferred":
            monitor.means()  # the log line at the end of the interval
        synchronize(device)
        seconds = time.perf_counter() - start
    return seconds / iterations, counter.count / iterations


def rsepm_step_factory(args, device, memory_format, generator):
    network = RSEPM(args.backbone, 21, output_stride=16, pretrained="none").to(device, memory_format=memory_format)
    config = RSEPMConfig()
    module = RSEPMTraining(network, config).train()
    optimizer = optim.build_optimizer(split_parameters(network), 0.01, 1e-4)
    images = torch.randn(args.batch, 3, args.crop, args.crop, generator=generator).to(
        device, memory_format=memory_format
    )
    tags = (torch.rand(args.batch, 20, generator=generator) < 0.15).float()
    tags[torch.arange(args.batch), torch.randint(0, 20, (args.batch,), generator=generator)] = 1.0
    tags, valid = tags.to(device), torch.ones(args.batch, args.crop, args.crop, dtype=torch.bool, device=device)
    weights = config.weights()

    def step(iteration, mode, monitor):
        out = module(images, tags, valid, use_rs=True, use_mix=True, seed=iteration)
        losses = {k: out[k] for k in LOSS_TERMS if k in out}
        stats = {k: v for k, v in out.items() if k not in LOSS_TERMS}
        bookkeeping(losses, stats, iteration, mode, monitor)
        optimizer.zero_grad(set_to_none=True)
        sum(weights[k] * v for k, v in losses.items()).backward()
        optimizer.step()

    @torch.no_grad()
    def targets(iteration, mode, monitor):
        source = network(images, with_features=config.feature_names())
        module.recur_seed(images, source, tags, valid)
        module.mix_labels(images, source["seg"], tags)

    return step, targets


def seg_step_factory(args, device, memory_format, generator):
    network = build_network(args.seg_decoder, args.backbone, 21, output_stride=8, pretrained="none")
    network = network.to(device, memory_format=memory_format).train()
    optimizer = optim.build_optimizer(split_parameters(network), 0.001, 4e-5)
    images = torch.randn(args.batch, 3, args.crop, args.crop, generator=generator).to(
        device, memory_format=memory_format
    )
    masks = torch.randint(0, 21, (args.batch, args.crop, args.crop), generator=generator).to(device)

    def step(iteration, mode, monitor):
        logits = F.interpolate(network(images).float(), size=masks.shape[-2:], mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits, masks, ignore_index=IGNORE_INDEX)
        bookkeeping({"seg": loss}, {"ignored": (masks == IGNORE_INDEX).float().mean()}, iteration, mode, monitor)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def bench_steps(args, device):
    rows = []
    for format_name in args.formats.split(","):
        memory_format = FORMATS[format_name]
        generator = torch.Generator().manual_seed(0)
        rsepm_step, targets = rsepm_step_factory(args, device, memory_format, generator)
        seg_step = seg_step_factory(args, device, memory_format, generator)
        cases = [
            ("train_rsepm step", rsepm_step, ("sync", "deferred")),
            ("RS+EPM targets only", targets, ("deferred",)),
            (f"train_seg step ({args.seg_decoder})", seg_step, ("sync", "deferred")),
        ]
        for name, step, modes in cases:
            for mode in modes:
                times, syncs = [], 0.0
                for _ in range(args.repeat):
                    seconds, syncs = time_loop(step, args.iterations, args.warmup, device, mode)
                    times.append(seconds)
                label = mode if name != "RS+EPM targets only" else "-"
                rows.append((name, format_name, label, min(times), statistics.median(times), syncs))
                print(
                    f"{name:32s} {format_name:13s} {label:8s} min {min(times) * 1e3:8.1f} ms  median "
                    f"{statistics.median(times) * 1e3:8.1f} ms  {args.batch / min(times):7.2f} img/s  "
                    f"{syncs:.2f} host syncs/iteration",
                    flush=True,
                )
    return rows


def synthetic_photo(height=375, width=500, seed=0):
    """A smooth random RGB image (uint8) that compresses like a photo, not like noise."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3)).astype(np.float32)
    big = (
        torch.nn.functional.interpolate(
            torch.from_numpy(small).permute(2, 0, 1)[None], size=(height, width), mode="bicubic", align_corners=False
        )[0]
        .permute(1, 2, 0)
        .numpy()
    )
    big += rng.normal(0, 6, big.shape)
    return np.clip(big, 0, 255).astype(np.uint8)


def plain_augmentation(crop=512, min_size=320, max_size=640):
    """The same steps as TrainTransform written the usual way: torchvision's ColorJitter and
    tensor transforms on a PIL image (randomness from torch's generator)."""
    import torchvision.transforms as T
    from PIL import Image

    tail = T.Compose(
        [
            T.RandomHorizontalFlip(),
            T.ColorJitter(*JITTER),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            T.RandomCrop(crop, pad_if_needed=True),
        ]
    )

    def apply(photo):
        image = Image.fromarray(photo)
        long_side = int(torch.randint(min_size, max_size + 1, ()))
        scale = long_side / max(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC)
        return tail(image)

    return apply


def bench_data(args):
    """Seconds per image: JPEG decode (PIL, OpenCV) and the training augmentation against the plain
    torchvision pipeline, alternated run by run."""
    from PIL import Image

    photo = synthetic_photo()
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, format="JPEG", quality=90)
    data = buffer.getvalue()

    def pil_decode():
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image.convert("RGB"))

    decoders = {"decode PIL": pil_decode}
    try:
        import cv2

        encoded = np.frombuffer(data, np.uint8)
        decoders["decode OpenCV"] = lambda: cv2.cvtColor(cv2.imdecode(encoded, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    except ImportError:
        print("warning: OpenCV not installed: its decode is skipped")
    transform, plain = TrainTransform(crop_size=512, min_size=320, max_size=640), plain_augmentation()
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    figures = side_by_side(decoders, args.repeat, args.images)
    figures.update(
        side_by_side(
            {
                "augmentation": lambda: transform(photo, None, rng),
                "augmentation, plain torchvision": lambda: plain(photo),
            },
            args.repeat,
            args.images,
        )
    )
    print(f"one 500x375 JPEG of {len(data) / 1024:.0f} KiB, {args.images} images per run, {args.repeat} runs")
    for name, figure in figures.items():
        show(f"{name} (per image)", figure)
    result = {name: figure for name, figure in figures.items()}
    result["augmentation speed-up"] = ratio(figures["augmentation, plain torchvision"], figures["augmentation"])
    show_ratio("augmentation against plain torchvision", result["augmentation speed-up"])
    return result


def get_args_parser():
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--backbone", default="resnet18", help="backbone of both networks")
    parser.add_argument("--seg_decoder", default="deeplabv3+", choices=("deeplabv3+", "deeplabv2"))
    parser.add_argument("--batch", default=4, type=positive_int, help="images per iteration")
    parser.add_argument("--crop", default=128, type=positive_int, help="crop side")
    parser.add_argument("--iterations", default=5, type=positive_int, help="timed iterations per run")
    parser.add_argument("--warmup", default=1, type=int, help="untimed iterations before each run")
    parser.add_argument("--repeat", default=3, type=positive_int, help="runs per case (min and median reported)")
    parser.add_argument("--formats", default="contiguous,channels-last", help="comma-separated memory formats")
    parser.add_argument("--images", default=10, type=positive_int, help="images per data-loading run")
    parser.add_argument("--only", default="all", choices=("all", "steps", "data"))
    parser.add_argument("--threads", default=1, type=positive_int, help="threads per process")
    return parser


def main(args):
    set_threads(args.threads)
    device = torch.device(args.device)
    result = {}
    with Machine() as machine:
        print(
            f"torch {torch.__version__}, device {device}, backbone {args.backbone}, batch {args.batch}, "
            f"crop {args.crop}",
            flush=True,
        )
        if args.only in ("all", "steps"):
            result["steps"] = bench_steps(args, device)
        if args.only in ("all", "data"):
            result["data"] = bench_data(args)
    result["machine"] = machine.record
    return result


if __name__ == "__main__":
    cli(main, get_args_parser())
