"""Training data of the affinity network (docs/method.md#random-walk): cached relation-label maps
and the (image, stride-4 label map) crops that train_affinity.py learns from.

1. make_ir_labels: every seed file of predictions/{label_tag}/train/ becomes a label map of its
   confident regions (core.relations.ir_label_from_seed: 0 background, class ids, 255 ignored)
   saved as a palette PNG under {pred_dir}/ir-labels/{label_tag}/train/ID.png. The label CRF
   costs about a second per image, so the maps are computed once, written atomically, skipped
   when present (an interrupted run just starts again) and spread over worker processes.
2. AffinityDataset: the image and its cached label map with IRN's augmentation: a random
   rescale by a factor in [min_scale, max_scale] (image bicubic, labels nearest), a horizontal
   flip, a random crop (padding: image 0 after normalisation, labels 255), then the labels
   reduced to the stride-4 grid of the boundary map (core.relations.labels_to_stride). No colour
   jitter (IRN uses none). A sample depends only on (run seed, epoch, index), as in
   core.train_datasets, so a resumed run sees the crops of an uninterrupted one.
"""
import multiprocessing
import os

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from core.datasets import normalize_image
from core.errors import DatasetError, FormatError
from core.io import IGNORE_INDEX, read_mask, save_mask
from core.relations import BG_THRESHOLD, FG_THRESHOLD, ir_label_from_seed, labels_to_stride
from core.safety import remove_stale_temp_files, safe_output_path
from core.transforms import random_crop
from tools.paths import output_dir
from tools.seeds.seed_reading import read_foreground

IR_FOLDER = "ir-labels"
STRIDE = 4
MAX_LISTED = 5

_JOB = None  # set in each worker process by _init_worker


def ir_labels_dir(pred_dir, label_tag, domain):
    """{pred_dir}/ir-labels/{label_tag}/{domain} (train_aug -> train, as every output folder)."""
    return output_dir(pred_dir, IR_FOLDER, label_tag, domain)


def _init_worker(job):
    global _JOB
    _JOB = job


def ir_label_one(image_id):
    """Make one cached label map. Returns (image_id, None) or (image_id, problem text)."""
    job = _JOB
    seed_path = os.path.join(job["seed_dir"], image_id + ".pkl")
    if not os.path.isfile(seed_path):
        return image_id, f"{seed_path}: seed file not found"
    try:
        planes, keys, image = read_foreground(seed_path, job["tag"], job["layout"], image_id, job["num_classes"])
        labels = ir_label_from_seed(planes, keys, image, job["fg_th"], job["bg_th"], crf=job["crf"])
    except (FormatError, DatasetError, ValueError) as e:
        return image_id, str(e)
    save_mask(safe_output_path(job["out_dir"], image_id + ".png"), labels, job["palette"])
    return image_id, None


def make_ir_labels(layout, seed_dir, out_dir, tag, palette, fg_th=FG_THRESHOLD, bg_th=BG_THRESHOLD,
                   crf=True, num_workers=1, progress=True, ids=None):
    """Write the missing label maps of `ids` (default: layout.ids) into `out_dir`.

    Returns dict(written, existing, failed=[(id, problem)]); nothing is raised for one image's
    bad or missing seed file, the caller decides. Several processes may fill one folder with
    disjoint `ids` (DDP ranks): every file is written atomically under its own name.
    """
    ids = layout.ids if ids is None else list(ids)
    remove_stale_temp_files(out_dir)  # only temporaries older than this process: not a live write
    pending = [i for i in ids if not os.path.isfile(os.path.join(out_dir, i + ".png"))]
    job = dict(layout=layout, seed_dir=seed_dir, out_dir=out_dir, tag=tag, palette=palette, fg_th=fg_th,
               bg_th=bg_th, crf=crf, num_classes=layout.info.num_classes)
    summary = {"written": 0, "existing": len(ids) - len(pending), "failed": []}
    workers = min(max(1, num_workers), len(pending), os.cpu_count() or 1)
    if workers <= 1:
        _init_worker(job)
        results, pool = map(ir_label_one, pending), None
    else:  # one label CRF per process; small chunks keep the workers balanced
        pool = multiprocessing.Pool(workers, initializer=_init_worker, initargs=(job,))
        results = pool.imap_unordered(ir_label_one, pending, chunksize=max(1, min(4, len(pending) // (workers * 8))))
    try:
        for image_id, problem in tqdm(results, total=len(pending), desc="relation labels", unit="img",
                                      disable=not progress, dynamic_ncols=True):
            if problem is None:
                summary["written"] += 1
            else:
                summary["failed"].append((image_id, problem))
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    return summary


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
        image, labels, _, _ = random_crop(normalize_image(np.array(image)), np.asarray(labels), rng,
                                          self.crop_size, IGNORE_INDEX)
        return {"image": image, "labels": labels_to_stride(labels[None], self.stride)[0]}


class AffinityDataset(torch.utils.data.Dataset):
    """Images of a SeedLayout with their cached label maps.

    Args:
        layout: SeedLayout of the training split; label_dir: the make_ir_labels folder.
        transform: AffinityTransform; seed: run seed of the per-sample augmentation.
        allow_missing: skip images without a label map instead of raising DatasetError.
    Item: dict(image (3, S, S) float32, labels (S/4, S/4) int64, id str, index int).
    """

    def __init__(self, layout, label_dir, transform, seed=0, allow_missing=False):
        self.layout, self.label_dir, self.transform = layout, label_dir, transform
        self.seed, self.epoch = int(seed), 0
        self.missing_ids = [i for i in layout.ids if not os.path.isfile(self.label_path(i))]
        if self.missing_ids and not allow_missing:
            raise DatasetError(f"{label_dir}: {len(self.missing_ids)} of {len(layout.ids)} images have no "
                               f"relation-label map ({_first(self.missing_ids)}); fix their seed files "
                               f"or pass --allow_missing true to skip them")
        missing = set(self.missing_ids)
        self.ids = [i for i in layout.ids if i not in missing]
        if not self.ids:
            raise DatasetError(f"{label_dir}: no relation-label map for any image of {layout.split_dir}")

    def label_path(self, image_id):
        return os.path.join(self.label_dir, image_id + ".png")

    def summary(self):
        text = f"{len(self.ids)} of {len(self.layout.ids)} images of {self.layout.split_dir}"
        if self.missing_ids:
            text += f"; skipped {len(self.missing_ids)} without a label map ({_first(self.missing_ids)})"
        return text

    def __len__(self):
        return len(self.ids)

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def __getitem__(self, index):
        image_id = self.ids[index]
        image = self.layout.read_image(image_id)
        labels = read_mask(self.label_path(image_id))
        if labels.shape != image.shape[:2]:
            raise DatasetError(f"{self.label_path(image_id)}: size {labels.shape[1]}x{labels.shape[0]} differs "
                               f"from its image {image.shape[1]}x{image.shape[0]} (delete it to remake it)")
        sample = self.transform(image, labels, np.random.default_rng([self.seed, self.epoch, int(index)]))
        sample["id"], sample["index"] = image_id, index
        return sample


def _first(ids, count=MAX_LISTED):
    return ", ".join(ids[:count]) + (f", ... ({len(ids) - count} more)" if len(ids) > count else "")
