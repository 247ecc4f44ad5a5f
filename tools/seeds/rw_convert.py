"""`convert_seed_to_pseudo_masks.py --mode rw`: seeds -> pseudo masks by IRN's random walk
(docs/method.md#random-walk).

For each seed file: the boundary map of its image from the affinity network of --affinity_tag
(AffinityNet.predict_boundary: the image and its mirror zero-padded to a square of the network's own
training crop, read from its config.json, as IRN pads to its training crop (512 for foreign
weights), in one forward, stride 4, cut back to the image's cells), then
core.randomwalk.random_walk_planes (pairs within --rw_radius, affinities ** --beta,
2 ** --exp_times steps, background score --sem_seg_bg_thres), with --rw_crf true the dense CRF of
the CRF mode on the walked scores, and a palette PNG in
pseudo-labels/{tag}@rw/{domain}/ID.png, beside the CRF masks of the same seeds.

Devices: with CUDA, one process per GPU of --gpus (or per torchrun rank) takes its share of the
images (tools/shards.py), one after another; on the CPU, --num_workers processes (tools.pool, one
thread each) each load the network once. Writes, skip-if-done, skipped images and the output claim are those of the CRF
mode: both are a tools.seeds.seed_jobs.SeedJob.
"""

import os

import torch

from core.affinity import PAD_SIZE, AffinityNet
from core.crf import CRF_DEFAULTS, dense_crf
from core.dataset_layout import load_dataset_info, normalize_image
from core.errors import MissingFileError, UsageError
from core.io import file_fingerprint, read_json
from core.randomwalk import (
    DEFAULT_BETA,
    DEFAULT_BG_SCORE,
    DEFAULT_EXP_TIMES,
    DEFAULT_RADIUS,
    random_walk_planes,
    walk_keys,
)
from core.resnet import ARCHITECTURES
from core.weights import load_checkpoint
from tools.args import resolve_devices, str2bool
from tools.paths import model_dir, model_path, pseudo_labels_dir
from tools.seeds.seed_jobs import SeedJob, claim_from_seeds, foreground, seed_inputs

RW_SUFFIX = "@rw"


def add_rw_args(parser):
    """The --mode rw flags (IRN's inference defaults)."""
    group = parser.add_argument_group("random walk (--mode rw)")
    group.add_argument(
        "--affinity_tag", default=None, help="affinity network models/{affinity_tag}/last.pth (train_affinity.py)"
    )
    group.add_argument("--affinity_weights", default="", help="weights file instead of the one of --affinity_tag")
    group.add_argument(
        "--affinity_backbone",
        default="",
        help="backbone of the affinity network; empty: from its config.json, else resnet50",
    )
    group.add_argument("--rw_radius", default=DEFAULT_RADIUS, type=int, help="pairs of stride-4 cells within this")
    group.add_argument("--beta", default=DEFAULT_BETA, type=float, help="affinity exponent")
    group.add_argument(
        "--exp_times",
        default=DEFAULT_EXP_TIMES,
        type=int,
        help="the walk applies the transition matrix 2 ** exp_times times",
    )
    group.add_argument(
        "--sem_seg_bg_thres",
        default=DEFAULT_BG_SCORE,
        type=float,
        help="constant background score against the walked, max-normalised seeds",
    )
    group.add_argument(
        "--rw_crf",
        default=False,
        type=str2bool,
        help="refine the walked scores (background plane first) with the dense CRF of --mode crf "
        "before the argmax; not part of IRN (false = its masks as they are)",
    )


def _training_args(args):
    """The `args` that train_affinity.py recorded beside the affinity weights (config.json of
    --affinity_tag, or the one beside --affinity_weights); {} when there is none (foreign weights)."""
    if args.affinity_weights:
        config = os.path.join(os.path.dirname(os.path.abspath(args.affinity_weights)), "config.json")
    elif args.affinity_tag:
        config = os.path.join(model_dir(args.pred_dir, args.affinity_tag, "--affinity_tag"), "config.json")
    else:
        return {}
    if os.path.isfile(config):
        recorded = read_json(config).get("args", {})
        return recorded if isinstance(recorded, dict) else {}
    return {}


def affinity_backbone(args):
    if args.affinity_backbone:
        return args.affinity_backbone
    backbone = _training_args(args).get("backbone")
    return backbone if backbone in ARCHITECTURES else "resnet50"


def affinity_canvas(args):
    """Side of the square the image is padded to before the boundary network: the crop the network
    was trained on, read from its config.json, as IRN pads to its own training crop
    (EdgeDisplacement(crop_size=512) after training on 512 crops); 512 when no record says
    (foreign weights). An image larger than the canvas keeps its size (docs/method.md#random-walk)."""
    crop = _training_args(args).get("crop_size")
    return crop if isinstance(crop, int) and not isinstance(crop, bool) and crop > 0 else PAD_SIZE


class RWJob(SeedJob):
    """Boundary map of the affinity network, random walk of the seed, optional CRF, argmax."""

    def __init__(self, *common, weights, backbone, device, pad_to, radius, beta, exp_times, bg_score, crf):
        super().__init__(*common)
        self.weights, self.backbone, self.device = weights, backbone, device
        self.radius, self.beta, self.exp_times, self.bg_score, self.crf = radius, beta, exp_times, bg_score, crf
        self.pad_to = pad_to
        self.network = None

    def setup(self):
        self.network = load_network(self.weights, self.backbone, self.device)

    def __getstate__(self):  # workers load their own network in setup()
        return dict(self.__dict__, network=None)

    def workers(self, num_workers, count):
        return super().workers(num_workers, count) if self.device == "cpu" else 0

    def shard_devices(self):
        """One process per GPU of --gpus (tools.shards.run_spawned); none on the CPU, where
        --num_workers processes share the images."""
        return [torch.device("cuda", i) for i in getattr(self, "device_ids", [])]

    @torch.no_grad()
    def make(self, seed, image, seed_path):
        planes, keys = foreground(seed, image, seed_path, self.num_classes)
        edge = self.network.predict_boundary(normalize_image(image)[None].to(self.device), self.pad_to)[0]
        labels = walk_keys(keys, len(keys))
        planes = random_walk_planes(
            torch.from_numpy(planes).to(self.device),
            edge.float(),
            self.radius,
            self.beta,
            self.exp_times,
            self.bg_score,
        ).cpu()
        if self.crf and len(labels) > 1:  # one label needs no inference
            planes = torch.from_numpy(dense_crf(image, planes.numpy(), **CRF_DEFAULTS))
        return labels[planes.argmax(dim=0)].cpu().numpy()


def prepare(args, claim=True):
    """Check the inputs, claim the output folder (unless another rank of this run did) and list the
    work: (job, ids)."""
    if not args.affinity_tag and not args.affinity_weights:
        raise UsageError("--mode rw needs --affinity_tag (or --affinity_weights): the network of train_affinity.py")
    weights = args.affinity_weights or model_path(args.pred_dir, args.affinity_tag, flag="--affinity_tag")
    if not os.path.isfile(weights):
        raise MissingFileError(
            f"{weights}: affinity weights not found (run train_affinity.py --tag "
            f"{args.affinity_tag} first, or pass --affinity_weights)"
        )
    info = load_dataset_info(args.dataset)
    layout, seed_dir, ids = seed_inputs(args, info)
    device, device_ids = resolve_devices(args.gpus)
    backbone = affinity_backbone(args)
    load_network(weights, backbone, "cpu")  # a wrong weights file stops the run here, before any worker starts
    mask_dir = pseudo_labels_dir(args.pred_dir, args.tag + RW_SUFFIX, args.domain)
    if claim:
        claim_from_seeds(
            mask_dir,
            seed_dir,
            {
                "dataset": args.dataset,
                "mode": "rw",
                "affinity_weights": file_fingerprint(weights),
                "pad_to": affinity_canvas(args),
                "radius": args.rw_radius,
                "beta": args.beta,
                "exp_times": args.exp_times,
                "bg_score": args.sem_seg_bg_thres,
                "crf": CRF_DEFAULTS if args.rw_crf else None,
            },
            args.overwrite,
            root=args.pred_dir,
        )
    job = RWJob(
        layout,
        seed_dir,
        mask_dir,
        args.tag,
        info.palette,
        args.max_seed_bytes,
        weights=weights,
        backbone=backbone,
        device=str(device),
        pad_to=affinity_canvas(args),
        radius=args.rw_radius,
        beta=args.beta,
        exp_times=args.exp_times,
        bg_score=args.sem_seg_bg_thres,
        crf=args.rw_crf,
    )
    job.device_ids = device_ids if device.type == "cuda" else []
    return job, ids


def load_network(weights, backbone, device):
    """The affinity network, strictly loaded, in eval mode on `device`."""
    network = AffinityNet(backbone, pretrained=None)
    load_checkpoint(network, weights)
    return network.to(device).eval()
