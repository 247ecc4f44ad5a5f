"""Training datasets: tagged crops for RS+EPM, (image, mask) crops for the segmentation network,
(image, relation-label map) crops for the affinity network.

Each reads a core.dataset_layout.SeedLayout and applies a transform (core.transforms.TrainTransform;
the affinity network's tools/seeds/relation_cache.py AffinityTransform). Each sample's
augmentation draws from np.random.default_rng([seed, epoch, index]), so a sample depends only on
the run seed, the epoch (set with `set_epoch`) and its index, never on which worker loads it or in
what order: a run resumed mid-epoch sees exactly the crops of an uninterrupted run.
The epoch reaches the persistent workers with each index (tools.engine.data_loading.build_loader's
sampler yields (epoch, index) and its dataset wrapper calls set_epoch in the worker).

Problems found at construction are either errors (DatasetError naming files) or skips that are
counted and listed for the log (`summary()`), so a run never trains silently on less data.
One bad file never stops a run: an unreadable annotation is listed in `bad_files` at construction;
an image that is corrupt, not 8-bit, or larger than `max_image_pixels` (a constructor argument, the
scripts' --max_image_pixels; checked from the header, before decoding), and a mask or label map that
is unreadable or out of range (a relation-label map also: of another size than its image) make
__getitem__ return a skip marker {"skip": id, "problem": text}, which
`collate_skipping` drops from its batch and lists under batch["skipped"]. tools/engine/trainer.py counts
both and ends the run with the list and a non-zero exit once the weights are saved.
"""

import os

import numpy as np
import torch

from core.dataset_layout import DEFAULT_MAX_IMAGE_PIXELS, read_image
from core.errors import DatasetError, FormatError
from core.io import IGNORE_INDEX as RELATION_IGNORE  # the ignored label of the relation-label maps
from core.io import read_mask
from core.progress import progress as progress_bar
from core.safety import check_image_header

MAX_LISTED = 5


def collate_skipping(items):
    """default_collate of the items that are not skip markers; batch["skipped"] lists the
    problems (one line each, naming the file) of those dropped. A batch of only bad files
    raises DatasetError: there is nothing to train on and the data is likely broken as a whole."""
    kept = [item for item in items if "skip" not in item]
    skipped = [item["problem"] for item in items if "skip" in item]
    if not kept:
        raise DatasetError(f"every image of a batch is unusable: {'; '.join(skipped)}")
    batch = torch.utils.data.default_collate(kept)
    batch["skipped"] = skipped
    return batch


def read_checked_image(path, max_pixels):
    """read_image with the size checked from the header first (core.safety.check_image_header):
    DatasetError naming the file when the image claims more than `max_pixels` pixels, before any
    memory is spent on decoding."""
    return read_image(path, max_pixels)


def _first(ids, count=MAX_LISTED):
    shown = ", ".join(ids[:count])
    return shown + (f", ... ({len(ids) - count} more)" if len(ids) > count else "")


class _AugmentedDataset(torch.utils.data.Dataset):
    """Shared part: the kept ids, the epoch, the per-sample random generator and the skip of bad
    files (max_image_pixels: the header limit of read_image, the scripts' --max_image_pixels)."""

    def __init__(self, layout, transform, seed, max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS):
        self.layout = layout
        self.transform = transform
        self.seed = int(seed)
        self.epoch = 0
        self.ids = []
        self.bad_files = []  # "path: problem" of files found unusable at construction
        self.max_image_pixels = max_image_pixels

    collate = staticmethod(collate_skipping)

    def __getitem__(self, index):
        """The sample of `index`, or a skip marker naming the file when one of its files is bad."""
        try:
            return self.load(index)
        except DatasetError as e:
            return {"skip": self.ids[index], "problem": str(e)}

    def read_image(self, image_id):
        return read_checked_image(self.layout.image_path(image_id), self.max_image_pixels)

    def read_labels(self, path, ignore=None):
        """uint8 (H, W) class indices of a mask or label map; DatasetError naming the file when it
        is unreadable or holds a label outside 0..num_classes-1 that is not `ignore` (default: the
        dataset's ignore index), which would otherwise surface as an opaque CUDA assertion in the loss."""
        try:
            mask = read_mask(path)
        except (FormatError, FileNotFoundError) as e:
            raise DatasetError(str(e)) from None
        num_classes = self.layout.info.num_classes
        ignore = self.layout.info.ignore_index if ignore is None else ignore
        bad = (mask >= num_classes) & (mask != ignore)
        if bad.any():
            raise DatasetError(
                f"{path}: label(s) {sorted(np.unique(mask[bad]).tolist())[:10]} outside "
                f"0..{num_classes - 1} and not {ignore} (ignore)"
            )
        return mask

    def __len__(self):
        return len(self.ids)

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def sample_rng(self, index):
        """numpy Generator for sample `index` of the current epoch."""
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def _check_not_empty(self, total):
        if not self.ids:
            raise DatasetError(f"{self.layout.split_dir}: no usable image among {total} ({self.summary()})")


class ClassificationDataset(_AugmentedDataset):
    """Crops with image-level tags for RS+EPM training.

    Args:
        layout: SeedLayout with xml annotations (the tags).
        transform: core.transforms.TrainTransform.
        seed: run seed for the per-sample augmentation.
        progress: show a progress bar while the annotations are read.
        max_image_pixels: images whose header claims more pixels are skipped (--max_image_pixels).
    Images whose annotation lists no class cannot teach a multi-label classifier and are skipped;
    `skipped_untagged` counts them and `untagged_ids` lists them.

    Item: dict(image (3, S, S) float32, tags (C,) float32 multi-hot, valid (S, S) bool,
    box (4,) int64 (x0, y0, x1, y1), id str, index int).
    """

    def __init__(self, layout, transform, seed=0, progress=False, max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS):
        super().__init__(layout, transform, seed, max_image_pixels)
        if not layout.has_xml:
            raise DatasetError(
                f"{os.path.join(layout.split_dir, 'xml')}: no annotations, "
                f"so no image-level tags for split {layout.domain!r}"
            )
        self.tags = []
        self.untagged_ids = []
        for image_id in progress_bar(layout.ids, desc="reading tags", unit="file", disable=not progress):
            try:
                tags = layout.read_tags(image_id, required=True)
            except (DatasetError, ValueError, OverflowError) as e:  # e.g. an `inf` in a box
                problem = str(e) if isinstance(e, DatasetError) else f"bad number ({e})"
                path = layout.xml_path(image_id)
                self.bad_files.append(problem if problem.startswith(path) else f"{path}: {problem}")
                continue
            if tags:
                self.ids.append(image_id)
                self.tags.append(tags)
            else:
                self.untagged_ids.append(image_id)
        self.skipped_untagged = len(self.untagged_ids)
        self._check_not_empty(len(layout.ids))

    def summary(self):
        text = f"{len(self.ids)} of {len(self.layout.ids)} images of {self.layout.split_dir}"
        if self.skipped_untagged:
            text += f"; skipped {self.skipped_untagged} without tags ({_first(self.untagged_ids)})"
        if self.bad_files:
            text += f"; skipped {len(self.bad_files)} with an unreadable annotation ({_first(self.bad_files)})"
        return text

    def load(self, index):
        """The sample of `index`; DatasetError naming the file when a file is bad."""
        image_id = self.ids[index]
        sample = self.transform(self.read_image(image_id), None, self.sample_rng(index))
        sample["tags"] = torch.from_numpy(self.layout.multi_hot(self.tags[index]))
        sample["id"] = image_id
        sample["index"] = index
        return sample


class SegmentationDataset(_AugmentedDataset):
    """Crops with dense masks for the segmentation network (multi-stage, docs/method.md#multi-stage).

    Args:
        layout: SeedLayout of the training split.
        mask_dir: folder of pseudo masks `{ID}.png` (pseudo-labels/{tag}/{domain}), or None for
            the layout's ground-truth masks.
        transform: core.transforms.TrainTransform.
        seed: run seed for the per-sample augmentation.
        allow_missing: skip images without a mask instead of raising DatasetError.
        progress: show a progress bar during the size check.
        max_image_pixels: images whose header claims more pixels are skipped (--max_image_pixels).
    Checks at construction, from file headers only (no pixel decoding):
      - a missing mask: DatasetError with the count and the first ids, unless allow_missing
        (then skipped; `skipped_missing`, `missing_ids`);
      - a mask whose size differs from its image: skipped, counted and listed
        (`skipped_size_mismatch`, `mismatched` as (id, image WxH, mask WxH)). Checking here, not in
        __getitem__, keeps every batch full and the skip visible in the log.
    In __getitem__, a label outside 0..num_classes-1 and not 255 raises DatasetError naming the
    file (it would otherwise surface as an opaque CUDA assertion in the loss).

    Item: dict(image (3, S, S) float32, mask (S, S) int64 (255 = ignore), valid (S, S) bool,
    box (4,) int64, id str, index int).
    """

    def __init__(
        self,
        layout,
        mask_dir,
        transform,
        seed=0,
        allow_missing=False,
        progress=False,
        max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS,
    ):
        super().__init__(layout, transform, seed, max_image_pixels)
        self.mask_dir = mask_dir
        if mask_dir is None:
            source = os.path.join(layout.split_dir, "mask")
            if not layout.has_masks:
                raise DatasetError(f"{source}: no ground-truth masks for split {layout.domain!r}")
        else:
            source = mask_dir
            if not os.path.isdir(mask_dir):
                raise DatasetError(
                    f"{mask_dir}: pseudo-mask folder not found (run "
                    f"convert_seed_to_pseudo_masks.py for this tag and domain first)"
                )
        self.missing_ids = [i for i in layout.ids if not os.path.isfile(self.mask_path(i))]
        self.skipped_missing = len(self.missing_ids)
        if self.missing_ids and not allow_missing:
            raise DatasetError(
                f"{source}: {len(self.missing_ids)} of {len(layout.ids)} images of "
                f"{layout.split_dir} have no mask ({_first(self.missing_ids)}); "
                f"complete the folder or pass --allow_missing true to skip them"
            )
        missing = set(self.missing_ids)
        self.mismatched = []
        for image_id in progress_bar(layout.ids, desc="checking mask sizes", unit="file", disable=not progress):
            if image_id in missing:
                continue
            image_size = _header_size(layout.image_path(image_id))
            mask_size = _header_size(self.mask_path(image_id))
            if image_size == mask_size:
                self.ids.append(image_id)
            else:
                self.mismatched.append((image_id, "%dx%d" % image_size, "%dx%d" % mask_size))
        self.skipped_size_mismatch = len(self.mismatched)
        self._check_not_empty(len(layout.ids))

    def mask_path(self, image_id):
        if self.mask_dir is None:
            return self.layout.mask_path(image_id)
        return os.path.join(self.mask_dir, image_id + ".png")

    def summary(self):
        text = f"{len(self.ids)} of {len(self.layout.ids)} images of {self.layout.split_dir}"
        if self.skipped_missing:
            text += f"; skipped {self.skipped_missing} without a mask ({_first(self.missing_ids)})"
        if self.skipped_size_mismatch:
            listed = [f"{i} (image {a}, mask {b})" for i, a, b in self.mismatched]
            text += f"; skipped {self.skipped_size_mismatch} whose mask size differs from the image ({_first(listed)})"
        return text

    def read_mask(self, image_id):
        """uint8 (H, W) labels; DatasetError naming the file on unreadable or out-of-range masks."""
        return self.read_labels(self.mask_path(image_id))

    def load(self, index):
        """The sample of `index`; DatasetError naming the file when a file is bad."""
        image_id = self.ids[index]
        sample = self.transform(self.read_image(image_id), self.read_mask(image_id), self.sample_rng(index))
        sample["id"] = image_id
        sample["index"] = index
        return sample


class RelationLabelDataset(_AugmentedDataset):
    """Crops with the cached relation-label maps of the affinity network (docs/method.md#random-walk).

    Args:
        layout: SeedLayout of the training split.
        label_dir: folder of the label maps `{ID}.png` (tools/seeds/relation_cache.py make_ir_labels:
            0 background, class ids, 255 ignored), each of its image's size.
        transform: tools.seeds.relation_cache.AffinityTransform, called as transform(image, labels, rng).
        seed: run seed for the per-sample augmentation.
        allow_missing: skip images without a label map instead of raising DatasetError.
        max_image_pixels: images whose header claims more pixels are skipped (--max_image_pixels).
    A missing map is found at construction: DatasetError with the count and the first ids, unless
    allow_missing (then skipped; `skipped_missing`, `missing_ids`). In __getitem__, a bad image (as
    in the other datasets) or a map that is unreadable, holds a label outside 0..num_classes-1 and
    not 255, or differs in size from its image (a stale cache) makes a skip marker naming the file.

    Item: dict(image (3, S, S) float32, labels (S/4, S/4) int64 (255 = ignored), id str, index int).
    """

    def __init__(
        self, layout, label_dir, transform, seed=0, allow_missing=False, max_image_pixels=DEFAULT_MAX_IMAGE_PIXELS
    ):
        super().__init__(layout, transform, seed, max_image_pixels)
        self.label_dir = label_dir
        self.missing_ids = [i for i in layout.ids if not os.path.isfile(self.label_path(i))]
        self.skipped_missing = len(self.missing_ids)
        if self.missing_ids and not allow_missing:
            raise DatasetError(
                f"{label_dir}: {len(self.missing_ids)} of {len(layout.ids)} images have no "
                f"relation-label map ({_first(self.missing_ids)}); fix their seed files "
                f"or pass --allow_missing true to skip them"
            )
        missing = set(self.missing_ids)
        self.ids = [i for i in layout.ids if i not in missing]
        if not self.ids:
            raise DatasetError(f"{label_dir}: no relation-label map for any image of {layout.split_dir}")

    def label_path(self, image_id):
        return os.path.join(self.label_dir, image_id + ".png")

    def summary(self):
        text = f"{len(self.ids)} of {len(self.layout.ids)} images of {self.layout.split_dir}"
        if self.skipped_missing:
            text += f"; skipped {self.skipped_missing} without a label map ({_first(self.missing_ids)})"
        return text

    def load(self, index):
        """The sample of `index`; DatasetError naming the file when a file is bad."""
        image_id = self.ids[index]
        image = self.read_image(image_id)
        path = self.label_path(image_id)
        labels = self.read_labels(path, ignore=RELATION_IGNORE)
        if labels.shape != image.shape[:2]:
            raise DatasetError(
                f"{path}: size {labels.shape[1]}x{labels.shape[0]} differs from its image "
                f"{image.shape[1]}x{image.shape[0]} (delete it to remake it)"
            )
        sample = self.transform(image, labels, self.sample_rng(index))
        sample["id"] = image_id
        sample["index"] = index
        return sample


def _header_size(path):
    """(W, H) from the file header (a mask's too: any bit depth); PIL decodes no pixels."""
    return check_image_header(path, DatasetError, eight_bit=False)
