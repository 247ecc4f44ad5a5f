"""`convert_seed_to_pseudo_masks.py --mode rw`: seeds -> pseudo masks by IRN's random walk
(docs/method.md#random-walk).

For each seed file: the boundary map of its image from the affinity network of --affinity_tag
(AffinityNet.predict_boundary: the image and its mirror zero-padded to the network's training crop,
at least that square as IRN pads them, in one forward, stride 4, cut back to the image's cells), then
core.randomwalk.random_walk_planes (pairs within --rw_radius, affinities ** --beta,
2 ** --exp_times steps, background score --sem_seg_bg_thres), with --rw_crf true the dense CRF of
the CRF mode on the walked scores, and a palette PNG in
pseudo-labels/{tag}@rw/{domain}/ID.png, beside the CRF masks of the same seeds.

Devices: with CUDA (--gpus) the images run one after another in this process on the first
listed GPU; on the CPU, --num_workers processes each load the network once and share the
cores (threads per worker: cores / workers, at most this process's torch threads). Writes, skip-if-done and the per-image problem
list are those of the CRF mode: convert_one returns (id, None) or (id, problem).
"""
import multiprocessing
import os

import torch

from core.affinity import PAD_SIZE, AffinityNet
from core.checkpoint import load_checkpoint
from core.datasets import load_dataset_info, normalize_image
from core.errors import DatasetError, FormatError, MissingFileError, UsageError
from core.io import claim_output_folder, read_json, save_mask, settings_path
from core.crf import CRF_DEFAULTS, dense_crf
from core.randomwalk import (DEFAULT_BETA, DEFAULT_BG_SCORE, DEFAULT_EXP_TIMES, DEFAULT_RADIUS, random_walk_planes,
                             walk_keys)
from core.resnet import ARCHITECTURES
from core.safety import remove_stale_temp_files, safe_output_path
from tools.args import resolve_devices, str2bool
from tools.paths import model_dir, model_path, pseudo_labels_dir
from tools.seeds.seed_reading import read_foreground, seed_inputs

RW_SUFFIX = "@rw"
_JOB = None  # set in each worker by _init_worker: the job dict plus the loaded network


def add_rw_args(parser):
    """The --mode rw flags (IRN's inference defaults)."""
    group = parser.add_argument_group("random walk (--mode rw)")
    group.add_argument("--affinity_tag", default=None, help="affinity network models/{affinity_tag}/last.pth "
                                                            "(train_affinity.py)")
    group.add_argument("--affinity_weights", default="", help="weights file instead of the one of --affinity_tag")
    group.add_argument("--affinity_backbone", default="",
                       help="backbone of the affinity network; empty: from its config.json, else resnet50")
    group.add_argument("--rw_radius", default=DEFAULT_RADIUS, type=int, help="pairs of stride-4 cells within this")
    group.add_argument("--beta", default=DEFAULT_BETA, type=float, help="affinity exponent")
    group.add_argument("--exp_times", default=DEFAULT_EXP_TIMES, type=int,
                       help="the walk applies the transition matrix 2 ** exp_times times")
    group.add_argument("--sem_seg_bg_thres", default=DEFAULT_BG_SCORE, type=float,
                       help="constant background score against the walked, max-normalised seeds")
    group.add_argument("--rw_crf", default=False, type=str2bool,
                       help="refine the walked scores (background plane first) with the dense CRF of --mode crf "
                            "before the argmax; not part of IRN (false = its masks as they are)")


def _training_args(args):
    """The `args` that train_affinity.py recorded for --affinity_tag; {} when there are none."""
    config = os.path.join(model_dir(args.pred_dir, args.affinity_tag or ""), "config.json")
    if args.affinity_tag and os.path.isfile(config):
        return read_json(config).get("args", {}) or {}
    return {}


def affinity_backbone(args):
    if args.affinity_backbone:
        return args.affinity_backbone
    backbone = _training_args(args).get("backbone")
    return backbone if backbone in ARCHITECTURES else "resnet50"


def affinity_canvas(args):
    """Side of the square the image is padded to before the boundary network: the crop it was
    trained on (config.json), else IRN's 512."""
    crop = _training_args(args).get("crop_size")
    return crop if isinstance(crop, int) and crop > 0 else PAD_SIZE


def prepare(args):
    """Check the inputs and list the work: (job, pending ids, number already present)."""
    if not args.affinity_tag and not args.affinity_weights:
        raise UsageError("--mode rw needs --affinity_tag (or --affinity_weights): the network of train_affinity.py")
    for name in ("rw_radius", "exp_times"):
        if getattr(args, name) < (2 if name == "rw_radius" else 0):
            raise UsageError(f"--{name} {getattr(args, name)} is too small")
    if args.beta <= 0 or not 0 <= args.sem_seg_bg_thres <= 1:
        raise UsageError(f"need --beta > 0 and --sem_seg_bg_thres in [0, 1], got {args.beta}, {args.sem_seg_bg_thres}")
    weights = args.affinity_weights or model_path(args.pred_dir, args.affinity_tag)
    if not os.path.isfile(weights):
        raise MissingFileError(f"{weights}: affinity weights not found (run train_affinity.py --tag "
                               f"{args.affinity_tag} first, or pass --affinity_weights)")
    info = load_dataset_info(args.dataset)
    layout, seed_dir, ids = seed_inputs(args, info)
    mask_dir = pseudo_labels_dir(args.pred_dir, args.tag + RW_SUFFIX, args.domain)
    remove_stale_temp_files(mask_dir)
    claim_rw_masks(args, seed_dir, mask_dir, weights)
    pending = [i for i in ids if not os.path.isfile(os.path.join(mask_dir, i + ".png"))]
    device, _ = resolve_devices(args.gpus)
    job = dict(layout=layout, seed_dir=seed_dir, mask_dir=mask_dir, tag=args.tag, palette=info.palette,
               num_classes=info.num_classes, weights=weights, backbone=affinity_backbone(args),
               pad_to=affinity_canvas(args),
               device=str(device), radius=args.rw_radius, beta=args.beta, exp_times=args.exp_times,
               bg_score=args.sem_seg_bg_thres, crf=args.rw_crf, max_seed_bytes=args.max_seed_bytes)
    load_network(job)  # a wrong weights file stops the run here, before any worker starts
    return job, pending, len(ids) - len(pending)


def claim_rw_masks(args, seed_dir, mask_dir, weights):
    """Record the walk's settings beside its masks and refuse to add to masks made otherwise (as the
    CRF mode does: core.io.claim_output_folder; --overwrite true starts the folder afresh)."""
    seed_record = settings_path(seed_dir)
    stat = os.stat(weights)
    settings = {"seed_dir": os.path.abspath(seed_dir),
                "seed_settings": read_json(seed_record) if os.path.isfile(seed_record) else None,
                "dataset": args.dataset, "mode": "rw", "affinity_weights": {"path": os.path.abspath(weights),
                                                                            "size": stat.st_size},
                "pad_to": affinity_canvas(args), "radius": args.rw_radius, "beta": args.beta,
                "exp_times": args.exp_times, "bg_score": args.sem_seg_bg_thres, "crf": CRF_DEFAULTS if args.rw_crf else None}
    os.makedirs(mask_dir, exist_ok=True)
    deleted = claim_output_folder(mask_dir, settings, ".png", overwrite=args.overwrite, ignore=("path", "seed_dir"))
    if deleted:
        print(f"--overwrite: deleted {deleted} masks of {mask_dir}")


def load_network(job):
    """The affinity network of `job`, strictly loaded, in eval mode on job['device']."""
    network = AffinityNet(job["backbone"], pretrained=None)
    load_checkpoint(network, job["weights"])
    return network.to(job["device"]).eval()


def _init_worker(job, threads=None):
    global _JOB
    if threads:
        torch.set_num_threads(threads)
    _JOB = dict(job, network=load_network(job))


@torch.no_grad()
def convert_one(image_id):
    """Random-walk mask of one image. Returns (image_id, None) when written, (image_id, problem)."""
    job = _JOB
    seed_path = os.path.join(job["seed_dir"], image_id + ".pkl")
    if not os.path.isfile(seed_path):
        return image_id, f"{seed_path}: seed file not found"
    try:
        planes, keys, image = read_foreground(seed_path, job["tag"], job["layout"], image_id, job["num_classes"],
                                              job["max_seed_bytes"])
    except (FormatError, DatasetError, ValueError) as e:
        return image_id, str(e)
    device = job["device"]
    edge = job["network"].predict_boundary(normalize_image(image)[None].to(device), job["pad_to"])[0]
    labels = walk_keys(keys, len(keys))
    planes = random_walk_planes(torch.from_numpy(planes).to(device), edge.float(), job["radius"], job["beta"],
                                job["exp_times"], job["bg_score"]).cpu()
    if job["crf"] and len(labels) > 1:  # one label needs no inference
        planes = torch.from_numpy(dense_crf(image, planes.numpy(), **CRF_DEFAULTS))
    mask = labels[planes.argmax(dim=0)]
    save_mask(safe_output_path(job["mask_dir"], image_id + ".png"), mask.cpu().numpy(), job["palette"])
    return image_id, None


def run_all(job, ids, num_workers):
    """Yield convert_one results for `ids`: in this process on a GPU (or with one worker), else
    over min(num_workers, cores) CPU processes."""
    cores = os.cpu_count() or 1
    workers = min(max(1, num_workers), len(ids), cores)
    if job["device"] != "cpu" or workers <= 1:
        _init_worker(job)
        yield from map(convert_one, ids)
        return
    # each worker takes its share of the cores (never more threads than this process may use)
    threads = max(1, min(torch.get_num_threads(), cores // workers))
    with multiprocessing.Pool(workers, initializer=_init_worker, initargs=(job, threads)) as pool:
        yield from pool.imap_unordered(convert_one, ids, chunksize=1)
