"""Single-stage training of RS+EPM: RecurSeed + EdgePredictMix (docs/method.md#training-iteration).

    python3 train_rsepm.py --root_dir ../VOC2012/ --dataset VOC --domain train_aug --backbone resnet50
    torchrun --nproc_per_node 4 train_rsepm.py ...          (DistributedDataParallel)
    python3 train_rsepm.py ... --gpus 0,1                    (DataParallel)

Writes experiments/models/{tag}/last.pth (released-weights format, so `infer_rsepm.py --tag`
reads it), config.json (every setting), resume.pth (for --resume) and logs/ (TensorBoard, JSONL).
"""
import argparse

import numpy as np
import torch

from core.datasets import SeedLayout, load_dataset_info
from core.errors import DatasetError, UsageError
from core.inference import multiscale_inference, rsepm_seed
from core.networks import RSEPM, split_parameters
from core.rsepm import LOSS_TERMS, RSEPMConfig, RSEPMTraining
from core.train_datasets import ClassificationDataset
from core.transforms import TrainTransform
from tools import distributed, optim, trainer, training
from tools.args import cli
from tools.metrics import ConfusionMeter, seed_sweep_confusions, sweep_thresholds


def int_list(text):
    try:
        return tuple(int(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def parse_args(argv=None):
    parser = training.training_parser(__doc__.splitlines()[0], backbone="resnet50")
    training.add_training_args(parser, lr=0.01, weight_decay=1e-4, max_epoch=30, batch_size=16)
    method = parser.add_argument_group("RS+EPM (docs/method.md#training-iteration; [inferred] values as defaults)")
    method.add_argument("--rs_start", default=5, type=int, help="first epoch of RecurSeed")
    method.add_argument("--mix_start", default=15, type=int, help="first epoch of the mix")
    method.add_argument("--mix", default="epm", choices=("epm", "certainmix", "none"))
    method.add_argument("--w_cam", default=1.0, type=float, help="weight of L_rec")
    method.add_argument("--w_seg", default=1.0, type=float, help="weight of L_seg")
    method.add_argument("--w_cam_mix", default=1.0, type=float, help="weight of L_rec on mixed images")
    method.add_argument("--w_seg_mix", default=1.0, type=float, help="weight of L_seg on mixed images")
    method.add_argument("--w_cls_mix", default=0.0, type=float, help="weight of L_cls on mixed images (v1)")
    method.add_argument("--scg_fg_th", default=0.50, type=float, help="SCG first-order threshold")
    method.add_argument("--scg_so_th", default=0.10, type=float, help="SCG second-order threshold (/N)")
    method.add_argument("--scg_fg_point", default=0.30, type=float, help="CAM value of SCG foreground points")
    method.add_argument("--scg_bg_point", default=0.05, type=float, help="CAM value of SCG background points")
    method.add_argument("--pamr_iterations", default=10, type=int, help="[inferred]")
    method.add_argument("--pamr_dilations", default=(1, 2, 4, 8, 12, 24), type=int_list, help="[inferred]")
    method.add_argument("--cf_fg_th", default=0.55, type=float, help="certain filter c")
    method.add_argument("--cf_bg_th", default=0.10, type=float, help="certain filter u")
    method.add_argument("--ep_delta", default=0.3, type=float, help="[inferred] edge predict jump")
    method.add_argument("--ep_conf", default=0.55, type=float, help="[inferred] edge predict confidence")
    method.add_argument("--teacher", default="online", choices=("online", "ema"),
                        help="network that generates the targets")
    method.add_argument("--ema_decay", default=0.999, type=float)
    training.add_validation_args(parser, "seed mIoU, information only")
    args = parser.parse_args(argv)
    check_args(parser, args)
    args.tag = args.tag or derive_tag(args)
    return args


def check_args(parser, args):
    """Refuse settings that cannot run before any work is done."""
    training.check_training_args(parser, args)
    # epochs are 0 .. max_epoch - 1, so a start at max_epoch would never run either
    # rs_start == max_epoch with --mix none is the CAM-only baseline (classification loss alone).
    if args.rs_start > args.max_epoch or (args.rs_start == args.max_epoch and args.mix != "none"):
        parser.error(f"--rs_start {args.rs_start} is not below --max_epoch {args.max_epoch} (epochs are "
                     f"0..{args.max_epoch - 1}): RecurSeed would never run")
    if args.mix != "none" and args.mix_start >= args.max_epoch:
        parser.error(f"--mix_start {args.mix_start} is not below --max_epoch {args.max_epoch} (epochs are "
                     f"0..{args.max_epoch - 1}): the mix would never run; use --mix none")
    if args.mix != "none" and args.mix_start < args.rs_start:
        parser.error(f"--mix_start {args.mix_start} is before --rs_start {args.rs_start}: the mix needs RS targets")
    if args.mix != "none" and args.batch_size < 2:
        parser.error(f"--batch_size {args.batch_size}: the mix pairs images, so at least 2 are needed")


def check_mix_share(args, ctx):
    """Each device mixes within its own share of the batch (core/rsepm.py): a share of one image
    would be pasted onto itself, a silent no-op mix, so refuse it. UsageError (a ValueError)."""
    devices = ctx.world_size if ctx.distributed else max(1, len(ctx.device_ids))
    if args.mix != "none" and args.batch_size // devices < 2:
        raise UsageError(f"--batch_size {args.batch_size} over {devices} devices leaves fewer than 2 "
                         f"images per device, and the mix pairs images within a device; raise "
                         f"--batch_size to at least {2 * devices} or use --mix none")


def derive_tag(args):
    """A name that states the experiment (mmsegmentation style), e.g.
    ResNet50@VOC@RS(ep=5,cam=1.0,seg=1.0)+CF(c=0.55,u=0.1)+EPM(ep=15,cam=1.0,seg=1.0)@e30-b16-c512-s0"""
    name, schedule = training.tag_network(args), training.tag_schedule(args)
    if args.rs_start >= args.max_epoch:
        return f"{name}@{args.dataset}@CAM@{schedule}"
    parts = f"RS(ep={args.rs_start},cam={args.w_cam},seg={args.w_seg})+CF(c={args.cf_fg_th},u={args.cf_bg_th})"
    if args.mix != "none":
        cls = f"cls={args.w_cls_mix}," if args.w_cls_mix else ""
        mix = {"epm": "EPM", "certainmix": "CM"}[args.mix]
        parts += f"+{mix}(ep={args.mix_start},{cls}cam={args.w_cam_mix},seg={args.w_seg_mix})"
    if args.teacher == "ema":
        parts += f"+EMA({args.ema_decay})"
    return f"{name}@{args.dataset}@{parts}@{schedule}"


def method_config(args):
    return RSEPMConfig(
        scg_fg_th=args.scg_fg_th, scg_so_th=args.scg_so_th, scg_fg_point=args.scg_fg_point,
        scg_bg_point=args.scg_bg_point, pamr_iterations=args.pamr_iterations,
        pamr_dilations=tuple(args.pamr_dilations), cf_fg_th=args.cf_fg_th, cf_bg_th=args.cf_bg_th,
        mix=args.mix, ep_delta=args.ep_delta, ep_conf=args.ep_conf, w_cam=args.w_cam, w_seg=args.w_seg,
        w_cam_mix=args.w_cam_mix, w_seg_mix=args.w_seg_mix, w_cls_mix=args.w_cls_mix)


@torch.no_grad()
def validate(network, layout, ids, device, num_classes):
    """Seed mIoU (%) and best threshold on `ids`: single-scale + flip decoder seeds from the
    ground-truth tags, scored with the project's evaluator (threshold sweep 0.10..0.80)."""
    thresholds = sweep_thresholds(0.10, 0.80, 0.05)
    meter = ConfusionMeter(num_classes, num_rows=len(thresholds))
    for image_id, image, gt in training.validation_images(network, layout, ids, device):
        probs, _ = multiscale_inference(network, image, "rsepm", scales=(1.0,), interpolation="nearest")
        keys, seed = rsepm_seed(probs, layout.read_tags(image_id))
        meter.add(seed_sweep_confusions({"keys": keys, "seed": seed, "dialect": "rsepm"}, gt,
                                        thresholds, num_classes))
    scores = meter.scores()
    best = int(np.nanargmax(scores["mIoU"]))
    return float(scores["mIoU"][best]), float(thresholds[best])


def main(argv=None):
    args = parse_args(argv)
    ctx = distributed.setup_distributed(args.gpus)
    check_mix_share(args, ctx)
    distributed.seed_everything(args.seed, ctx.rank)
    info = load_dataset_info(args.dataset)
    layout = SeedLayout(args.root_dir, args.domain, info, require_xml=True)
    transform = TrainTransform(args.crop_size, args.min_image_size, args.max_image_size)
    dataset = ClassificationDataset(layout, transform, seed=args.seed)
    loader = distributed.build_loader(dataset, ctx, args.batch_size, args.num_workers, args.seed)
    if len(loader) == 0:
        raise DatasetError(f"{layout.split_dir}: {len(dataset)} tagged images give no full batch of "
                           f"{args.batch_size}; lower --batch_size")

    network = RSEPM(args.backbone, info.num_classes, output_stride=16, pretrained=args.pretrained)
    layout_format = training.memory_format(args, ctx.device)  # channels-last on CUDA (--channels_last)
    network = network.to(memory_format=layout_format)  # before the EMA copy, so the teacher matches
    ema = optim.ModelEMA(network, args.ema_decay) if args.teacher == "ema" else None
    step_module = RSEPMTraining(network, method_config(args), teacher=ema.module if ema else None)
    model = distributed.wrap_model(step_module, ctx, sync_bn=args.sync_bn)
    network = step_module.network  # the same module, moved to the device
    optimizer = optim.build_optimizer(split_parameters(network), args.lr, args.wd, nesterov=args.nesterov)
    weights = method_config(args).weights()
    with trainer.TrainingRun(args, ctx, network, optimizer, loader, ema, desc="train_rsepm",
                             method=vars(method_config(args)), loss_weights=weights, train_images=len(dataset),
                             skipped_untagged=dataset.skipped_untagged) as run:
        run.logger.info(f"[i] {dataset.summary()}")
        val_layout, val_ids = training.validation_set(args, ctx, info, require_masks=True, require_xml=True)

        for epoch in run.epochs():
            use_rs, use_mix = epoch >= args.rs_start, args.mix != "none" and epoch >= args.mix_start
            model.train()
            for batch in loader:
                images = batch["image"].to(ctx.device, non_blocking=True, memory_format=layout_format)
                tags = batch["tags"].to(ctx.device, non_blocking=True)
                valid = batch["valid"].to(ctx.device, non_blocking=True)
                with optim.autocast_context(ctx.device, run.amp_dtype):
                    out = model(images, tags, valid, use_rs=use_rs, use_mix=use_mix,
                                seed=distributed.derive_seed(args.seed, run.iteration))
                out = {k: v.float().mean() for k, v in out.items()}  # DataParallel: one value per device
                losses = {k: out[k] for k in LOSS_TERMS if k in out}
                values = optim.check_finite(losses, run.iteration, ctx, sync=False)  # checked in record()
                run.step(sum(weights[k] * v for k, v in losses.items()))
                total = sum(weights[k] * v for k, v in values.items())
                stats = {k: v.detach() for k, v in out.items() if k not in LOSS_TERMS}  # no host sync
                run.record(epoch, {**values, "total": total, **stats}, images=images.shape[0], progress_loss=total)
            if training.validation_due(args, epoch, val_ids):
                miou, threshold = validate(network, val_layout, val_ids, ctx.device, info.num_classes)
                run.logger.log(run.iteration, epoch, {"val_seed_mIoU": miou, "val_seed_threshold": threshold})
        return run.finish()


if __name__ == "__main__":
    cli(main)
