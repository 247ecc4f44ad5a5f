"""The command line and the validation that the training scripts (train_rsepm.py, train_seg.py,
train_affinity.py) share.

Owns the common flags (devices, dataset, experiment, --backbone, --pretrained, the optimisation
flags of add_training_args, the --val_* group), the argument checks they all make, the parts of
the derived tag (network name, schedule suffix) and the validation set-up and loop. Each script
keeps only its own flags, its own checks and how it scores a validation image.
"""

import torch

from core.dataset_layout import SeedLayout, load_dataset_info, normalize_image
from core.errors import DatasetError, UsageError
from core.resnet import ARCHITECTURES
from core.transforms import JITTER
from tools.args import (
    AMP_MODES,
    add_dataset_args,
    add_device_args,
    add_experiment_args,
    add_image_limit_arg,
    color_jitter,
    deprecated_alias,
    id_list,
    make_parser,
    positive_int,
    str2bool,
)
from tools.engine import distributed
from tools.pool import main_threads


def training_parser(description, backbone):
    """A parser with the flags every training script has; the script adds its own after these."""
    parser = make_parser(description)
    add_device_args(parser)
    add_dataset_args(parser, domain="train_aug")
    add_experiment_args(parser, tag="")
    parser.add_argument("--backbone", default=backbone, choices=sorted(ARCHITECTURES), help="ResNet backbone")
    parser.add_argument(
        "--pretrained",
        default="imagenet",
        help="backbone initialisation: imagenet (torchvision weights), none, or a PATH",
    )
    return parser


# --help of the optimiser flags of train_rsepm.py and train_seg.py (build_optimizer's groups)
OPTIMISER_HELP = {
    "lr": "backbone learning rate (head: x10)",
    "wd": "weight decay (not on biases/BN)",
    "nesterov": "Nesterov momentum (0.9)",
}
# --help of --vis_images per script: where its panels come from (panel_picks) and
# when they are drawn (panels_due)
PANELS_FROM = {
    "rsepm": "from the validation images (the first --val_images of --val_domain) when --val_every is above 0, "
    "else from the training split (--domain); drawn at each validation, or after every epoch without one",
    "seg": "from the training split (--domain; its images with a pseudo mask), also when the run validates; "
    "drawn at each validation, or after every epoch without one",
    "affinity": "from the training split (--domain; its images with a relation-label map); drawn after every epoch",
}


def add_training_args(
    parser,
    lr,
    weight_decay,
    max_epoch,
    batch_size=16,
    optimiser_help=None,
    image_args=True,
    panels_from=PANELS_FROM["rsepm"],
):
    """Flags of docs/method.md#optimisation with the script's defaults (they differ per stage).
    optimiser_help: the --help of --lr, --wd and --nesterov (default OPTIMISER_HELP).
    panels_from: the --vis_images help's account of where and when the script draws its panels
    (PANELS_FROM: the validation images or the training split for train_rsepm.py, the training split for the others).
    image_args False leaves out the flags of the classification/segmentation data and networks
    (random long-side resize, colour jitter, SyncBN, channels-last), for a script that has none of
    them (train_affinity.py): a flag that does not apply is not accepted. Every training script reads
    images, so --max_image_pixels (tools/args.py add_image_limit_arg) is always added."""
    helps = {**OPTIMISER_HELP, **(optimiser_help or {})}
    parser.add_argument(
        "--batch_size", default=batch_size, type=int, help="global batch size (split over DDP processes)"
    )
    parser.add_argument("--max_epoch", default=max_epoch, type=int, help="number of epochs")
    deprecated_alias(parser, "--max_epochs", "--max_epoch")
    parser.add_argument("--lr", default=lr, type=float, help=helps["lr"])
    parser.add_argument("--wd", default=weight_decay, type=float, help=helps["wd"])
    parser.add_argument("--nesterov", default=True, type=str2bool, help=helps["nesterov"])
    parser.add_argument(
        "--crop_size", "--image_size", dest="crop_size", default=512, type=int, help="side of the square training crop"
    )
    parser.add_argument("--seed", default=0, type=int, help="seed of data order, augmentation and init")
    parser.add_argument(
        "--amp",
        default="auto",
        choices=AMP_MODES,
        help="mixed precision: auto = bf16 on CUDA if supported, else fp16; off on CPU",
    )
    parser.add_argument("--log_interval", default=50, type=positive_int, help="iterations between log lines")
    parser.add_argument(
        "--save_interval",
        default=500,
        type=positive_int,
        help="iterations between resume checkpoints (models/{tag}/resume.pth)",
    )
    parser.add_argument(
        "--resume", default=False, type=str2bool, help="continue from models/{tag}/resume.pth when it exists"
    )
    parser.add_argument(
        "--vis_ids",
        default=None,
        type=id_list,
        help="comma-separated image ids drawn as the TensorBoard panels instead of --vis_images "
        "picks (ids of the split the panels come from)",
    )
    parser.add_argument(
        "--vis_images",
        default=4,
        type=int,
        help=f"images drawn as TensorBoard panels (rank 0), chosen once per run to cover the "
        f"classes (or those of --vis_ids): {panels_from}; 0 = none",
    )
    add_image_limit_arg(parser, what="a training image")  # the datasets' limit (core/train_datasets.py)
    if not image_args:
        return
    parser.add_argument("--min_image_size", default=320, type=int, help="smallest random long side")
    parser.add_argument("--max_image_size", default=640, type=int, help="largest random long side")
    add_color_jitter_arg(parser)
    parser.add_argument("--sync_bn", default=False, type=str2bool, help="SyncBatchNorm under torchrun (CUDA)")
    parser.add_argument(
        "--channels_last",
        default="auto",
        choices=("auto", "true", "false"),
        help="channels-last memory format for the network and its inputs; auto = on CUDA",
    )


def start_run(args, require_xml=False, check=None):
    """The opening of every training script: the process context (one process, DataParallel or a
    torchrun rank), `check(args, ctx)` (settings that cannot run on these devices are refused
    before any data is read), this rank's seeds, the dataset's classes and the training split.
    Returns (ctx, info, layout)."""
    ctx = distributed.setup_distributed(args.gpus)
    main_threads(args.threads, args.num_workers, verbose=ctx.is_main)
    if check is not None:
        check(args, ctx)
    distributed.seed_everything(args.seed, ctx.rank)
    info = load_dataset_info(args.dataset)
    return ctx, info, SeedLayout(args.root_dir, args.domain, info, require_xml=require_xml)


def add_color_jitter_arg(parser):
    parser.add_argument(
        "--color_jitter",
        default=",".join(map(str, JITTER)),
        type=color_jitter,
        help="colour jitter strengths brightness,contrast,saturation,hue (hue as a fraction of "
        "the colour circle), or none",
    )


def add_validation_args(parser, what):
    """The --val_* group; `what` says what is measured (both are information only)."""
    val = parser.add_argument_group(f"validation during training ({what})")
    val.add_argument("--val_every", default=0, type=int, help="epochs between validations; 0 = off")
    val.add_argument("--val_domain", default="validation", help="split to validate on")
    val.add_argument("--val_images", default=50, type=int, help="first N images of --val_domain")


def check_training_args(args):
    """Refuse settings no training script can run, before any work is done (UsageError: exit 2)."""
    # single-flag bounds are tools/flag_ranges.py's, checked by the parser; here what relates flags
    if args.crop_size % 16:
        raise UsageError(f"--crop_size {args.crop_size}: use a multiple of 16")
    if hasattr(args, "min_image_size") and args.min_image_size > args.max_image_size:
        raise UsageError(f"need --min_image_size <= --max_image_size, got {args.min_image_size}, {args.max_image_size}")
    if getattr(args, "vis_ids", None):  # the picks named: as many panels as ids
        if len(args.vis_ids) > 64:
            raise UsageError(f"--vis_ids names {len(args.vis_ids)} images; at most 64 are drawn")
        args.vis_images = len(args.vis_ids)


def memory_format(args, device):
    """torch.channels_last when --channels_last asks for it (auto: on CUDA, where cuDNN's NHWC
    convolutions are faster, above all under bf16/fp16), else torch.contiguous_format. The
    results do not depend on it (same values, other strides); the SCG and PAMR code reshapes
    with reshape/contiguous, never a view that needs the default layout."""
    wanted = args.channels_last == "true" or (args.channels_last == "auto" and torch.device(device).type == "cuda")
    return torch.channels_last if wanted else torch.contiguous_format


def tag_network(args):
    """The network part of a derived tag: resnet50 -> ResNet50."""
    return args.backbone.replace("resnet", "ResNet")


def tag_schedule(args):
    """The last part of a derived tag: e{epochs}-b{batch}-c{crop}-s{seed}, then -scratch
    (--pretrained none) or -init (a weights file); nothing for ImageNet initialisation."""
    init = "" if args.pretrained == "imagenet" else "-scratch" if args.pretrained == "none" else "-init"
    return f"e{args.max_epoch}-b{args.batch_size}-c{args.crop_size}-s{args.seed}{init}"


def tag_scg(args, defaults):
    """The SCG part of a derived tag, only when --scg_features or --scg_grid differ from the
    defaults (the authors' tags do not show them): e.g. '+SCG(C1-C5, c3)'; '' otherwise.
    defaults: an object with the default scg_features and scg_grid (core.rsepm.RSEPMConfig())."""
    if tuple(args.scg_features) == tuple(defaults.scg_features) and args.scg_grid == defaults.scg_grid:
        return ""
    names = tuple(args.scg_features)
    numbers = [int(name[1:]) for name in names]
    contiguous = len(names) > 2 and numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    features = f"{names[0]}-{names[-1]}" if contiguous else "+".join(names)
    return f"+SCG({features}, {args.scg_grid})"


def validation_set(args, ctx, info, **require):
    """(layout, ids) of the --val_images first images of --val_domain; no ids when validation is
    off or on ranks other than 0. require: SeedLayout's require_masks / require_xml."""
    if args.val_every <= 0 or not ctx.is_main:
        return None, []
    layout = SeedLayout(args.root_dir, args.val_domain, info, **require)
    return layout, layout.ids[: args.val_images]


def validation_due(args, epoch, ids):
    """Validate after every --val_every epochs and after the last one (epoch: from 1)."""
    return bool(ids) and (epoch % args.val_every == 0 or epoch == args.max_epoch)


def panels_due(args, epoch, val_ids):
    """Draw the panels with each validation, or after every epoch when the run does not validate."""
    return args.vis_images > 0 and (validation_due(args, epoch, val_ids) if getattr(args, "val_every", 0) > 0 else True)


def panel_picks(args, ctx, layout, ids, val_layout=None, val_ids=None):
    """The panel images of a run (tools/engine/panels.py pick_images): those of --vis_ids, else
    --vis_images spread over the classes; from the validation images when the run validates
    (val_ids given), else from `ids` of `layout`, the training split; none on ranks other than 0
    or with --vis_images 0."""
    from tools.engine import panels

    if not ctx.is_main or args.vis_images <= 0:
        return []
    if val_ids:
        layout, ids = val_layout, val_ids
    return panels.pick_images(
        layout, ids, args.vis_images, getattr(args, "max_image_pixels", None), chosen=getattr(args, "vis_ids", None)
    )


@torch.no_grad()
def validation_images(network, layout, ids, device, skip=None):
    """Yield (image_id, normalised (3, H, W) image on `device`, ground truth (H, W) uint8) with
    the network in eval mode; its previous mode is restored afterwards. An image or mask that
    cannot be read (corrupt, not a regular file, wrong size) is passed over and its problem given
    to `skip` (TrainingRun.skip: counted and listed at the end; None: raised)."""
    was_training = network.training
    network.eval()
    try:
        for image_id in ids:
            try:
                image = layout.read_image(image_id)
                gt = layout.read_mask(image_id, image.shape[:2])
            except DatasetError as e:
                if skip is None:
                    raise
                skip(str(e))
                continue
            yield image_id, normalize_image(image).to(device), gt
    finally:
        network.train(was_training)
