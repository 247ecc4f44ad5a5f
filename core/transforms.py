"""The training transform (docs/method.md#optimisation), image and mask kept in step.

Training pipeline, in this order:
    resize the long side to a random integer in [min_size, max_size]  (image bicubic, mask nearest)
    horizontal flip with probability 0.5
    colour jitter (brightness, contrast, saturation 0.3, hue 0.1; the four in random order)
    normalise with the ImageNet mean/std                           (core.dataset_layout.normalize_image)
    random crop to crop_size x crop_size; an image smaller than the crop is placed at a random
    offset and padded (image 0 after normalisation, mask 255 = ignore)

Every random choice is drawn from the `rng` (numpy Generator) passed in, in a fixed order, so a
sample is a pure function of (image, mask, rng seed). The datasets derive that seed from
(run seed, epoch, sample index), which keeps augmentation independent of worker scheduling.

Output, a dict:
    image (3, S, S) float32, mask (S, S) int64 (only when a mask was given),
    valid (S, S) bool: True on pixels that come from the image, False on padding,
    box (4,) int64: the same region as (x0, y0, x1, y1), half-open, in crop pixels
        (the convention of core.losses.box_mask).
"""

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from core.dataset_layout import normalize_image
from core.io import IGNORE_INDEX

JITTER = (0.3, 0.3, 0.3, 0.1)  # brightness, contrast, saturation, hue


def random_resize_long(image, mask, rng, min_size, max_size):
    """Resize so that the long side is a random integer in [min_size, max_size].

    image: PIL RGB; mask: PIL "L"/"P" or None. Image bicubic (as in the authors' family), mask
    nearest so it keeps its label values. Aspect ratio kept, sides rounded.
    """
    long_side = int(rng.integers(min_size, max_size + 1))
    width, height = image.size
    scale = long_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))  # PIL sizes are (W, H)
    image = image.resize(size, Image.BICUBIC)
    if mask is not None:
        mask = mask.resize(size, Image.NEAREST)
    return image, mask


def random_hflip(image, mask, rng, p=0.5):
    """Flip the PIL image and mask together, left-right, with probability p."""
    if rng.random() < p:
        image = image.transpose(Image.FLIP_LEFT_RIGHT)
        mask = mask.transpose(Image.FLIP_LEFT_RIGHT) if mask is not None else None
    return image, mask


def color_jitter(image, rng, brightness=0.3, contrast=0.3, saturation=0.3, hue=0.1):
    """torchvision ColorJitter semantics with the randomness taken from `rng`.

    Factors are uniform in [max(0, 1 - s), 1 + s] (hue: [-hue, hue]); the four adjustments run in
    a random order; a strength of 0 skips its adjustment (the hue round trip through HSV is not
    exact). image: PIL RGB -> PIL RGB. (PIL, not tensors: about 6x faster on CPU workers.)
    """
    strengths = (brightness, contrast, saturation, hue)
    order = rng.permutation(4)
    factors = [rng.uniform(max(0.0, 1 - s), 1 + s) for s in strengths[:3]]
    factors.append(rng.uniform(-hue, hue))
    adjust = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for i in order:
        if strengths[i]:
            image = adjust[i](image, float(factors[i]))
    return image


def _crop_axis(size, crop, rng):
    """(source start, destination start, length) of a random crop along one axis.

    Larger than the crop: a random window of the image. Smaller: the whole image at a random
    offset inside the crop (the rest is padding).
    """
    if size >= crop:
        return int(rng.integers(0, size - crop + 1)), 0, crop
    return 0, int(rng.integers(0, crop - size + 1)), size


def random_crop(image, mask, rng, crop_size, ignore_index=IGNORE_INDEX):
    """Random crop with padding.

    image: float (3, H, W) normalised; mask: uint8/int (H, W) or None.
    Returns image (3, S, S) (padding 0), mask (S, S) int64 (padding ignore_index) or None,
    valid (S, S) bool and box (4,) int64 (x0, y0, x1, y1) of the non-padded region.
    """
    _, height, width = image.shape
    sy, dy, h = _crop_axis(height, crop_size, rng)
    sx, dx, w = _crop_axis(width, crop_size, rng)
    out = image.new_zeros((3, crop_size, crop_size))
    out[:, dy : dy + h, dx : dx + w] = image[:, sy : sy + h, sx : sx + w]
    out_mask = None
    if mask is not None:
        out_mask = torch.full((crop_size, crop_size), ignore_index, dtype=torch.int64)
        window = np.asarray(mask[sy : sy + h, sx : sx + w], dtype=np.int64)
        out_mask[dy : dy + h, dx : dx + w] = torch.from_numpy(window)
    valid = torch.zeros((crop_size, crop_size), dtype=torch.bool)
    valid[dy : dy + h, dx : dx + w] = True
    box = torch.tensor([dx, dy, dx + w, dy + h], dtype=torch.int64)
    return out, out_mask, valid, box


class TrainTransform:
    """The training augmentation of docs/method.md#optimisation.

    Call with (image uint8 (H, W, 3), mask uint8 (H, W) or None, rng numpy Generator).
    See the module docstring for the returned dict.
    """

    def __init__(self, crop_size=512, min_size=320, max_size=640, flip=True, jitter=JITTER, ignore_index=IGNORE_INDEX):
        if not 0 < min_size <= max_size:
            raise ValueError(f"need 0 < min_size <= max_size, got {min_size}, {max_size}")
        self.crop_size = crop_size
        self.min_size, self.max_size = min_size, max_size
        self.flip = flip
        self.jitter = jitter  # None or (brightness, contrast, saturation, hue)
        self.ignore_index = ignore_index

    def __call__(self, image, mask=None, rng=None):
        rng = np.random.default_rng() if rng is None else rng  # None: not reproducible
        image = Image.fromarray(np.asarray(image, dtype=np.uint8))
        mask = Image.fromarray(np.asarray(mask, dtype=np.uint8)) if mask is not None else None
        image, mask = random_resize_long(image, mask, rng, self.min_size, self.max_size)
        if self.flip:
            image, mask = random_hflip(image, mask, rng)
        if self.jitter:
            image = color_jitter(image, rng, *self.jitter)
        mask = np.asarray(mask) if mask is not None else None
        image, mask, valid, box = random_crop(
            normalize_image(np.array(image)), mask, rng, self.crop_size, self.ignore_index
        )
        sample = {"image": image, "valid": valid, "box": box}
        if mask is not None:
            sample["mask"] = mask
        return sample

    def __repr__(self):
        return (
            f"TrainTransform(crop_size={self.crop_size}, long side in [{self.min_size}, "
            f"{self.max_size}], flip={self.flip}, jitter={self.jitter})"
        )
