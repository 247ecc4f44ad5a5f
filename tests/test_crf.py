"""core/crf.py against a direct pydensecrf call, hand-worked background planes and brute force."""

import numpy as np
import pydensecrf.densecrf as dcrf
import pytest
from pydensecrf.utils import unary_from_softmax

from core.crf import background_plane, dense_crf, seed_planes, seed_to_mask
from core.errors import FormatError

H, W = 24, 32


def reference_crf_labels(image, planes):
    """The "deeplab" CRF written out with pydensecrf directly: argmax plane index (H, W)."""
    n, h, w = planes.shape
    crf = dcrf.DenseCRF2D(w, h, n)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(planes)))
    crf.addPairwiseGaussian(sxy=1, compat=3)
    crf.addPairwiseBilateral(sxy=67, srgb=3, rgbim=np.ascontiguousarray(image), compat=4)
    q = np.array(crf.inference(10)).reshape(n, h, w)
    return q, q.argmax(axis=0)


def make_scene(seed=0):
    """A two-object image and noisy rsepm seeds for the two objects: (image, seed (2, H, W))."""
    rng = np.random.default_rng(seed)
    image = np.full((H, W, 3), 40, dtype=np.uint8)
    image[4:14, 3:15] = (200, 30, 30)
    image[10:22, 18:30] = (30, 30, 210)
    image = np.clip(image + rng.integers(-8, 9, image.shape), 0, 255).astype(np.uint8)
    seed = np.zeros((2, H, W), dtype=np.float32)
    seed[0, 5:13, 4:13] = 0.8  # seeds cover the objects only partly, so the CRF has work to do
    seed[1, 12:20, 19:27] = 0.7
    seed += rng.uniform(0, 0.4, seed.shape).astype(np.float32)
    return image, np.clip(seed, 0, 1)


def test_dense_crf_equals_direct_pydensecrf_call():
    image, seed = make_scene()
    planes = np.concatenate([background_plane(seed, bg_gamma=2.0), seed])
    q_ref, _ = reference_crf_labels(image, planes)
    q = dense_crf(image, planes)
    assert q.shape == (3, H, W) and q.dtype == np.float32
    np.testing.assert_array_equal(q, q_ref)


def test_seed_to_mask_equals_direct_call_then_keys():
    image, seed = make_scene()
    keys = np.array([0, 3, 5])
    bg = np.power(1 - seed.max(axis=0, keepdims=True), 2.0)
    _, ref_index = reference_crf_labels(image, np.concatenate([bg, seed]).astype(np.float32))
    mask = seed_to_mask({"keys": keys, "seed": seed, "dialect": "rsepm"}, image)
    assert mask.dtype == np.uint8 and mask.shape == (H, W)
    np.testing.assert_array_equal(mask, keys[ref_index])
    # The CRF must have changed something, or this test could not tell it from a plain argmax.
    plain = keys[np.concatenate([bg, seed]).argmax(axis=0)]
    assert (mask != plain).any()


def test_read_only_image_is_accepted():
    image, seed = make_scene(1)
    image.flags.writeable = False  # arrays made from PIL images are read-only
    mask = seed_to_mask({"keys": np.array([0, 1, 2]), "seed": seed, "dialect": "rsepm"}, image)
    _, ref = reference_crf_labels(image.copy(), seed_planes({"keys": [0, 1, 2], "seed": seed})[0])
    np.testing.assert_array_equal(mask, ref)


def test_background_plane_gamma_by_hand():
    seed = np.array([[[0.2, 0.5], [0.9, 0.0]], [[0.6, 0.1], [0.3, 0.0]]], dtype=np.float32)
    # max over classes: [[0.6, 0.5], [0.9, 0.0]] -> (1 - max) ** 2
    expected = np.array([[[0.16, 0.25], [0.01, 1.0]]], dtype=np.float32)
    np.testing.assert_allclose(background_plane(seed, bg_gamma=2.0), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(background_plane(seed, bg_gamma=0.5), np.sqrt([[[0.4, 0.5], [0.1, 1.0]]]), rtol=1e-5)


def test_background_plane_constant_wins_over_gamma():
    seed = np.random.default_rng(0).random((3, 4, 5)).astype(np.float32)
    plane = background_plane(seed, bg_th=0.35, bg_gamma=2.0)
    assert plane.shape == (1, 4, 5) and plane.dtype == np.float32
    assert np.all(plane == np.float32(0.35))


def test_seg_dialect_gets_no_background_plane():
    _, seed = make_scene()
    seg = {"keys": np.array([0, 4]), "seed": seed, "dialect": "seg"}
    planes, keys = seed_planes(seg, bg_th=0.5)
    np.testing.assert_array_equal(planes, seed)
    np.testing.assert_array_equal(keys, [0, 4])
    rsepm_planes, _ = seed_planes({"keys": np.array([0, 1, 4]), "seed": seed, "dialect": "rsepm"}, bg_th=0.5)
    assert rsepm_planes.shape[0] == 3


def test_seg_dialect_mask_equals_direct_call():
    image, seed = make_scene(2)
    keys = np.array([0, 9])
    mask = seed_to_mask({"keys": keys, "seed": seed, "dialect": "seg"}, image, bg_th=0.9)
    _, ref = reference_crf_labels(image, seed)
    np.testing.assert_array_equal(mask, keys[ref])


@pytest.mark.parametrize("mode", ["crf", "argmax"])
def test_no_foreground_gives_all_background(mode):
    image, _ = make_scene()
    empty = {"keys": np.array([0]), "seed": np.zeros((0, H, W), np.float32), "dialect": "rsepm"}
    np.testing.assert_array_equal(seed_to_mask(empty, image, mode=mode, bg_th=0.3), np.zeros((H, W)))
    seg_bg_only = {"keys": np.array([0]), "seed": np.ones((1, H, W), np.float32), "dialect": "seg"}
    np.testing.assert_array_equal(seed_to_mask(seg_bg_only, image, mode=mode), np.zeros((H, W)))


def test_seg_single_foreground_plane_fills_the_image():
    image, seed = make_scene()
    mask = seed_to_mask({"keys": np.array([7]), "seed": seed[:1], "dialect": "seg"}, image)
    assert np.all(mask == 7)


def test_keys_map_plane_indices_to_class_indices():
    image, seed = make_scene()
    mask = seed_to_mask({"keys": np.array([0, 7, 12]), "seed": seed, "dialect": "rsepm"}, image)
    assert set(np.unique(mask)) == {0, 7, 12}


def test_argmax_mode_brute_force():
    rng = np.random.default_rng(3)
    seed = rng.random((3, 5, 6)).astype(np.float32)
    keys = np.array([0, 2, 11, 19])
    image = rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    mask = seed_to_mask({"keys": keys, "seed": seed, "dialect": "rsepm"}, image, mode="argmax", bg_th=0.5)
    for y in range(5):
        for x in range(6):
            scores = [0.5] + [seed[c, y, x] for c in range(3)]
            assert mask[y, x] == keys[int(np.argmax(scores))]
    assert (mask == 0).any() and (mask != 0).any()


def test_argmax_mode_seg_has_no_plane_and_needs_no_bg_th():
    rng = np.random.default_rng(4)
    seed = rng.random((2, 5, 6)).astype(np.float32)
    image = np.zeros((5, 6, 3), np.uint8)
    mask = seed_to_mask({"keys": np.array([0, 3]), "seed": seed, "dialect": "seg"}, image, mode="none")
    np.testing.assert_array_equal(mask, np.where(seed[1] > seed[0], 3, 0))


def test_argmax_mode_rsepm_without_bg_th_is_refused():
    image, seed = make_scene()
    with pytest.raises(ValueError, match="bg_th"):
        seed_to_mask({"keys": np.array([0, 1, 2]), "seed": seed, "dialect": "rsepm"}, image, mode="argmax")


def test_size_mismatch_names_the_file():
    image, seed = make_scene()
    with pytest.raises(FormatError, match=r"2007_000032\.pkl.*32x23.*32x24"):
        seed_to_mask(
            {"keys": np.array([0, 1, 2]), "seed": seed[:, :-1], "dialect": "rsepm"}, image, source="2007_000032.pkl"
        )


def test_keys_outside_dataset_and_nan_are_refused():
    image, seed = make_scene()
    with pytest.raises(FormatError, match="outside 0..5"):
        seed_to_mask({"keys": np.array([0, 1, 6]), "seed": seed, "dialect": "rsepm"}, image, num_classes=6)
    bad = seed.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(FormatError, match="NaN"):
        seed_to_mask({"keys": np.array([0, 1, 2]), "seed": bad, "dialect": "rsepm"}, image)
