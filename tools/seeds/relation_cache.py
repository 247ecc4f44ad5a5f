"""Training data of the affinity network (docs/method.md#random-walk): cached relation-label maps
and the (image, stride-4 label map) crops that train_affinity.py learns from.

1. make_ir_labels: every seed file of predictions/{label_tag}/train/ becomes a label map of its
   confident regions (core.relations.ir_label_from_seed: 0 background, class ids, 255 ignored)
   saved as a palette PNG under {pred_dir}/ir-labels/{label_tag}/train/ID.png. The label CRF
   costs about a second per image, so the maps are computed once, written atomically, skipped
   when present (an interrupted run just starts again) and spread over worker processes. The
   folder's settings record (ir-labels/{label_tag}/train.settings.json: the thresholds, the label
   CRF and the seed folder's own record) refuses maps made otherwise unless overwrite is given.
2. AffinityTransform: IRN's augmentation of the image and its cached label map: a random
   rescale by a factor in [min_scale, max_scale] (image bicubic, labels nearest), a horizontal
   flip, a random crop (padding: image 0 after normalisation, labels 255), then the labels
   reduced to the stride-4 grid of the boundary map (core.relations.labels_to_stride). No colour
   jitter (IRN uses none). The dataset that applies it is core.train_datasets.RelationLabelDataset,
   with the other training datasets' per-sample generator (a sample depends only on (run seed,
   epoch, index), so a resumed run sees the crops of an uninterrupted one) and skip of bad files.
"""

import numpy as np
from PIL import Image

from core.dataset_layout import normalize_image
from core.io import DEFAULT_MAX_SEED_BYTES, IGNORE_INDEX
from core.relations import BG_THRESHOLD, FG_THRESHOLD, ir_label_from_seed, labels_to_stride
from core.transforms import random_crop
from tools.paths import output_dir
from tools.seeds.seed_jobs import SeedJob, claim_from_seeds, foreground, run_seed_job

IR_FOLDER = "ir-labels"
STRIDE = 4


def ir_labels_dir(pred_dir, label_tag, domain):
    """{pred_dir}/ir-labels/{label_tag}/{domain} (train_aug -> train, as every output folder)."""
    return output_dir(pred_dir, IR_FOLDER, label_tag, domain, "--seed_tag")


class IRLabelJob(SeedJob):
    """The confident-region label map of one seed file (core.relations.ir_label_from_seed)."""

    def __init__(self, *common, fg_th, bg_th, crf):
        super().__init__(*common)
        self.fg_th, self.bg_th, self.crf = fg_th, bg_th, crf

    def make(self, seed, image, seed_path):
        planes, keys = foreground(seed, image, seed_path, self.num_classes)
        return ir_label_from_seed(planes, keys, image, self.fg_th, self.bg_th, crf=self.crf)


def claim_ir_labels(layout, seed_dir, out_dir, fg_th, bg_th, crf, overwrite=False, root=None):
    """Record what shapes the label maps (the seeds, the thresholds, the label CRF) beside their
    folder; UsageError naming the differences when it holds maps made otherwise, unless `overwrite`."""
    # the cache is kept per --seed_tag: a new --tag of the affinity network does not give a new one
    claim_from_seeds(
        out_dir,
        seed_dir,
        {"dataset": layout.info.name, "fg_th": fg_th, "bg_th": bg_th, "crf": crf},
        overwrite,
        root,
        instead="keep the --ir_fg_th, --ir_bg_th and --ir_crf it was made with "
        "(the maps are kept per --seed_tag, whatever the --tag)",
    )


def make_ir_labels(
    layout,
    seed_dir,
    out_dir,
    tag,
    palette,
    fg_th=FG_THRESHOLD,
    bg_th=BG_THRESHOLD,
    crf=True,
    num_workers=1,
    progress=True,
    ids=None,
    overwrite=False,
    max_seed_bytes=DEFAULT_MAX_SEED_BYTES,
    claim=True,
):
    """Write the missing label maps of `ids` (default: layout.ids) into `out_dir`.

    Returns dict(written, existing, failed=[{"id", "problem"}]); nothing is raised for one
    image's bad or missing seed file, the caller decides. The folder is claimed first
    (claim_ir_labels) unless `claim` is false: several processes may fill one folder with
    disjoint `ids` (DDP ranks), each after all have claimed it; every file is written atomically.
    """
    ids = layout.ids if ids is None else list(ids)
    if claim:
        claim_ir_labels(layout, seed_dir, out_dir, fg_th, bg_th, crf, overwrite)
    job = IRLabelJob(layout, seed_dir, out_dir, tag, palette, max_seed_bytes, fg_th=fg_th, bg_th=bg_th, crf=crf)
    pending = job.pending(ids)
    written, failed = run_seed_job(job, pending, job.workers(num_workers, len(pending)), "relation labels", progress)
    return {"written": written, "existing": len(ids) - len(pending), "failed": failed}


class AffinityTransform:
    """IRN's training augmentation of (image, label map); see the module docstring.

    Call with (image uint8 (H, W, 3), labels uint8 (H, W), rng numpy Generator); returns
    dict(image (3, S, S) float32, labels (S/4, S/4) int64 with 255 = ignored).
    """

    def __init__(self, crop_size=512, min_scale=0.5, max_scale=1.5, flip=True, stride=STRIDE):
        if not 0 < min_scale <= max_scale:
            raise ValueError(f"need 0 < min_scale <= max_scale, got {min_scale}, {max_scale}")
        if crop_size % stride:
            raise ValueError(f"crop size {crop_size} is not a multiple of the stride {stride}")
        self.crop_size, self.min_scale, self.max_scale = crop_size, min_scale, max_scale
        self.flip, self.stride = flip, stride

    def __call__(self, image, labels, rng):
        image = Image.fromarray(np.asarray(image, dtype=np.uint8))
        labels = Image.fromarray(np.asarray(labels, dtype=np.uint8))
        scale = rng.uniform(self.min_scale, self.max_scale)
        width, height = image.size
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image, labels = image.resize(size, Image.BICUBIC), labels.resize(size, Image.NEAREST)
        if self.flip and rng.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
            labels = labels.transpose(Image.FLIP_LEFT_RIGHT)
        image, labels, _, _ = random_crop(
            normalize_image(np.array(image)), np.asarray(labels), rng, self.crop_size, IGNORE_INDEX
        )
        return {"image": image, "labels": labels_to_stride(labels[None], self.stride)[0]}
