"""Train the affinity (class-boundary) network of the random walk from RS+EPM seeds (docs/method.md#random-walk).

    python3 train_affinity.py --root_dir ../VOC2012/ --dataset VOC --domain train_aug \
        --seed_tag "ResNet50@VOC@RS+EPM@ours" --tag "AffinityNet@VOC@ours"
    torchrun --nproc_per_node 4 train_affinity.py ...        (DistributedDataParallel)

Reads the seed files predictions/{seed_tag}/train/ (infer_rsepm.py --domain train_aug --conf_th -1:
seeds of the ground-truth tags) and first turns each into a map of its confident regions, cached
as ir-labels/{seed_tag}/train/ID.png (made once, with --num_workers processes; delete the folder
to remake it with other thresholds). Pairs of stride-4 cells within --rw_radius give the relation
labels; the loss is IRN's boundary loss, balanced over background, foreground and negative pairs.
Only the edge branch learns: the backbone is frozen, BatchNorm included. Writes
models/{tag}/last.pth in the authors' AffinityNet key layout (what
`convert_seed_to_pseudo_masks.py --mode rw --affinity_tag TAG` reads), config.json, resume.pth, logs/.
Defaults are IRN's (ResNet-50 from ImageNet, crop 512, batch 32, 3 epochs, lr 0.1, wd 1e-4).
"""

import os
from functools import partial

import torch

from core.affinity import AffinityNet
from core.dataset_layout import dataset_name
from core.errors import MissingFileError, UsageError
from core.randomwalk import PairGrid
from core.relations import BG_THRESHOLD, FG_THRESHOLD, TRAIN_RADIUS, boundary_loss
from core.resnet import load_backbone_state
from core.train_datasets import RelationLabelDataset
from core.weights import read_state_dict
from tools.args import add_overwrite_arg, cli, deprecated_alias, str2bool
from tools.engine import amp, data_loading, distributed, panels, script_parts, trainer
from tools.paths import predictions_dir
from tools.pool import list_skipped
from tools.seeds.relation_cache import STRIDE, AffinityTransform, claim_ir_labels, ir_labels_dir, make_ir_labels
from tools.shards import Shard

# IRN's optimiser: one group (the edge branch) at the base lr, weight decay on all of it, no momentum
OPTIMISER_HELP = {
    "lr": "learning rate of the edge branch (the backbone is frozen)",
    "wd": "weight decay on every weight of the edge branch, biases and BN included (IRN)",
    "nesterov": "Nesterov momentum (needs --momentum above 0)",
}
# our own earlier names of flags renamed so that one name has one meaning across the scripts
RENAMED = {"--label_tag": "--seed_tag", "--radius": "--rw_radius", "--fg_th": "--ir_fg_th", "--bg_th": "--ir_bg_th"}


def get_args_parser():
    parser = script_parts.training_parser(__doc__.splitlines()[0], backbone="resnet50")
    # required, checked by prepare_args: argparse would refuse a run that names it by its old name
    parser.add_argument(
        "--seed_tag",
        default=None,
        help="required: seed files from predictions/{seed_tag}/{domain}/ (train/ for --domain "
        "train_aug: RS+EPM seeds of train_aug)",
    )
    parser.add_argument(
        "--allow_missing",
        default=False,
        type=str2bool,
        help="skip (and count) images whose seed file is missing or unreadable",
    )
    # IRN's augmentation (rescale by a factor, --min_scale/--max_scale; no colour jitter) and a
    # frozen backbone (BatchNorm included: no SyncBN): the image flags of the other scripts do not apply
    script_parts.add_training_args(
        parser,
        lr=0.1,
        weight_decay=1e-4,
        max_epoch=3,
        batch_size=32,
        optimiser_help=OPTIMISER_HELP,
        image_args=False,
        panels_from=script_parts.PANELS_FROM["affinity"],
    )
    parser.set_defaults(nesterov=False)
    parser.add_argument("--momentum", default=0.0, type=float, help="SGD momentum (IRN's optimiser passes none)")
    parser.add_argument("--min_scale", default=0.5, type=float, help="smallest random rescale factor")
    parser.add_argument("--max_scale", default=1.5, type=float, help="largest random rescale factor")
    parser.add_argument(
        "--rw_radius", default=TRAIN_RADIUS, type=int, help="pairs of stride-4 cells closer than this are trained"
    )
    parser.add_argument(
        "--ir_fg_th",
        default=FG_THRESHOLD,
        type=float,
        help="confident foreground: a class seed above this (then the label CRF)",
    )
    parser.add_argument(
        "--ir_bg_th",
        default=BG_THRESHOLD,
        type=float,
        help="confident background: every class seed at most this (then the label CRF)",
    )
    parser.add_argument(
        "--ir_crf", default=True, type=str2bool, help="smooth both confident-region maps with the label CRF (IRN)"
    )
    add_overwrite_arg(parser, "relation-label maps (ir-labels/{seed_tag}/)")
    for old, new in RENAMED.items():
        deprecated_alias(parser, old, new)
    return parser


def prepare_args(args):
    """Refuse settings that cannot run (UsageError) and derive the tag when --tag is empty."""
    if args.seed_tag is None:
        raise UsageError("the following arguments are required: --seed_tag")
    script_parts.check_training_args(args)
    if args.min_scale > args.max_scale:
        raise UsageError(f"need --min_scale <= --max_scale, got {args.min_scale}, {args.max_scale}")
    if args.rw_radius > args.crop_size // STRIDE // 2:
        raise UsageError(
            f"--rw_radius {args.rw_radius}: at most {args.crop_size // STRIDE // 2} for --crop_size {args.crop_size}"
        )
    if args.ir_bg_th > args.ir_fg_th:
        raise UsageError(f"need --ir_bg_th <= --ir_fg_th, got {args.ir_bg_th}, {args.ir_fg_th}")
    if args.nesterov and args.momentum <= 0:
        raise UsageError("--nesterov true needs --momentum above 0")
    args.tag = args.tag or derive_tag(args)
    return args


def derive_tag(args):
    """e.g. ResNet50@VOC@AffinityNet@labels=<seed_tag>@r10@e3-b32-c512-s0."""
    return (
        f"{script_parts.tag_network(args)}@{dataset_name(args.dataset)}@AffinityNet@labels={args.seed_tag}"
        f"@r{args.rw_radius}@{script_parts.tag_schedule(args)}"
    )


def build_affinity_net(backbone, pretrained):
    """AffinityNet with its frozen backbone from 'imagenet', 'none', a torchvision ResNet file, or
    a checkpoint of this project's networks (its `model.*` backbone, e.g. an RS+EPM last.pth)."""
    if pretrained.lower() in ("imagenet", "none"):
        return AffinityNet(backbone, pretrained=pretrained)
    network = AffinityNet(backbone, pretrained=None)
    state = read_state_dict(pretrained)
    if any(k.startswith("model.") for k in state):
        state = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    load_backbone_state(network.model, state, source=pretrained)
    return network


def affinity_losses(model, images, labels, grid):
    """Boundary logits -> (float32) pair affinities -> boundary_loss dict; labels (B, h, w) int64."""
    logits = model(images)
    edge = torch.sigmoid(logits.float())  # the log terms need float32 whatever autocast did
    bg_pos, fg_pos, neg = grid.pair_labels(labels)
    return boundary_loss(grid.affinity(edge), bg_pos, fg_pos, neg), (bg_pos, fg_pos, neg)


def prepare_labels(args, ctx, layout, info):
    """Make the missing relation-label maps, each DDP rank its share of the images (a barrier
    that waited for rank 0 alone could time out on a large set). Returns their folder; images
    whose map could not be made are listed here and refused (or skipped) by RelationLabelDataset."""
    seed_dir = predictions_dir(args.pred_dir, args.seed_tag, args.domain, "--seed_tag")
    label_dir = ir_labels_dir(args.pred_dir, args.seed_tag, args.domain)
    if not os.path.isdir(seed_dir):
        raise MissingFileError(
            f"{seed_dir}: seed folder not found (run infer_rsepm.py --domain "
            f"{args.domain} --conf_th -1 --tag {args.seed_tag} first)"
        )
    # rank 0 takes the folder's writer lock and checks its record first; then every other rank
    # checks it too (a mismatch stops all of them), and all fill the folder
    claim = partial(
        claim_ir_labels,
        layout,
        seed_dir,
        label_dir,
        args.ir_fg_th,
        args.ir_bg_th,
        args.ir_crf,
        args.overwrite,
        root=args.pred_dir,
    )
    if ctx.is_main:
        claim()
    if ctx.distributed:
        torch.distributed.barrier()
        if not ctx.is_main:
            claim()
        torch.distributed.barrier()
    summary = make_ir_labels(
        layout,
        seed_dir,
        label_dir,
        args.seed_tag,
        info.palette,
        args.ir_fg_th,
        args.ir_bg_th,
        args.ir_crf,
        args.num_workers,
        progress=ctx.is_main,
        ids=Shard(ctx.rank, ctx.world_size).share(layout.ids),
        claim=False,
    )
    list_skipped(summary["failed"])
    if ctx.distributed:
        torch.distributed.barrier()
    if ctx.is_main:
        print(
            f"{label_dir}: {summary['written']} relation-label maps made, {summary['existing']} already "
            f"present, {len(summary['failed'])} failed" + (" (rank 0's share)" if ctx.distributed else "")
        )
    return label_dir


def main(args):
    prepare_args(args)
    ctx, info, layout = script_parts.start_run(args)
    label_dir = prepare_labels(args, ctx, layout, info)
    dataset = RelationLabelDataset(
        layout,
        label_dir,
        AffinityTransform(args.crop_size, args.min_scale, args.max_scale),
        seed=args.seed,
        allow_missing=args.allow_missing,
        max_image_pixels=args.max_image_pixels,
    )
    loader = data_loading.build_loader(dataset, ctx, args.batch_size, args.num_workers, args.seed)

    network = build_affinity_net(args.backbone, args.pretrained)
    model = distributed.wrap_model(network, ctx)
    # IRN: one group, the edge branch at the base lr, weight decay on all of it
    optimizer = torch.optim.SGD(
        [{"params": network.trainable_parameters(), "name": "edge"}],
        lr=args.lr,
        momentum=args.momentum,
        nesterov=args.nesterov,
        weight_decay=args.wd,
    )
    grid = PairGrid(args.rw_radius, (args.crop_size // STRIDE,) * 2)
    with trainer.TrainingRun(
        args,
        ctx,
        network,
        optimizer,
        loader,
        desc="train_affinity",
        label_dir=label_dir,
        train_images=len(dataset),
        dataset_summary=dataset.summary(),
    ) as run:
        run.logger.info(dataset.summary())
        drawing = panels.AffinityPanels(
            network,
            script_parts.panel_picks(args, ctx, layout, dataset.ids),
            info,
            ctx.device,
            label_path=dataset.label_path,
        )
        for epoch in run.epochs():
            model.train()
            for batch in loader:
                images = batch["image"].to(ctx.device, non_blocking=True)
                labels = batch["labels"].to(ctx.device, non_blocking=True)
                with amp.autocast_context(ctx.device, run.amp_dtype):
                    losses, (bg_pos, fg_pos, neg) = affinity_losses(model, images, labels, grid)
                run.step(losses["total"])
                # fractions of all pairs, which show what the seeds give; summed on the device with
                # the losses by record, read back only at log lines
                pairs = {"pairs_bg": bg_pos.mean(), "pairs_fg": fg_pos.mean(), "pairs_neg": neg.mean()}
                run.record(
                    epoch,
                    {**losses, **pairs},
                    images=images.shape[0],
                    progress_loss=losses["total"],
                    skipped=batch.get("skipped"),
                )
            run.draw_panels(drawing.draw)  # no validation here: after every epoch
        return run.finish()


if __name__ == "__main__":
    cli(main, get_args_parser())
