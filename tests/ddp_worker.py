"""A miniature of the training scripts, for the tests: tiny data, tiny model, the real engine.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_worker.py \
        --root DATA --out OUT --max_epoch 2

Also imported by the tests: `write_tiny_layout` builds a seed-layout dataset (TOY classes) and
`train` is a training loop built from tools/engine/distributed.py, data_loading.py, optim.py,
resume_state.py and runlog.py, used single-process for the resume test.
Each rank writes OUT/rank{r}.pt = {"state": final weights, "indices": sample indices seen}.
"""

import argparse
import os
import sys
import xml.etree.ElementTree as ET

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from core.dataset_layout import DatasetInfo, SeedLayout  # noqa: E402
from core.io import save_mask  # noqa: E402
from core.networks import split_parameters  # noqa: E402
from core.train_datasets import SegmentationDataset  # noqa: E402
from core.transforms import TrainTransform  # noqa: E402
from core.weights import unwrap  # noqa: E402
from tools.engine import amp, data_loading, distributed, optim, resume_state, runlog  # noqa: E402

TAG = "tiny"


def write_tiny_layout(root, count=8, size=(40, 48), domain="train", untagged=(), seed=0):
    """Seed layout under `root` with `count` images (H, W) = size: noisy background, 1-2
    rectangles in their class colour (TOY classes), the matching mask and VOC xml.
    Images whose index is in `untagged` get no object (an xml without tags). Returns the ids."""
    info = DatasetInfo("TOY")
    rng = np.random.default_rng(seed)
    height, width = size
    ids = []
    for d in ("image", "mask", "xml"):
        os.makedirs(os.path.join(root, domain, d), exist_ok=True)
    for i in range(count):
        image_id = f"img_{i:03d}"
        image = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
        mask = np.zeros((height, width), dtype=np.uint8)
        annotation = ET.Element("annotation")
        size_node = ET.SubElement(annotation, "size")
        ET.SubElement(size_node, "width").text = str(width)
        ET.SubElement(size_node, "height").text = str(height)
        if i not in untagged:
            classes = rng.choice(np.arange(1, info.num_classes), size=int(rng.integers(1, 3)), replace=False)
            for cls in classes:
                y0, x0 = int(rng.integers(0, height // 2)), int(rng.integers(0, width // 2))
                y1, x1 = y0 + int(rng.integers(6, height // 2)), x0 + int(rng.integers(6, width // 2))
                mask[y0:y1, x0:x1] = cls
                image[y0:y1, x0:x1] = info.colors[cls]
                obj = ET.SubElement(annotation, "object")
                ET.SubElement(obj, "name").text = info.class_names[cls]
                box = ET.SubElement(obj, "bndbox")
                for key, value in zip(("xmin", "ymin", "xmax", "ymax"), (x0 + 1, y0 + 1, x1, y1)):
                    ET.SubElement(box, key).text = str(value)
        Image.fromarray(image).save(os.path.join(root, domain, "image", image_id + ".jpg"), quality=95)
        save_mask(os.path.join(root, domain, "mask", image_id + ".png"), mask, info.palette)
        ET.ElementTree(annotation).write(os.path.join(root, domain, "xml", image_id + ".xml"))
        ids.append(image_id)
    return ids


class TinyNet(nn.Module):
    """Backbone under `model` (as the real networks, so split_parameters sees it) + a head with
    dropout, so that the global torch RNG matters for exact resumption."""

    def __init__(self, num_classes=6):
        super().__init__()
        self.model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout2d(0.3), nn.Conv2d(8, num_classes, 1))

    def forward(self, x):
        return self.head(self.model(x))


def train(
    root,
    out_dir,
    max_epoch=3,
    stop_at=None,
    resume=False,
    num_workers=0,
    batch_size=2,
    seed=0,
    ctx=None,
    init_seed=None,
):
    """A training script's loop in miniature. stop_at: save a resume checkpoint
    after that many iterations and return (a killed run). init_seed: seed the model's initial
    weights differently (a fresh process would), before resuming overwrites them."""
    ctx = ctx or distributed.setup_distributed("cpu")
    distributed.seed_everything(seed if init_seed is None else init_seed, ctx.rank)
    layout = SeedLayout(root, "train", DatasetInfo("TOY"))
    transform = TrainTransform(crop_size=32, min_size=30, max_size=56)
    dataset = SegmentationDataset(layout, None, transform, seed=seed)
    loader = data_loading.build_loader(dataset, ctx, batch_size, num_workers, seed)
    model = distributed.wrap_model(TinyNet(), ctx)
    optimizer = optim.build_optimizer(split_parameters(model), lr=0.05, weight_decay=1e-4)
    scheduler = optim.PolyLR(optimizer, max_epoch * len(loader))
    scaler = amp.make_grad_scaler(ctx.device, None)
    ema = optim.ModelEMA(model, decay=0.9)
    resume_file = resume_state.resume_path(out_dir, TAG)
    epoch, step, iteration = 0, 0, 0
    if resume:
        distributed.seed_everything(12345, ctx.rank)  # a fresh process: other RNG states until restored
        state = resume_state.load_resume(resume_file, model, optimizer, scheduler, scaler, ema, loader.sampler, ctx)
        epoch, step, iteration = state["epoch"], state["step"], state["iteration"]
    logger = runlog.RunLogger(
        os.path.join(out_dir, "logs"), enabled=ctx.is_main, purge_after=iteration if resume else None
    )
    seen = []
    for epoch in range(epoch, max_epoch):
        data_loading.set_loader_epoch(loader, epoch, skip_batches=step)
        for batch in loader:
            images, masks = batch["image"].to(ctx.device), batch["mask"].to(ctx.device)
            partner = torch.randperm(images.shape[0])  # global RNG in the step, as EdgePredictMix
            with amp.autocast_context(ctx.device, dtype=None):
                logits = model(images)
                losses = {
                    "seg": F.cross_entropy(logits, masks, ignore_index=255),
                    "mix": 0.1 * (logits - logits[partner].detach()).pow(2).mean(),
                }
            values = runlog.check_finite(losses, iteration, ctx)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(sum(losses.values())).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            ema.update(model)
            seen.extend((epoch, int(i)) for i in batch["index"])
            step, iteration = step + 1, iteration + 1
            logger.log(
                iteration, epoch, {**values, "lr": scheduler.get_last_lr()[0]}, images=batch_size * ctx.world_size
            )
            if iteration == stop_at:
                resume_state.save_resume(
                    resume_file,
                    model,
                    optimizer,
                    scheduler,
                    scaler,
                    ema,
                    epoch,
                    step,
                    iteration,
                    loader.sampler,
                    ctx=ctx,
                )
                logger.close()
                return model, ema, optimizer, seen
        step = 0
    resume_state.save_resume(
        resume_file, model, optimizer, scheduler, scaler, ema, epoch + 1, 0, iteration, loader.sampler, ctx=ctx
    )
    if ctx.is_main:
        config = resume_state.run_config({"seed": seed, "max_epoch": max_epoch}, ctx)
        resume_state.save_final(out_dir, TAG, model, config)
    logger.close()
    return model, ema, optimizer, seen


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--max_epoch", type=int, default=2)
    parser.add_argument("--num_workers", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    ctx = distributed.setup_distributed()
    model, _, _, seen = train(args.root, args.out, args.max_epoch, num_workers=args.num_workers, ctx=ctx)
    torch.save({"state": unwrap(model).state_dict(), "indices": seen}, os.path.join(args.out, f"rank{ctx.rank}.pt"))
    distributed.cleanup_distributed()


if __name__ == "__main__":
    main()
