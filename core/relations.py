"""Inter-pixel relation labels from seeds and the class-boundary loss (docs/method.md#random-walk).

IRN (Ahn, Cho and Kwak, CVPR 2019) trains its boundary map from the confident regions of the
seeds only:
1. ir_label_from_seed: confident foreground where a class scores above `fg_th` (0.30),
   confident background where no class scores above `bg_th` (0.05), each label map smoothed by
   a dense CRF on label unaries; the rest is ignored (255).
2. relation_labels: pairs within the training radius (10) on the stride-4 grid are positive
   when both ends carry the same label (background pairs and foreground pairs kept apart) and
   negative when the labels differ; pairs touching an ignored pixel are left out.
3. boundary_loss: -log(a) on positive pairs, -log(1 - a) on negative pairs, with
   a = 1 - max(boundary on the path), each kind averaged over its own pairs.

Public API:
    foreground_planes(seed_dict)                    -> ((K, H, W) float32, (K,) int64 class ids)
    ir_label_from_seed(seed, keys, image, ...)      -> (H, W) uint8 with 0, class ids, 255
    labels_to_stride(labels, stride)                (B, H, W) -> (B, ceil(H/s), ceil(W/s))
    relation_labels(labels, radius)                 (B, h, w) -> bg_pos, fg_pos, neg (B, D, S)
    boundary_loss(aff, bg_pos, fg_pos, neg)         -> dict of scalar losses
"""

import numpy as np
import torch
import torch.nn.functional as F

from core.crf import dense_crf
from core.randomwalk import PairGrid

IGNORE_INDEX = 255
FG_THRESHOLD = 0.30
BG_THRESHOLD = 0.05
TRAIN_RADIUS = 10
# IRN's CRF on label maps (misc/imutils.crf_inference_label): a label is trusted with
# probability 0.7, the rest spread evenly over the other labels.
LABEL_CRF = dict(
    iterations=10, gaussian_sxy=3, gaussian_compat=3, bilateral_sxy=50, bilateral_srgb=5, bilateral_compat=10
)
LABEL_CONFIDENCE = 0.7
EPS = 1e-5


def foreground_planes(seed_dict):
    """Foreground score planes and their class indices from a seed file's contents.

    rsepm dialect: the stored planes, keys without the leading background placeholder 0.
    seg dialect: the planes whose key is not 0 (the real background channel is dropped).
    Returns:
        float32 (K, H, W), int64 (K,), K >= 0.
    """
    keys = np.asarray(seed_dict["keys"], dtype=np.int64).reshape(-1)
    seed = np.asarray(seed_dict["seed"], dtype=np.float32)
    if seed_dict.get("dialect", "rsepm") == "rsepm":
        if keys.size != seed.shape[0] + 1:
            raise ValueError(
                f"rsepm seed: {seed.shape[0]} planes but keys {keys.tolist()} "
                "(expected the placeholder 0 and one key per plane)"
            )
        return seed, keys[1:]
    if keys.size != seed.shape[0]:
        raise ValueError(f"seg seed: {seed.shape[0]} planes but keys {keys.tolist()}")
    keep = keys != 0
    return seed[keep], keys[keep]


def label_crf(image, labels, num_labels, confidence=LABEL_CONFIDENCE, crf_params=None):
    """Dense CRF on a hard label map (IRN's label CRF); returns int64 (H, W) labels.

    The unary trusts each pixel's label with probability `confidence` and spreads the rest
    evenly over the other labels, so it equals pydensecrf's unary_from_labels(zero_unsure=False).
    """
    if num_labels < 2:
        return np.zeros(labels.shape, dtype=np.int64)
    probs = np.full((num_labels,) + labels.shape, (1 - confidence) / (num_labels - 1), dtype=np.float32)
    np.put_along_axis(probs, labels[None].astype(np.int64), confidence, axis=0)
    marginals = dense_crf(image, probs, **{**LABEL_CRF, **(crf_params or {})})
    return marginals.argmax(axis=0)


def ir_label_from_seed(seed, keys, image, fg_th=FG_THRESHOLD, bg_th=BG_THRESHOLD, crf=True, crf_params=None):
    """Inter-pixel relation label map of one image (IRN's cam_to_ir_label).

    Two label maps are made with a constant background score in front of the seed planes:
    `fg_th` (a class wins where it scores strictly above it) and `bg_th`; each is smoothed by
    label_crf when `crf`. Foreground is kept where the fg_th map says a class; background where
    both maps say background; the rest (background only at `fg_th`) is ignored.
    Args:
        seed: float (K, H, W) foreground scores in [0, 1], K >= 0.
        keys: (K,) class indices >= 1 of the planes.
        image: uint8 RGB (H, W, 3) (used by the CRF).
    Returns:
        uint8 (H, W): 0 background, class indices, IGNORE_INDEX (255) ignored.
    """
    seed = np.asarray(seed, dtype=np.float32)
    keys = np.asarray(keys, dtype=np.int64).reshape(-1)
    if seed.ndim != 3 or keys.size != seed.shape[0]:
        raise ValueError(f"seed must be (K, H, W) with K keys, got {seed.shape} and {keys.size} keys")
    if keys.size and (keys.min() < 1 or keys.max() >= IGNORE_INDEX):
        raise ValueError(f"foreground keys must lie in 1..{IGNORE_INDEX - 1}, got {keys.tolist()}")
    if not 0 <= bg_th <= fg_th:
        raise ValueError(f"need 0 <= bg_th <= fg_th, got bg_th={bg_th} fg_th={fg_th}")
    all_keys = np.concatenate([[0], keys])

    def confident(threshold):
        planes = np.concatenate([np.full((1,) + seed.shape[1:], threshold, np.float32), seed])
        labels = planes.argmax(axis=0)  # ties go to the background plane: strictly above wins
        if crf:
            labels = label_crf(image, labels, len(all_keys), crf_params=crf_params)
        return all_keys[labels]

    fg = confident(fg_th)
    bg = confident(bg_th)
    out = np.where(fg == 0, IGNORE_INDEX, fg)
    out[(fg == 0) & (bg == 0)] = 0
    return out.astype(np.uint8)


def labels_to_stride(labels, stride=4, ignore_index=IGNORE_INDEX):
    """Nearest-neighbour reduction of label maps to the stride grid of the boundary map.

    Cell (i, j) takes the label at pixel (s*i + s//2, s*j + s//2) (what PIL's nearest resize by
    1/s picks); maps are padded with `ignore_index` to a multiple of s first.
    Args:
        labels: integer tensor (B, H, W). Returns: (B, ceil(H/s), ceil(W/s)), same dtype.
    """
    pad_h = -labels.shape[-2] % stride
    pad_w = -labels.shape[-1] % stride
    if pad_h or pad_w:
        labels = F.pad(labels, (0, pad_w, 0, pad_h), value=ignore_index)
    return labels[..., stride // 2 :: stride, stride // 2 :: stride]


def relation_labels(labels, radius=TRAIN_RADIUS, ignore_index=IGNORE_INDEX, grid=None):
    """Pair labels of stride-grid label maps for the training radius (PairGrid layout).

    Args:
        labels: integer (B, h, w). grid: a PairGrid of the same (radius, (h, w)) to reuse.
    Returns:
        bg_pos, fg_pos, neg: float32 (B, D, S) (PairGrid.pair_labels).
    """
    if grid is None:
        grid = PairGrid(radius, labels.shape[-2:])
    return grid.pair_labels(labels, ignore_index)


def boundary_loss(aff, bg_pos, fg_pos, neg):
    """IRN's class-boundary loss on pair affinities.

    Args:
        aff: (B, D, S) pair affinities 1 - max boundary on the path (PairGrid.affinity).
        bg_pos, fg_pos, neg: (B, D, S) {0, 1} pair labels (relation_labels).
    Returns:
        dict of scalars: 'bg_pos', 'fg_pos' (-log(a + 1e-5) averaged over their pairs),
        'neg' (-log(1 + 1e-5 - a) averaged over its pairs), 'pos' = bg_pos / 2 + fg_pos / 2,
        'total' = (pos + neg) / 2 (IRN's weighting of its two affinity terms).
    """

    def mean_over(label, loss):
        return (label * loss).sum() / (label.sum() + EPS)

    bg = mean_over(bg_pos, -torch.log(aff + EPS))
    fg = mean_over(fg_pos, -torch.log(aff + EPS))
    ng = mean_over(neg, -torch.log(1 + EPS - aff))
    pos = bg / 2 + fg / 2
    return {"bg_pos": bg, "fg_pos": fg, "neg": ng, "pos": pos, "total": (pos + ng) / 2}
