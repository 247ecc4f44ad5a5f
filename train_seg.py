"""Multi-stage retraining: DeepLabV3+ or DeepLabV2 on RS+EPM pseudo masks (docs/method.md#multi-stage).

    python3 train_seg.py --root_dir ../VOC2012/ --dataset VOC --domain train_aug \
        --decoder deeplabv3+ --backbone resnet101 --label_tag "ResNet50@VOC@RS+EPM@Official"
    torchrun --nproc_per_node 4 train_seg.py ...             (DistributedDataParallel)

Masks come from experiments/pseudo-labels/{label_tag}/train/ (what convert_seed_to_pseudo_masks.py
writes for --domain train_aug), or from the ground truth with --label_tag gt (a fully supervised
reference). Writes experiments/models/{tag}/last.pth in the released-weights format, so
`infer_seg.py --tag` reads it, plus config.json, resume.pth and logs/. The last checkpoint is
the result: selecting one on validation ground truth would leak the test set.
"""

import os

import torch
import torch.nn.functional as F

from core.dataset_layout import dataset_name
from core.errors import DatasetError
from core.io import IGNORE_INDEX
from core.multiscale import multiscale_inference
from core.networks import build_network, split_parameters
from core.train_datasets import SegmentationDataset
from core.transforms import TrainTransform
from tools.args import cli, str2bool
from tools.engine import amp, data_loading, distributed, flops, optim, panels, script_parts, trainer
from tools.metrics import ConfusionMeter
from tools.paths import pseudo_labels_dir


def get_args_parser():
    parser = script_parts.training_parser(__doc__.splitlines()[0], backbone="resnet101")
    parser.add_argument(
        "--decoder", default="deeplabv3+", choices=("deeplabv3+", "deeplabv2"), help="segmentation network"
    )
    parser.add_argument("--output_stride", default=8, type=int, choices=(8, 16), help="backbone output stride")
    parser.add_argument(
        "--label_tag",
        required=True,
        help="pseudo masks from pseudo-labels/{label_tag}/{domain}/ (train/ for --domain train_aug), "
        "or 'gt' for ground truth",
    )
    parser.add_argument(
        "--allow_missing",
        default=False,
        type=str2bool,
        help="skip (and count) images without a pseudo mask instead of stopping",
    )
    script_parts.add_training_args(
        parser,
        lr=1e-3,
        weight_decay=4e-5,
        max_epoch=50,
        batch_size=16,
        optimiser_help={"lr": "backbone learning rate (head: x --head_lr_mult)"},
        panels_from=script_parts.PANELS_FROM["seg"],
    )
    parser.add_argument("--head_lr_mult", default=10.0, type=float, help="head learning rate = lr x this")
    script_parts.add_validation_args(parser, "mIoU, information only, never used to pick weights")
    return parser


def prepare_args(args):
    """Refuse settings that cannot run (UsageError) and derive the tag when --tag is empty."""
    script_parts.check_training_args(args)
    args.tag = args.tag or derive_tag(args)
    return args


def derive_tag(args):
    """e.g. ResNet101@VOC@DeepLabV3+(os8)@MS@labels=<label_tag>@e50-b16-c512-s0 ("MS" marks the
    multi-stage model, the substring the original used to recognise seg seed files)."""
    decoder = {"deeplabv3+": "DeepLabV3+", "deeplabv2": "DeepLabV2"}[args.decoder]
    return (
        f"{script_parts.tag_network(args)}@{dataset_name(args.dataset)}@{decoder}(os{args.output_stride})@MS"
        f"@labels={args.label_tag}@{script_parts.tag_schedule(args)}"
    )


def segmentation_loss(logits, masks):
    """Cross entropy (ignore 255) of logits upsampled bilinearly to the mask size (B, H, W)."""
    logits = F.interpolate(logits.float(), size=masks.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(logits, masks, ignore_index=IGNORE_INDEX)


@torch.no_grad()
def validate(network, layout, ids, device, num_classes, skip=None):
    """Single-scale + flip mIoU (%) of the argmax on `ids` (information only) and the per-class
    IoU (fractions, background first). Unreadable images go to `skip` (TrainingRun.skip); None when
    no image could be read."""
    meter = ConfusionMeter(num_classes)
    scored = 0
    for _, image, gt in script_parts.validation_images(network, layout, ids, device, skip):
        probs, _ = multiscale_inference(network, image, "seg", scales=(1.0,))
        meter.add_prediction(probs.argmax(0).cpu().numpy(), gt)
        scored += 1
    if not scored:
        return None
    scores = meter.scores()
    return float(scores["mIoU"][0]), scores["iou"][0]


def main(args):
    prepare_args(args)
    ctx, info, layout = script_parts.start_run(args)
    mask_dir = (
        None if args.label_tag == "gt" else pseudo_labels_dir(args.pred_dir, args.label_tag, args.domain, "--label_tag")
    )
    if mask_dir is not None and not os.path.isdir(mask_dir):
        raise DatasetError(
            f"{mask_dir}: pseudo-mask folder not found (run infer_rsepm.py and "
            f"convert_seed_to_pseudo_masks.py with --domain {args.domain} --tag {args.label_tag})"
        )
    transform = TrainTransform(args.crop_size, args.min_image_size, args.max_image_size, jitter=args.color_jitter)
    dataset = SegmentationDataset(
        layout,
        mask_dir,
        transform,
        seed=args.seed,
        allow_missing=args.allow_missing,
        max_image_pixels=args.max_image_pixels,
    )
    loader = data_loading.build_loader(dataset, ctx, args.batch_size, args.num_workers, args.seed)

    network = build_network(
        args.decoder, args.backbone, info.num_classes, output_stride=args.output_stride, pretrained=args.pretrained
    )
    layout_format = script_parts.memory_format(args, ctx.device)  # channels-last on CUDA (--channels_last)
    network = network.to(memory_format=layout_format)
    model = distributed.wrap_model(network, ctx, sync_bn=args.sync_bn)
    optimizer = optim.build_optimizer(
        split_parameters(network), args.lr, args.wd, nesterov=args.nesterov, head_lr_mult=args.head_lr_mult
    )
    # FLOPs per image of one step, counted once where the device's peak is known (CUDA): the MFU
    step_flops = trainer.count_flops(
        lambda: flops.seg_train_flops(
            args.decoder,
            args.backbone,
            info.num_classes,
            args.output_stride,
            args.crop_size,
            ctx.device,
            segmentation_loss,
        ),
        ctx.device,
        args.amp,
    )
    with trainer.TrainingRun(
        args,
        ctx,
        network,
        optimizer,
        loader,
        desc="train_seg",
        flops_per_image=step_flops,
        mask_dir=mask_dir,
        train_images=len(dataset),
        dataset_summary=dataset.summary(),
    ) as run:
        run.logger.info(dataset.summary())
        val_layout, val_ids = script_parts.validation_set(args, ctx, info, require_masks=True)
        # from the training split whether or not the run validates: the pseudo masks exist only there
        drawing = panels.SegPanels(
            network,
            script_parts.panel_picks(args, ctx, layout, dataset.ids),
            info,
            ctx.device,
            dataset.mask_path,
            gt_layout=layout,
        )

        for epoch in run.epochs():
            model.train()
            for batch in loader:
                images = batch["image"].to(ctx.device, non_blocking=True, memory_format=layout_format)
                masks = batch["mask"].to(ctx.device, non_blocking=True)
                with amp.autocast_context(ctx.device, run.amp_dtype):
                    logits = model(images)
                loss = segmentation_loss(logits, masks)
                run.step(loss)
                run.record(
                    epoch,
                    {"seg": loss, "ignored": (masks == IGNORE_INDEX).float().mean()},
                    images=images.shape[0],
                    progress_loss=loss,
                    skipped=batch.get("skipped"),
                )
            if script_parts.validation_due(args, epoch, val_ids) and (
                result := validate(network, val_layout, val_ids, ctx.device, info.num_classes, run.skip)
            ):
                miou, iou = result
                run.logger.log(run.iteration, epoch, {"val_mIoU": miou})
                run.logger.markdown(run.iteration, "val/IoU", panels.iou_table(iou, info.class_names))
            if script_parts.panels_due(args, epoch, val_ids):
                run.draw_panels(drawing.draw)
        return run.finish()


if __name__ == "__main__":
    cli(main, get_args_parser())
