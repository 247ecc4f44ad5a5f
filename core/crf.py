"""Seed -> pseudo-mask conversion: background plane, dense CRF, argmax (docs/formats.md#pseudo-masks).

A seed file holds K class planes (K, H, W) and their class indices `keys` (docs/formats.md#seed-files).
The rsepm dialect stores foreground only, so a background plane is prepended here; the seg
dialect already carries a real background channel and is used as it is. The planes are then
refined with the fully connected CRF of DeepLab (Krähenbühl and Koltun 2011, the "deeplab"
settings of the original: 10 iterations, Gaussian sxy=1 compat=3, bilateral sxy=67 srgb=3
compat=4) on the real uint8 RGB image, and the argmax is mapped back through `keys`.

Public functions:
    dense_crf(image, probs, ...)            -> (N, H, W) float32 marginals
    background_plane(seed, bg_th, bg_gamma) -> (1, H, W) float32
    seed_planes(seed_dict, bg_th, bg_gamma) -> ((N, H, W) planes, (N,) keys)
    seed_to_mask(seed_dict, image, ...)     -> (H, W) uint8 class indices
"""

import numpy as np
import pydensecrf.densecrf as dcrf
from pydensecrf.utils import unary_from_softmax

from core.errors import FormatError

# The "deeplab" CRF of the original convert script (docs/formats.md#pseudo-masks).
CRF_DEFAULTS = dict(
    iterations=10, gaussian_sxy=1, gaussian_compat=3, bilateral_sxy=67, bilateral_srgb=3, bilateral_compat=4
)
DEFAULT_BG_GAMMA = 2.0


def dense_crf(
    image,
    probs,
    iterations=10,
    gaussian_sxy=1,
    gaussian_compat=3,
    bilateral_sxy=67,
    bilateral_srgb=3,
    bilateral_compat=4,
):
    """Mean-field inference of a dense CRF over per-pixel class probabilities.

    Args:
        image: uint8 RGB image (H, W, 3); the bilateral term compares these colours.
        probs: float array (N, H, W) of class scores in [0, 1]; the unary energy is
            -log(clip(p, 1e-5, 1)) (pydensecrf.utils.unary_from_softmax). The planes need not
            sum to one (the seeds do not), exactly as in the original.
        iterations: number of mean-field iterations.
        gaussian_sxy, gaussian_compat: spatial smoothness kernel (position only).
        bilateral_sxy, bilateral_srgb, bilateral_compat: appearance kernel (position and colour).
    Returns:
        float32 (N, H, W) marginals Q; argmax over axis 0 gives the labels.
    """
    probs = np.asarray(probs)
    if probs.ndim != 3:
        raise ValueError(f"probs must be (N, H, W), got shape {probs.shape}")
    num_labels, height, width = probs.shape
    image = _crf_image(image, (height, width))
    crf = dcrf.DenseCRF2D(width, height, num_labels)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))
    crf.addPairwiseGaussian(sxy=gaussian_sxy, compat=gaussian_compat)
    crf.addPairwiseBilateral(sxy=bilateral_sxy, srgb=bilateral_srgb, rgbim=image, compat=bilateral_compat)
    marginals = crf.inference(iterations)
    return np.asarray(marginals, dtype=np.float32).reshape(num_labels, height, width)


def _crf_image(image, size):
    """The image as pydensecrf needs it: uint8 (H, W, 3), C-contiguous and writeable.

    pydensecrf refuses read-only buffers, and arrays made from PIL images are read-only.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 RGB (H, W, 3), got {image.dtype} {image.shape}")
    if image.shape[:2] != tuple(size):
        raise ValueError(
            f"image size {image.shape[1]}x{image.shape[0]} differs from the probability planes {size[1]}x{size[0]}"
        )
    if not (image.flags.c_contiguous and image.flags.writeable):
        image = np.array(image, dtype=np.uint8, order="C")
    return image


def background_plane(seed, bg_th=None, bg_gamma=DEFAULT_BG_GAMMA):
    """Background score for foreground-only seeds (rsepm dialect).

    Args:
        seed: float (K, H, W) foreground planes, K >= 1.
        bg_th: constant background score; wins over `bg_gamma` when given.
        bg_gamma: exponent g of (1 - max_c seed_c) ** g, used when `bg_th` is None.
    Returns:
        float32 (1, H, W).
    """
    seed = np.asarray(seed, dtype=np.float32)
    if bg_th is not None:
        return np.full((1,) + seed.shape[1:], bg_th, dtype=np.float32)
    if bg_gamma is None:
        raise ValueError("a background plane needs bg_th or bg_gamma")
    if seed.shape[0] == 0:
        raise ValueError("the gamma background plane needs at least one foreground plane")
    return np.power(1.0 - seed.max(axis=0, keepdims=True), bg_gamma).astype(np.float32)


def seed_planes(seed_dict, bg_th=None, bg_gamma=DEFAULT_BG_GAMMA):
    """All class planes of a seed and the class index of each plane.

    rsepm: background_plane(...) prepended, keys [0, c1, ..., cK] as stored.
    seg: the stored planes and keys unchanged (background already present when it scored).
    Returns:
        planes float32 (N, H, W), keys int64 (N,).
    """
    keys = np.asarray(seed_dict["keys"], dtype=np.int64)
    seed = np.asarray(seed_dict["seed"], dtype=np.float32)
    if seed_dict.get("dialect", "rsepm") == "rsepm":
        seed = np.concatenate([background_plane(seed, bg_th, bg_gamma), seed], axis=0)
    return seed, keys


def seed_to_mask(
    seed_dict, image, mode="crf", bg_th=None, bg_gamma=DEFAULT_BG_GAMMA, num_classes=None, source=None, crf_params=None
):
    """Pseudo mask of one image from its seed file contents.

    Args:
        seed_dict: {"keys", "seed" (K, H, W), "dialect"} as returned by core.io.load_seed.
        image: uint8 RGB (H, W, 3) of the same image (used by the CRF; its size is checked).
        mode: "crf" refines with dense_crf; any other value takes the plain argmax, where an
            rsepm seed gets the constant `bg_th` plane (so `bg_th` is required there).
        bg_th, bg_gamma: background plane of rsepm seeds, see background_plane.
        num_classes: if given, keys must lie in [0, num_classes).
        source: file name used in error messages.
        crf_params: overrides of CRF_DEFAULTS (keyword arguments of dense_crf).
    Returns:
        uint8 (H, W) class indices. A seed without foreground gives all background (0).
    Raises:
        FormatError naming `source` for a seed that does not fit the image or the dataset;
        ValueError for settings that cannot work (non-crf mode on rsepm without bg_th).
    """
    source = source or "seed"
    image = np.asarray(image)
    height, width = image.shape[:2]
    _check_seed_fits(seed_dict, (height, width), num_classes, source)
    is_rsepm = seed_dict.get("dialect", "rsepm") == "rsepm"
    num_foreground = seed_dict["seed"].shape[0] if is_rsepm else int(np.count_nonzero(seed_dict["keys"]))
    if num_foreground == 0:
        return np.zeros((height, width), dtype=np.uint8)

    if mode == "crf":
        planes, keys = seed_planes(seed_dict, bg_th, bg_gamma)
        if len(keys) > 1:  # one label needs no inference: the argmax is 0 everywhere
            planes = dense_crf(image, planes, **{**CRF_DEFAULTS, **(crf_params or {})})
    else:
        if is_rsepm and bg_th is None:
            raise ValueError(
                f"mode {mode!r} (argmax without CRF) needs a constant background score bg_th for rsepm seeds"
            )
        planes, keys = seed_planes(seed_dict, bg_th, None)
    return keys[np.argmax(planes, axis=0)].astype(np.uint8)


def _check_seed_fits(seed_dict, size, num_classes, source):
    seed = seed_dict["seed"]
    keys = np.asarray(seed_dict["keys"])
    if tuple(seed.shape[1:]) != tuple(size):
        raise FormatError(
            f"{source}: seed size {seed.shape[2]}x{seed.shape[1]} differs from its image "
            f"{size[1]}x{size[0]} (width x height)"
        )
    if not np.all(np.isfinite(seed)):
        raise FormatError(f"{source}: seed contains NaN or infinite values")
    limit = 256 if num_classes is None else num_classes  # masks are uint8
    if keys.size and (keys.min() < 0 or keys.max() >= limit):
        raise FormatError(f"{source}: class keys {keys.tolist()} outside 0..{limit - 1}")
