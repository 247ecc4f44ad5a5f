"""Single-stage training of RS+EPM: RecurSeed + EdgePredictMix (docs/method.md#training-iteration).

    python3 train_rsepm.py --root_dir ../VOC2012/ --dataset VOC --domain train_aug --backbone resnet50
    torchrun --nproc_per_node 4 train_rsepm.py ...          (DistributedDataParallel)
    python3 train_rsepm.py ... --gpus 0,1                    (DataParallel)

Writes experiments/models/{tag}/last.pth (released-weights format, so `infer_rsepm.py --tag`
reads it), config.json (every setting), resume.pth (for --resume) and logs/ (TensorBoard, JSONL).
"""

import argparse
import dataclasses

import numpy as np
import torch

from core.dataset_layout import dataset_name
from core.errors import DatasetError, UsageError
from core.multiscale import multiscale_inference, rsepm_seed
from core.networks import RSEPM, split_parameters
from core.rsepm import FEATURE_NAMES, LOSS_TERMS, RSEPMConfig, RSEPMTraining
from core.train_datasets import ClassificationDataset
from core.transforms import TrainTransform
from tools.args import cli, int_list
from tools.engine import amp, data_loading, distributed, flops, optim, panels, script_parts, trainer
from tools.metrics import ConfusionMeter, seed_sweep_confusions, sweep_thresholds


def feature_list(text):
    names = tuple(v.strip().upper() for v in str(text).split(",") if v.strip())
    if not names or any(name not in FEATURE_NAMES for name in names):
        raise argparse.ArgumentTypeError(f"expected a comma list of {','.join(FEATURE_NAMES)}, got {text!r}")
    return names


def add_method_args(parser):
    """One flag per RSEPMConfig field, with the field's default, help and source (the config is
    the single definition of each default; docs/method.md#sources)."""
    method = parser.add_argument_group(
        "RS+EPM method (docs/method.md; [source: ...] says where each default comes from)"
    )
    for field in dataclasses.fields(RSEPMConfig):
        meta, default = field.metadata, field.default
        kind = meta.get("kind")
        if kind:  # a comma-list string default: argparse passes it through `type` like a typed value
            parse, default = {"int_list": int_list, "feature_list": feature_list}[kind], ",".join(map(str, default))
        else:
            parse = type(default)
        method.add_argument(
            f"--{field.name}",
            default=default,
            type=parse,
            choices=meta.get("choices"),
            help=f"{meta['help']} [source: {meta['source']}]",
        )


def get_args_parser():
    parser = script_parts.training_parser(__doc__.splitlines()[0], backbone="resnet50")
    script_parts.add_training_args(
        parser, lr=0.01, weight_decay=1e-4, max_epoch=30, batch_size=16, panels_from=script_parts.PANELS_FROM["rsepm"]
    )
    add_method_args(parser)
    script_parts.add_validation_args(parser, "seed mIoU, information only")
    return parser


def prepare_args(args):
    """Refuse settings that cannot run (UsageError) before any work is done, and derive the tag
    when --tag is empty. Starts count from 1 (epochs 1..max_epoch); --rs_start above --max_epoch
    with --mix none is the CAM-only baseline. Returns args."""
    script_parts.check_training_args(args)
    epochs = f"epochs are counted 1..{args.max_epoch}"
    if args.rs_start < 1 or args.mix_start < 1:
        raise UsageError(
            f"--rs_start {args.rs_start} / --mix_start {args.mix_start}: {epochs}, so a start is at least 1"
        )
    if args.rs_start > args.max_epoch and args.mix != "none":
        raise UsageError(
            f"--rs_start {args.rs_start} is after --max_epoch {args.max_epoch} ({epochs}): "
            f"RecurSeed would never run; for the CAM-only baseline add --mix none"
        )
    if args.mix != "none" and args.mix_start > args.max_epoch:
        raise UsageError(
            f"--mix_start {args.mix_start} is after --max_epoch {args.max_epoch} ({epochs}): "
            f"the mix would never run; use --mix none"
        )
    if args.mix != "none" and args.mix_start < args.rs_start:
        raise UsageError(f"--mix_start {args.mix_start} is before --rs_start {args.rs_start}: the mix needs RS targets")
    if args.mix != "none" and args.batch_size < 2:
        raise UsageError(
            f"--batch_size {args.batch_size}: the mix (--mix {args.mix}) pairs images, so at least 2 are needed"
        )
    args.tag = args.tag or derive_tag(args)
    return args


def check_mix_share(args, ctx):
    """Each device mixes within its own share of the batch (core/rsepm.py): a share of one image
    would be pasted onto itself, a silent no-op mix, so refuse it. UsageError (a ValueError)."""
    devices = ctx.world_size if ctx.distributed else max(1, len(ctx.device_ids))
    if args.mix != "none" and args.batch_size // devices < 2:
        raise UsageError(
            f"--batch_size {args.batch_size} over {devices} devices leaves fewer than 2 "
            f"images per device, and the mix pairs images within a device; raise "
            f"--batch_size to at least {2 * devices} or use --mix none"
        )


def derive_tag(args):
    """A name that states the experiment in the authors' tag style, e.g.
    ResNet50@VOC@RS(ep=5, cam=1.0, seg=1.0)+CF(c=0.55, u=0.10)+EPM(ep=15, cls=1.0, cam=1.0, seg=1.0)@e30-b16-c512-s0
    (CM for --mix certainmix); settings the authors' tag does not show (SCG features and grid,
    the EMA teacher) are appended only when they differ from the defaults."""
    name, schedule = script_parts.tag_network(args), script_parts.tag_schedule(args)
    if args.rs_start > args.max_epoch:
        return f"{name}@{dataset_name(args.dataset)}@CAM@{schedule}"
    parts = (
        f"RS(ep={args.rs_start}, cam={args.w_cam}, seg={args.w_seg})+CF(c={args.cf_fg_th:.2f}, u={args.cf_bg_th:.2f})"
    )
    if args.mix != "none":
        mix = {"epm": "EPM", "certainmix": "CM"}[args.mix]
        parts += f"+{mix}(ep={args.mix_start}, cls={args.w_cls_mix}, cam={args.w_cam_mix}, seg={args.w_seg_mix})"
    parts += script_parts.tag_scg(args, RSEPMConfig())
    if args.teacher == "ema":
        parts += f"+EMA({args.ema_decay})"
    return f"{name}@{dataset_name(args.dataset)}@{parts}@{schedule}"


def method_config(args):
    """The RSEPMConfig of the parsed flags (one flag per field)."""
    return RSEPMConfig(**{field.name: getattr(args, field.name) for field in dataclasses.fields(RSEPMConfig)})


def collapse_check(config):
    """epoch_check of TrainingRun: the signs of a collapsed run in an epoch's mean statistics
    (core/rsepm.py), each a warning line. A run whose RS targets hold no certain foreground trains
    its decoder on background only and its seeds keep no class."""

    def check(epoch, means):
        use_rs, use_mix = config.active_terms(epoch)
        lines = []
        if use_rs and means.get("no_fg", 0.0) > 0.5:
            lines.append(
                f"the RecurSeed target kept no certain foreground on {100 * means['no_fg']:.0f}% of the "
                f"images (--cf_fg_th {config.cf_fg_th}): the run may have collapsed"
            )
        if use_rs and means.get("seg") == 0.0:
            lines.append(
                "the segmentation loss was exactly 0 all epoch: its targets held no certain pixel "
                "(the run may have collapsed)"
            )
        if use_mix and config.mix != "none" and means.get("pasted_pixels") == 0.0:
            lines.append(
                "EdgePredictMix pasted nothing all epoch (no confident foreground in the decoder's "
                "labels): the mix terms trained on unmixed images"
            )
        return lines

    return check


@torch.no_grad()
def validate(network, layout, ids, device, num_classes, skip=None):
    """Seed mIoU (%), best threshold and the per-class IoU (fractions, background first) at it on
    `ids`: single-scale + flip decoder seeds from the ground-truth tags, scored with the
    project's evaluator (threshold sweep 0.10..0.80). Unreadable images go to `skip` (TrainingRun.skip);
    None when no image could be read."""
    thresholds = sweep_thresholds(0.10, 0.80, 0.05)
    meter = ConfusionMeter(num_classes, num_rows=len(thresholds))
    scored = 0
    for image_id, image, gt in script_parts.validation_images(network, layout, ids, device, skip):
        try:
            tags = layout.read_tags(image_id)
        except DatasetError as e:
            if skip is None:
                raise
            skip(str(e))
            continue
        probs, _ = multiscale_inference(network, image, "rsepm", scales=(1.0,), interpolation="nearest")
        keys, seed = rsepm_seed(probs, tags)
        meter.add(seed_sweep_confusions({"keys": keys, "seed": seed, "dialect": "rsepm"}, gt, thresholds, num_classes))
        scored += 1
    if not scored:
        return None
    scores = meter.scores()
    best = int(np.nanargmax(scores["mIoU"]))
    return float(scores["mIoU"][best]), float(thresholds[best]), scores["iou"][best]


def main(args):
    prepare_args(args)
    ctx, info, layout = script_parts.start_run(args, require_xml=True, check=check_mix_share)
    transform = TrainTransform(args.crop_size, args.min_image_size, args.max_image_size, jitter=args.color_jitter)
    dataset = ClassificationDataset(layout, transform, seed=args.seed, max_image_pixels=args.max_image_pixels)
    loader = data_loading.build_loader(dataset, ctx, args.batch_size, args.num_workers, args.seed)

    network = RSEPM(args.backbone, info.num_classes, output_stride=16, pretrained=args.pretrained)
    layout_format = script_parts.memory_format(args, ctx.device)  # channels-last on CUDA (--channels_last)
    network = network.to(memory_format=layout_format)  # before the EMA copy, so the teacher matches
    config = method_config(args)
    ema = optim.ModelEMA(network, args.ema_decay) if args.teacher == "ema" else None
    step_module = RSEPMTraining(network, config, teacher=ema.module if ema else None)
    model = distributed.wrap_model(step_module, ctx, sync_bn=args.sync_bn)
    network = step_module.network  # the same module, moved to the device
    optimizer = optim.build_optimizer(split_parameters(network), args.lr, args.wd, nesterov=args.nesterov)
    weights = config.weights()
    # FLOPs per image of one step, counted once where the device's peak is known (CUDA): the MFU
    step_flops = trainer.count_flops(
        lambda: flops.rsepm_train_flops(config, args.backbone, info.num_classes, args.crop_size, ctx.device),
        ctx.device,
        args.amp,
    )
    with trainer.TrainingRun(
        args,
        ctx,
        network,
        optimizer,
        loader,
        ema,
        desc="train_rsepm",
        flops_per_image=step_flops,
        epoch_check=collapse_check(config),
        method=dataclasses.asdict(config),
        loss_weights=weights,
        train_images=len(dataset),
        skipped_untagged=dataset.skipped_untagged,
    ) as run:
        run.logger.info(dataset.summary())
        val_layout, val_ids = script_parts.validation_set(args, ctx, info, require_masks=True, require_xml=True)
        picks = script_parts.panel_picks(args, ctx, layout, dataset.ids, val_layout, val_ids)
        drawing = panels.RSEPMPanels(step_module, picks, info, ctx.device)
        threshold = None  # the seed panel's background threshold: the last validation's best

        for epoch in run.epochs():
            use_rs, use_mix = config.active_terms(epoch)
            model.train()
            for batch in loader:
                images = batch["image"].to(ctx.device, non_blocking=True, memory_format=layout_format)
                tags = batch["tags"].to(ctx.device, non_blocking=True)
                valid = batch["valid"].to(ctx.device, non_blocking=True)
                with amp.autocast_context(ctx.device, run.amp_dtype):
                    out = model(
                        images,
                        tags,
                        valid,
                        use_rs=use_rs,
                        use_mix=use_mix,
                        seed=distributed.derive_seed(args.seed, run.iteration),
                    )
                out = {k: v.float().mean() for k, v in out.items()}  # DataParallel: one value per device
                losses = {k: out[k] for k in LOSS_TERMS if k in out}
                total = sum(weights[k] * v for k, v in losses.items())
                run.step(total)
                stats = {k: v for k, v in out.items() if k not in LOSS_TERMS}
                # tensors: record checks and sums them on the device (no host sync)
                run.record(
                    epoch,
                    {**losses, "total": total, **stats},
                    images=images.shape[0],
                    progress_loss=total,
                    skipped=batch.get("skipped"),
                )
            if script_parts.validation_due(args, epoch, val_ids) and (
                result := validate(network, val_layout, val_ids, ctx.device, info.num_classes, run.skip)
            ):
                miou, threshold, iou = result
                if epoch < args.rs_start:  # the decoder has not been trained: its seed fills each image with its tags
                    run.logger.info(
                        f"epoch {epoch}: validation seed mIoU {miou:.2f} from an untrained decoder "
                        f"(RecurSeed starts at epoch {args.rs_start}); not counted as the run's best"
                    )
                    run.logger.log(
                        run.iteration, epoch, {"val_seed_mIoU_untrained_decoder": miou, "val_seed_threshold": threshold}
                    )
                else:
                    run.note_best("val_seed_mIoU", miou, epoch, threshold=threshold)
                    run.logger.log(run.iteration, epoch, {"val_seed_mIoU": miou, "val_seed_threshold": threshold})
                run.logger.markdown(
                    run.iteration,
                    "val/seed_IoU",
                    f"threshold {threshold:.2f}\n\n" + panels.iou_table(iou, info.class_names),
                )
            if script_parts.panels_due(args, epoch, val_ids):
                run.draw_panels(lambda: drawing.draw(epoch, threshold))
        return run.finish()


if __name__ == "__main__":
    cli(main, get_args_parser())
