"""Training transforms: crop geometry, padding values, valid region, label safety, flip, seeds."""

import numpy as np
import pytest
import torch
from PIL import Image

from core.dataset_layout import IMAGENET_MEAN, IMAGENET_STD
from core.transforms import TrainTransform, color_jitter, random_crop, random_hflip, random_resize_long


def denormalize(image):
    """(3, H, W) normalised float -> uint8 (H, W, 3), the inverse of normalize_image."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (image * std + mean).mul(255).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()


def coordinate_image(height, width):
    """R = column, G = row, B = 7: every pixel tells where it came from (sizes < 256)."""
    ys, xs = np.mgrid[:height, :width]
    return np.stack([xs, ys, np.full_like(xs, 7)], axis=-1).astype(np.uint8)


def no_resize(size, crop, flip=False):
    """Long side fixed at the image's own: bicubic resize to the same size is the identity."""
    return TrainTransform(crop_size=crop, min_size=size, max_size=size, flip=flip, jitter=None)


@pytest.mark.parametrize("height,width", [(20, 30), (64, 64), (100, 80), (50, 120)])
def test_output_shapes_and_types(height, width):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    mask = rng.integers(0, 6, (height, width), dtype=np.uint8)
    out = TrainTransform(crop_size=64, min_size=40, max_size=90)(image, mask, np.random.default_rng(1))
    assert out["image"].shape == (3, 64, 64) and out["image"].dtype == torch.float32
    assert out["mask"].shape == (64, 64) and out["mask"].dtype == torch.int64
    assert out["valid"].shape == (64, 64) and out["valid"].dtype == torch.bool
    assert out["box"].shape == (4,) and out["box"].dtype == torch.int64


def test_padding_values_and_valid_box():
    # 30 x 20 image into a 64 crop: the whole image sits at a random offset, the rest is padding.
    image = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    mask = np.full((20, 30), 3, dtype=np.uint8)
    for seed in range(5):
        out = no_resize(30, 64)(image, mask, np.random.default_rng(seed))
        x0, y0, x1, y1 = out["box"].tolist()
        assert (x1 - x0, y1 - y0) == (30, 20)
        expected_valid = torch.zeros(64, 64, dtype=torch.bool)
        expected_valid[y0:y1, x0:x1] = True
        assert torch.equal(out["valid"], expected_valid)
        assert torch.all(out["image"][:, ~expected_valid] == 0)
        assert torch.all(out["mask"][~expected_valid] == 255)
        assert torch.all(out["mask"][expected_valid] == 3)
        # the padded image holds the whole original, pixel for pixel
        assert np.array_equal(denormalize(out["image"])[y0:y1, x0:x1], image)


def test_crop_of_a_large_image_is_a_contiguous_window():
    image = coordinate_image(100, 120)
    for seed in range(5):
        out = no_resize(120, 48)(image, None, np.random.default_rng(seed))
        assert out["valid"].all() and out["box"].tolist() == [0, 0, 48, 48]
        pixels = denormalize(out["image"]).astype(int)
        x, y = pixels[..., 0], pixels[..., 1]
        assert np.all(np.diff(x, axis=1) == 1) and np.all(np.diff(y, axis=0) == 1)
        assert 0 <= x.min() and x.max() < 120 and 0 <= y.min() and y.max() < 100


def test_one_axis_padded_other_cropped():
    image = coordinate_image(30, 100)  # wider than the crop, lower than it
    out = no_resize(100, 50)(image, None, np.random.default_rng(3))
    x0, y0, x1, y1 = out["box"].tolist()
    assert (x0, x1) == (0, 50) and y1 - y0 == 30
    pixels = denormalize(out["image"])[y0:y1].astype(int)
    assert np.array_equal(pixels[:, :, 1], np.repeat(np.arange(30)[:, None], 50, axis=1))
    assert np.all(np.diff(pixels[:, :, 0], axis=1) == 1)


def test_resize_long_side_range_and_aspect():
    image = Image.new("RGB", (200, 100))
    mask = Image.new("L", (200, 100))
    long_sides = set()
    for seed in range(200):
        out_image, out_mask = random_resize_long(image, mask, np.random.default_rng(seed), 60, 63)
        width, height = out_image.size
        assert out_mask.size == out_image.size
        assert width == max(width, height) and height == round(width / 2)
        long_sides.add(width)
    assert long_sides == {60, 61, 62, 63}  # both ends included


def test_mask_values_stay_in_the_label_set():
    rng = np.random.default_rng(0)
    labels = np.array([0, 3, 7, 255], dtype=np.uint8)
    mask = labels[rng.integers(0, 4, (37, 53))]
    image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    for seed in range(10):
        out = TrainTransform(crop_size=48, min_size=20, max_size=90)(image, mask, np.random.default_rng(seed))
        assert set(out["mask"].unique().tolist()) <= set(labels.tolist())


def test_flip_moves_image_and_mask_together():
    # Left half class 1 painted red, right half class 2 painted green, no jitter: after any flip
    # and resize, the colour of a pixel still names its label (away from the bicubic seam).
    image = np.zeros((40, 60, 3), dtype=np.uint8)
    image[:, :30, 0] = 255
    image[:, 30:, 1] = 255
    mask = np.ones((40, 60), dtype=np.uint8)
    mask[:, 30:] = 2
    flipped_seen = set()
    for seed in range(12):
        out = TrainTransform(crop_size=64, min_size=50, max_size=80, jitter=None)(
            image, mask, np.random.default_rng(seed)
        )
        pixels = denormalize(out["image"]).astype(int)
        valid = out["valid"].numpy()
        colour_label = np.where(pixels[..., 0] > pixels[..., 1], 1, 2)
        agree = (colour_label == out["mask"].numpy())[valid].mean()
        assert agree > 0.93, f"seed {seed}: image and mask disagree on {1 - agree:.1%} of pixels"
        rows = out["mask"].numpy()[valid.any(1)][:, valid.any(0)]
        flipped_seen.add(int(rows[0, 0]))  # 2 on the left edge means flipped
    assert flipped_seen == {1, 2}


@pytest.mark.parametrize("height,width", [(30, 90), (90, 30), (20, 20)])
def test_image_and_mask_stay_aligned_pixel_for_pixel(height, width):
    # Random labels per pixel, pixel value = 30 * label: without resizing and jitter, every valid
    # crop pixel must decode to its mask label exactly (crop offsets and flips alike).
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 6, (height, width), dtype=np.uint8)
    image = np.repeat((mask * 30)[..., None], 3, axis=2).astype(np.uint8)
    for seed in range(6):
        out = no_resize(max(height, width), 48, flip=True)(image, mask, np.random.default_rng(seed))
        valid = out["valid"].numpy()
        decoded = denormalize(out["image"])[..., 0].astype(int) // 30
        assert np.array_equal(decoded[valid], out["mask"].numpy()[valid])


def test_random_hflip_is_an_exact_mirror():
    image = coordinate_image(5, 9)
    mask = np.arange(45, dtype=np.uint8).reshape(5, 9)
    rng_flip = next(np.random.default_rng(s) for s in range(100) if np.random.default_rng(s).random() < 0.5)
    out_image, out_mask = random_hflip(Image.fromarray(image), Image.fromarray(mask), rng_flip)
    assert np.array_equal(np.asarray(out_image), image[:, ::-1])
    assert np.array_equal(np.asarray(out_mask), mask[:, ::-1])


def test_brightness_jitter_scales_pixels():
    image = np.random.default_rng(0).integers(20, 150, (16, 16, 3), dtype=np.uint8)  # no clipping
    out = color_jitter(Image.fromarray(image), np.random.default_rng(4), 0.3, 0, 0, 0)
    out = np.asarray(out).astype(float)
    factor = out.sum() / image.sum()
    assert 0.69 <= factor <= 1.31
    assert np.abs(out - image * factor).max() <= 1.5


def test_same_seed_same_sample_other_seed_other_sample():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)
    mask = rng.integers(0, 6, (50, 70), dtype=np.uint8)
    transform = TrainTransform(crop_size=64, min_size=40, max_size=90)
    a = transform(image, mask, np.random.default_rng(11))
    b = transform(image, mask, np.random.default_rng(11))
    c = transform(image, mask, np.random.default_rng(12))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["image"], c["image"])


def test_random_crop_without_mask():
    image = torch.ones(3, 10, 10)
    out, mask, valid, box = random_crop(image, None, np.random.default_rng(0), 16)
    assert mask is None and out.shape == (3, 16, 16)
    assert out.sum() == 300 and valid.sum() == 100
