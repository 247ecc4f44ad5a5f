"""The loop of infer_rsepm.py and infer_seg.py: flags, checkpoint, image order, one seed file per
image, spread over one process per device (tools/shards.py; docs/formats.md#inference). The
tensor-level multi-scale inference lives in core/multiscale.py.
"""

import argparse
import os
import random
import time
from functools import partial

import torch

from core.dataset_layout import SeedLayout, load_dataset_info, normalize_image
from core.errors import CheckpointError, DatasetError, OutputError, UsageError
from core.io import SEED_FORMATS, claim_output_folder, file_fingerprint, read_json, save_seed
from core.multiscale import SCALES, multiscale_inference, rsepm_seed, scaled_size, seg_seed
from core.progress import progress
from core.safety import safe_output_path
from core.weights import load_checkpoint
from tools.args import (
    AMP_MODES,
    add_dataset_args,
    add_device_args,
    add_experiment_args,
    add_image_limit_arg,
    add_overwrite_arg,
    compatibility_group,
    make_parser,
    resolve_devices,
    str2bool,
)
from tools.paths import model_path, predictions_dir
from tools.pool import item_write_problem, list_skipped, main_threads, worker_threads
from tools.shards import Shard, run_spawned

MAX_SCALE = 4.0  # upper bound of --scales: larger ones end in an out-of-memory kill without a message
# Rough peak memory of one pass per pixel of its (scaled) input, the image and its flip together:
# a ResNet-101 DeepLab at output stride 8 keeps a few 1024-2048-channel maps at 1/8 of the input
# side alive (~100 floats per input pixel each image). An estimate for a guard, not a measurement.
PASS_BYTES_PER_PIXEL = 1024


def inference_parser(description, backbone, tag):
    """The flags both inference scripts share, with the original names and defaults."""
    parser = make_parser(description)
    add_device_args(parser)
    add_dataset_args(parser, domain="train")
    add_experiment_args(parser, tag=tag)
    parser.add_argument("--single", default=False, type=str2bool, help="only images with exactly one tag")
    parser.add_argument(
        "--backbone",
        default=None,
        type=str,
        help=f"ResNet backbone of the checkpoint; default: the one its config.json records, else {backbone}",
    )
    parser.add_argument("--strategy", default="last", type=str, help="checkpoint name models/{tag}/{strategy}.pth")
    parser.add_argument(
        "--weights", default=None, type=str, help="checkpoint file to load instead of models/{tag}/{strategy}.pth"
    )
    parser.add_argument("--reverse", default=False, type=str2bool, help="process images in reverse order")
    parser.add_argument("--shuffle", default=False, type=str2bool, help="process images in random order")
    compatibility_group(parser).add_argument(
        "--debug", default=False, type=str2bool, help="accepted for compatibility; unused"
    )
    parser.add_argument(
        "--amp",
        default="off",
        choices=AMP_MODES,
        help="mixed precision of the network forward: off = the published float32 path; "
        "bf16 (CPU or CUDA) or fp16 (CUDA only) run the forward under autocast, "
        "softmax and averaging stay float32; auto = bf16 on CUDA if supported, else "
        "fp16; off on the CPU",
    )
    parser.add_argument(
        "--scales",
        default=",".join(map(str, SCALES)),
        type=parse_scales,
        help="comma-separated test-time scales, each with its flip; the first fixes the "
        "reference size (the default is the published set)",
    )
    parser.add_argument(
        "--seed_format",
        default="uint16",
        choices=SEED_FORMATS,
        help="float32: the authors' seed file (their scripts read it); uint16 / uint8: the planes "
        "rounded to multiples of 1/65535 / 1/255 and deflated, about 12x / 40-70x smaller, read "
        "by every script of this project (docs/formats.md#seed-files says what each changes)",
    )
    add_image_limit_arg(parser)
    parser.add_argument(
        "--max_memory_gib",
        default=32.0,
        type=float,
        help="an image whose estimated inference memory at the largest scale exceeds this is "
        "skipped and listed at the end (the estimate is rough: ~1 KiB per scaled pixel)",
    )
    add_overwrite_arg(parser, "seed files")
    return parser


def parse_scales(text):
    """Comma-separated test-time scales: finite, positive and at most MAX_SCALE."""
    try:
        scales = tuple(float(s) for s in str(text).split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    # `not 0 < s <= MAX_SCALE` is also true for NaN; inf fails the upper bound
    if not scales or any(not 0.0 < s <= MAX_SCALE for s in scales):
        raise argparse.ArgumentTypeError(
            f"scales must be finite numbers in (0, {MAX_SCALE:g}], got {text!r} (a scale multiplies both "
            f"image sides: {MAX_SCALE:g} already means {MAX_SCALE**2:g}x the pixels and memory)"
        )
    return scales


parse_scales.list_of = float  # tools/flag_ranges.py bounds the count (RANGES and LIST_LENGTHS "scales")


def weights_path(args):
    """The checkpoint an inference run loads: --weights, else models/{tag}/{strategy}.pth."""
    return args.weights or model_path(args.pred_dir, args.tag, args.strategy)


def recorded_args(weights):
    """(path, args) of the config.json that the training run wrote beside `weights`; (None, {})
    when there is none (released or foreign weights)."""
    config = os.path.join(os.path.dirname(os.path.abspath(weights)), "config.json")
    if not os.path.isfile(config):
        return None, {}
    recorded = read_json(config).get("args")
    return config, recorded if isinstance(recorded, dict) else {}


def resolve_network_args(args, weights, defaults, flags=None):
    """Fill the flags that shape the network (`defaults`: {name: value when nothing says}) from the
    training run's record beside `weights`: a flag left out takes the recorded value, else its
    default; a flag given with another value than the record is refused (UsageError, exit 2,
    naming both), since the weights would load (a stride changes dilations, not shapes) and give
    other seeds without a word. `flags`: {name: the flag as the user writes it}. Returns the
    config path read, or None."""
    config, recorded = recorded_args(weights)
    flags = flags or {}
    used = []
    for name, default in defaults.items():
        given, saved = getattr(args, name), recorded.get(name)
        if given is not None and saved is not None and given != saved:
            flag = flags.get(name, "--" + name)
            raise UsageError(
                f"{flag} {given} contradicts the training record {config} ({name}: {saved}); "
                f"leave {flag} out to use the recorded value, or pass the weights of another run"
            )
        if given is None:
            setattr(args, name, saved if saved is not None else default)
            used.append(f"{name} {getattr(args, name)}" + (" (recorded)" if saved is not None else " (default)"))
    if used:
        print(f"network: {', '.join(used)}" + (f" from {config}" if config else " (no config.json beside the weights)"))
    return config


class AutocastForward(torch.nn.Module):
    """Runs the wrapped network under torch.autocast(device_type, dtype) and returns its outputs
    (a tensor or a dict of tensors) as float32, so everything after the forward (resizing,
    softmax, averaging over scales and flips) is computed in float32 as in the fp32 path."""

    def __init__(self, network, device_type, dtype):
        super().__init__()
        self.network, self.device_type, self.dtype = network, device_type, dtype

    def forward(self, x):
        with torch.autocast(self.device_type, dtype=self.dtype):
            out = self.network(x)
        if isinstance(out, dict):
            return {k: v.float() for k, v in out.items()}
        return out.float()


def amp_mode(device, mode):
    """--amp resolved for `device` ("off", "bf16" or "fp16"); fp16 is refused on the CPU
    (UsageError): CPU autocast is meant for bf16, and fp16 there is slow and untested."""
    if mode == "auto":
        mode = "off" if device.type != "cuda" else "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if mode not in ("off", *AMP_MODES):
        raise UsageError(f"unknown --amp mode {mode!r}; choose one of {AMP_MODES}")
    if mode == "fp16" and device.type != "cuda":
        raise UsageError("--amp fp16 needs a CUDA device; use --amp bf16 or off on the CPU")
    return mode


def with_amp(model, device, mode):
    """`model` unchanged for --amp off, else wrapped in AutocastForward (amp_mode's checks)."""
    mode = amp_mode(device, mode)
    if mode == "off":
        return model
    return AutocastForward(model, device.type, torch.bfloat16 if mode == "bf16" else torch.float16)


def image_order(layout, args):
    """Image ids in processing order: sorted, optionally one-tag only, reversed or shuffled."""
    ids = list(layout.ids)
    if args.single:
        ids = [i for i in ids if len(layout.read_tags(i)) == 1]
    if args.reverse:
        ids.reverse()
    if args.shuffle:
        random.Random(0).shuffle(ids)
    return ids


def scale_problem(height, width, scales, num_classes, max_gib):
    """None when an (height, width) image can run at `scales`, else the reason to skip it.

    Too small: a scale that floors a side to 0 pixels (e.g. a 1-pixel-high image at 0.5).
    Too large: the estimated memory of the largest pass (PASS_BYTES_PER_PIXEL per scaled pixel)
    plus the float32 averages at full size ((C+1) planes, three copies) exceeds `max_gib`.
    """
    for scale in scales:
        if min(scaled_size(height, width, scale)) < 1:
            return (
                f"image of {width}x{height} pixels is too small for scale {scale:g} (a side becomes 0 "
                "pixels); drop that scale with --scales"
            )
    largest = max(scales)
    h, w = scaled_size(height, width, largest)
    estimate = h * w * PASS_BYTES_PER_PIXEL + 3 * 4 * num_classes * height * width
    if estimate > max_gib * 2**30:
        return (
            f"image of {width}x{height} pixels would need about {estimate / 2**30:.1f} GiB at scale "
            f"{largest:g}, over --max_memory_gib {max_gib:g}; skipped"
        )
    return None


class _Images(torch.utils.data.Dataset):
    """Reads images in DataLoader workers; a bad image is returned as its error, not raised.
    `check(height, width)` returns a reason to skip an image (size guards) or None."""

    def __init__(self, layout, ids, need_tags, check=None):
        self.layout, self.ids, self.need_tags, self.check = layout, ids, need_tags, check

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, index):
        image_id = self.ids[index]
        try:
            image = self.layout.read_image(image_id)
            problem = self.check(*image.shape[:2]) if self.check else None
            if problem:
                return image_id, None, None, f"{self.layout.image_path(image_id)}: {problem}"
            tags = self.layout.read_tags(image_id) if self.need_tags else []
            return image_id, normalize_image(image), tags, None
        except DatasetError as e:
            return image_id, None, None, str(e)


def inference_settings(args, kind, weights, same, interpolation, class_fn):
    """What shapes the seeds of a run (recorded in predictions/{tag}/{domain}.settings.json):
    the weights' content (sha256; their path is recorded, not compared), the network and every
    flag that changes a seed value. Order flags (--reverse, --shuffle, --single) are left out."""
    settings = {
        "kind": kind,
        "weights": file_fingerprint(weights),
        "dataset": args.dataset,
        "domain": args.domain,
        "backbone": args.backbone,
        "scales": list(args.scales),
        "amp": getattr(args, "amp", "off"),
        "same": same,
        "interpolation": interpolation,
    }
    if (
        getattr(args, "seed_format", "float32") != "float32"
    ):  # recorded when not the authors' (older records stay valid)
        settings["seed_format"] = args.seed_format
    if kind != "seg":
        settings.update(conf_th=args.conf_th, class_fn=class_fn)
    for name in ("decoder", "output_stride"):
        if hasattr(args, name):
            settings[name] = getattr(args, name)
    return settings


@torch.no_grad()
def run_inference(args, network, kind, same=True, interpolation="bilinear", class_fn="sigmoid"):
    """The loop of both inference scripts: one seed file per image, skipping finished ones.

    Spread over processes, one per device (tools/shards.py): under torchrun each rank infers its
    share of the images on its own device; without torchrun, several CUDA ids in --gpus start one
    process per GPU. The folder is claimed once (rank 0 or this process) before any share is
    written. Returns a summary dict (every share added up); images that could not be processed are
    skipped, listed at the end and returned under "failed" (cli then exits 1).
    """
    info = load_dataset_info(args.dataset)
    layout = SeedLayout(args.root_dir, args.domain, info, max_pixels=getattr(args, "max_image_pixels", None))
    use_tags = kind != "seg" and args.conf_th == -1
    if use_tags and not layout.has_xml:
        raise DatasetError(
            f"{layout.split_dir}: split {args.domain!r} has no xml tags; --conf_th -1 uses "
            "ground-truth tags, so give a confidence threshold instead (e.g. --conf_th 0.34)"
        )
    shard = Shard.from_environment()
    device, device_ids = (shard.device, []) if shard.world > 1 else resolve_devices(args.gpus)
    weights = weights_path(args)
    if not os.path.isfile(weights):
        raise CheckpointError(
            f"{weights}: checkpoint not found (train a model with this --tag, or put "
            "the released weights there, or pass --weights PATH)"
        )
    amp_mode(device if len(device_ids) <= 1 else torch.device("cuda", device_ids[0]), getattr(args, "amp", "off"))
    # loaded once, here (a wrong file stops the run before its folder is claimed); spawned shard
    # processes receive it loaded. Several devices take one process each, not DataParallel: a batch
    # of one image and its flip would keep at most two GPUs busy.
    load_checkpoint(network, weights)
    out_dir = predictions_dir(args.pred_dir, args.tag, args.domain)
    if shard.is_main:  # once, before any share is written; torchrun's other ranks share its lock
        claim_output_folder(
            out_dir,
            inference_settings(args, kind, weights, same, interpolation, class_fn),
            ".pkl",
            overwrite=getattr(args, "overwrite", False),
            root=args.pred_dir,
        )
    shard.barrier()
    ids = image_order(layout, args)
    job = (args, network, kind, same, interpolation, class_fn, use_tags, layout, ids, out_dir)
    amp = f", amp {args.amp}" if getattr(args, "amp", "off") != "off" else ""
    if shard.world == 1 and len(device_ids) > 1:  # one process per listed GPU
        print(
            f"{kind} inference: {len(ids)} images of {args.domain}, weights {weights}, "
            f"{len(device_ids)} processes on cuda:{','.join(map(str, device_ids))}{amp}"
        )
        shares = run_spawned(_infer_share, [torch.device("cuda", i) for i in device_ids], *job)
    else:
        where = f"rank {shard.rank} of {shard.world}, " if shard.world > 1 else ""
        if shard.is_main:
            print(
                f"{kind} inference: {len(ids)} images of {args.domain}, weights {weights}, {where}device {device}{amp}"
            )
        shares = shard.gather(_infer_share(Shard(shard.rank, shard.world, device), *job))
        shard.close()
    failed = [f for share in shares for f in share["failed"]]
    summary = {
        "images": len(ids),
        "written": sum(s["written"] for s in shares),
        "skipped_existing": sum(s["skipped_existing"] for s in shares),
        "failed": failed,
        "output_dir": out_dir,
        "shares": [{k: s[k] for k in ("rank", "images", "written")} for s in shares],
    }
    if kind != "seg" and not use_tags:  # classes from the scores: how many images kept none
        summary["no_class"] = sum(s["no_class"] for s in shares)
    if shard.is_main:
        print(
            f"wrote {summary['written']} seed files to {out_dir} "
            f"({summary['skipped_existing']} already present, {len(failed)} skipped)"
        )
        if "no_class" in summary:
            print(
                f"{summary['no_class']} of the {summary['written']} images kept no class at --conf_th "
                f"{args.conf_th} (their seeds are all background)"
            )
            if summary["no_class"] > summary["written"] / 2:
                print(
                    f"warning: most images kept no class: the classifier scores nothing above --conf_th "
                    f"{args.conf_th}; the training run may have collapsed (see the warnings in its log) or the "
                    f"threshold is too high for it"
                )
        list_skipped(failed)
    return summary


@torch.no_grad()
def _infer_share(shard, args, network, kind, same, interpolation, class_fn, use_tags, layout, ids, out_dir):
    """The images of `shard` (its share of `ids`, those without a seed file yet) on its device:
    {"rank", "images", "written", "skipped_existing", "failed", "seconds"}."""
    info = layout.info
    device = shard.device
    mine = shard.share(ids)
    todo = [i for i in mine if not os.path.isfile(os.path.join(out_dir, i + ".pkl"))]
    if shard.world > 1:
        print(
            f"rank {shard.rank} of {shard.world}: {len(mine)} images ({len(mine) - len(todo)} done) on {device}",
            flush=True,
        )
    model = with_amp(network.to(device).eval(), device, getattr(args, "amp", "off"))
    limit = getattr(args, "max_memory_gib", None)
    check = (
        None
        if limit is None
        else partial(scale_problem, scales=args.scales, num_classes=info.num_classes, max_gib=limit)
    )
    workers = max(0, min(args.num_workers, len(todo)))
    main_threads(getattr(args, "threads", None), workers, verbose=shard.is_main)
    loader = torch.utils.data.DataLoader(
        _Images(layout, todo, use_tags, check),
        batch_size=None,
        shuffle=False,
        num_workers=workers,
        worker_init_fn=worker_threads,
    )
    failed, start, no_class = [], time.perf_counter(), 0
    for image_id, image, tags, error in progress(
        loader, total=len(todo), desc="Inference", dynamic_ncols=True, disable=not shard.is_main
    ):
        if error is not None:
            failed.append({"id": image_id, "problem": error})
            continue
        probs, scores = multiscale_inference(
            model,
            image.to(device),
            kind,
            scales=args.scales,
            interpolation=interpolation,
            same=same,
            with_scores=kind == "rsepm" and not use_tags,
            class_fn=class_fn,
        )
        if kind != "seg":
            classes = tags if use_tags else (torch.nonzero(scores >= args.conf_th).flatten() + 1).tolist()
            no_class += not classes
            keys, seed = rsepm_seed(probs, classes)
        else:
            keys, seed = seg_seed(probs)
        try:
            save_seed(
                safe_output_path(out_dir, image_id + ".pkl"),
                keys,
                seed,
                "seg" if kind == "seg" else "rsepm",
                getattr(args, "seed_format", "float32"),
            )
        except OutputError as e:  # one file the system refuses is skipped; a full disk stops the run
            if item_write_problem(e) is None:
                raise
            failed.append({"id": image_id, "problem": item_write_problem(e)})
    return {
        "rank": shard.rank,
        "images": len(mine),
        "written": len(todo) - len(failed),
        "skipped_existing": len(mine) - len(todo),
        "failed": failed,
        "no_class": no_class,
        "seconds": time.perf_counter() - start,
    }  # its loop, without the process's start-up
