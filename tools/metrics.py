"""Segmentation metrics (docs/formats.md#metrics): one definition, built on a confusion matrix.

Every number evaluate.py reports comes from an extended confusion matrix of shape
(..., C+1, C+1), C = number of classes including background:

    matrix[g, p] = number of pixels with ground-truth class g and predicted class p.

Index C is "no class" on either axis:
- column C holds predictions outside 0..C-1 (they are wrong: they add to T of the true class and
  to nobody's P or TP);
- row C holds pixels whose ground-truth class was excluded for that image (train-domain tag rule
  below): they still add to P of the predicted class.
Ground-truth pixels equal to `ignore_index` (255) never enter the matrix.

From the matrix, per class c: P = predicted c, T = ground truth c, TP = both,
IoU = TP / (T + P - TP) (NaN when T + P - TP = 0), mIoU = mean of the defined IoUs in percent,
background included; FP = (P - TP) / union and FN = (T - TP) / union averaged over the foreground
classes whose union is non-zero.

Matrices are plain int64 arrays, so summing them over images (in any order, in any process)
gives exactly the same result.
"""

import warnings

import numpy as np

from core.io import IGNORE_INDEX


# ---------------------------------------------------------------------------------------------
# Building confusion matrices
# ---------------------------------------------------------------------------------------------
def _gt_rows(gt, num_classes, ignore_index):
    """Flattened ground truth as row indices: 0..C-1 for classes, C+1 for ignored pixels.

    Row C+1 is dropped by the callers, row C ("excluded") stays empty here. Any other value is
    a malformed mask and raises ValueError.
    """
    rows = np.asarray(gt).reshape(-1).astype(np.intp)
    outside = (rows < 0) | (rows >= num_classes)
    if outside.any():
        bad = outside & (rows != ignore_index)
        if bad.any():
            values = np.unique(rows[bad])[:5].tolist()
            raise ValueError(
                f"ground truth holds values {values} outside the classes 0..{num_classes - 1} "
                f"and not the ignore index {ignore_index}"
            )
        rows[outside] = num_classes + 1
    return rows


def _pred_columns(pred, num_classes):
    """Flattened prediction as column indices; values outside 0..C-1 go to the "no class" column C."""
    cols = np.asarray(pred).reshape(-1).astype(np.intp)
    cols[(cols < 0) | (cols >= num_classes)] = num_classes
    return cols


def confusion_matrix(pred, gt, num_classes, ignore_index=IGNORE_INDEX):
    """Confusion matrix of one prediction.

    Args:
        pred: integer (H, W) predicted class indices (any value outside 0..C-1 counts as wrong).
        gt: integer (H, W) ground-truth class indices, `ignore_index` = not evaluated.
        num_classes: C, background included.
    Returns:
        int64 (C+1, C+1) matrix, rows = ground truth, columns = prediction (see module docstring).
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}")
    size = num_classes + 1
    rows = _gt_rows(gt, num_classes, ignore_index)
    cols = _pred_columns(pred, num_classes)
    counts = np.bincount(rows * size + cols, minlength=(size + 1) * size)
    return counts.reshape(size + 1, size)[:size]


def exclude_classes(confusion, keep):
    """Apply "class c is not accumulated for this image" to a confusion matrix.

    For each class c with keep[c] False, c's P, T and TP become zero while every other class
    keeps its counts: pixels with ground truth c move to row C (they still count as predictions
    of whatever was predicted), then pixels predicted as c move to column C (they still count
    toward their ground-truth class). Vectorised over classes and leading dimensions.

    Args:
        confusion: int (..., C+1, C+1).
        keep: bool (C,).
    Returns:
        a new int64 (..., C+1, C+1) matrix.
    """
    confusion = np.array(confusion, dtype=np.int64, copy=True)
    drop = np.flatnonzero(~np.asarray(keep, dtype=bool))
    if drop.size == 0:
        return confusion
    none = confusion.shape[-1] - 1
    confusion[..., none, :] += confusion[..., drop, :].sum(axis=-2)
    confusion[..., drop, :] = 0
    confusion[..., :, none] += confusion[..., :, drop].sum(axis=-1)
    confusion[..., :, drop] = 0
    return confusion


def tag_keep_mask(tags, num_classes):
    """bool (C,): background and the image's 1-based `tags` are True."""
    keep = np.zeros(num_classes, dtype=bool)
    keep[0] = True
    tags = np.asarray(list(tags), dtype=np.intp)
    keep[tags[(tags > 0) & (tags < num_classes)]] = True
    return keep


# ---------------------------------------------------------------------------------------------
# Seeds (docs/formats.md#seed-files) and the background-threshold sweep
# ---------------------------------------------------------------------------------------------
MAX_THRESHOLDS = 1000  # each threshold is one (C+1, C+1) matrix per image and one pass over its scores


def sweep_thresholds(st_th=0.10, end_th=0.80, th_interval=0.05, max_count=MAX_THRESHOLDS):
    """Background thresholds st_th, st_th + th_interval, ..., end_th inclusive (rounded to 1e-10,
    so 0.15 is 0.15 and not 0.15000000000000002). At most `max_count` thresholds."""
    if not all(np.isfinite([st_th, end_th, th_interval])):
        raise ValueError(
            f"--st_th, --end_th and --th_interval must be finite numbers, got {st_th}, {end_th}, {th_interval}"
        )
    if not th_interval > 0:
        raise ValueError(f"--th_interval must be positive, got {th_interval}")
    if end_th < st_th:
        raise ValueError(f"--end_th ({end_th}) is below --st_th ({st_th})")
    steps = (end_th - st_th) / th_interval
    if steps + 1 > max_count:
        raise ValueError(
            f"--th_interval {th_interval:g} gives {steps + 1:,.0f} thresholds from {st_th:g} to "
            f"{end_th:g}, more than {max_count:,}; use a step of at least "
            f"{(end_th - st_th) / (max_count - 1):.2g}"
        )
    count = int(np.floor(steps + 1e-9)) + 1
    return [round(st_th + i * th_interval, 10) for i in range(count)]


def _planes_by_class(keys, seed):
    """Reorder planes by class index so argmax ties go to the lowest class index, as in the
    original, which scattered the planes into a full class-indexed array before its argmax."""
    order = np.argsort(keys, kind="stable")
    if np.all(order == np.arange(len(keys))):
        return keys, seed
    return keys[order], seed[order]


def _running_argmax(planes):
    """Max and first argmax over the leading axis of float (K, N), K >= 1.

    numpy's argmax along a short leading axis is slow (about 1 ms per plane of a VOC image);
    a running maximum over the K planes is ~10x faster. Strict '>' keeps the earlier plane on
    ties, matching argmax. Returns (score (N,), index (N,) uint8 or intp).
    """
    score = planes[0].copy()
    best = np.zeros(score.shape, dtype=np.uint8 if len(planes) <= 256 else np.intp)
    for k in range(1, len(planes)):
        better = planes[k] > score
        # k exceeds every earlier index, so "take k where better" is a maximum (no slow np.where)
        np.maximum(best, better.astype(best.dtype) * best.dtype.type(k), out=best)
        np.maximum(score, planes[k], out=score)
    return score, best


def seed_foreground(seed_dict, num_classes):
    """Per-pixel best foreground class and its score of an rsepm seed.

    Args:
        seed_dict: {"keys": int (K+1,) = [0, c1..cK], "seed": float (K, H, W)}.
    Returns:
        (score float32 (H*W,), class intp (H*W,)): the max over the K planes and its class
        (mapped through keys, out-of-range keys -> C); -inf and 0 when K = 0.
    """
    keys = np.asarray(seed_dict["keys"])[1:]
    seed = np.asarray(seed_dict["seed"], dtype=np.float32)
    pixels = seed.shape[1] * seed.shape[2]
    if len(keys) == 0:
        return np.full(pixels, -np.inf, dtype=np.float32), np.zeros(pixels, dtype=np.intp)
    keys, seed = _planes_by_class(keys, seed)
    score, best = _running_argmax(seed.reshape(len(keys), pixels))
    return score, _pred_columns(keys, num_classes)[best]


def seg_seed_prediction(seed_dict):
    """Class map (H, W) of a seg-dialect seed: argmax of the stored planes mapped through keys
    (no threshold; background is one of the planes). No plane at all gives background."""
    keys = np.asarray(seed_dict["keys"])
    seed = np.asarray(seed_dict["seed"])
    if len(keys) == 0:
        return np.zeros(seed.shape[1:], dtype=np.intp)
    keys, seed = _planes_by_class(keys, seed)
    _, best = _running_argmax(seed.reshape(len(keys), -1))
    return keys[best].reshape(seed.shape[1:])


def seed_sweep_confusions(seed_dict, gt, thresholds, num_classes, tag_mask=None, ignore_index=IGNORE_INDEX):
    """Confusion matrices of one seed file for every background threshold.

    rsepm dialect: for threshold t the prediction is argmax([t, s_1, ..., s_K]) mapped through
    keys, i.e. the best foreground class where its score > t, else background (a tie goes to
    the first plane, the background; compared in float32 as the original did). The best
    foreground class and score are computed once; a pixel then predicts foreground for exactly
    the first n thresholds, n = #{t < score}. One bincount over (n, gt, class) followed by
    cumulative sums over n gives all threshold rows at once, at a cost independent of the
    number of thresholds.
    seg dialect: one prediction (argmax through keys), returned as a single row that
    broadcasts over the thresholds.

    Train-domain tag rule (the original's "label" argument): for each foreground class that is
    not among the image's tags, that image adds nothing to the class's P, T or TP. This is not
    the same as dropping the pixels: a pixel of an untagged ground-truth class that is predicted
    as background still adds to the background's P, and a pixel wrongly predicted as an untagged
    class still adds to its true class's T. Background is always accumulated.
    See exclude_classes.

    Args:
        seed_dict: {"keys", "seed" (K, H, W), "dialect": "rsepm" | "seg"} (core.io.load_seed).
        gt: integer (H, W) ground truth.
        thresholds: ascending background thresholds (R,).
        tag_mask: optional bool (C,) from tag_keep_mask; None = accumulate every class.
    Returns:
        int64 (R, C+1, C+1) for rsepm, (1, C+1, C+1) for seg.
    """
    seed = np.asarray(seed_dict["seed"])
    gt = np.asarray(gt)
    if tuple(seed.shape[1:]) != tuple(gt.shape):
        raise ValueError(f"seed size {seed.shape[1:]} differs from ground-truth size {gt.shape}")
    if seed_dict.get("dialect", "rsepm") == "seg":
        confusion = confusion_matrix(seg_seed_prediction(seed_dict), gt, num_classes, ignore_index)[None]
    else:
        confusion = _rsepm_sweep(seed_dict, gt, thresholds, num_classes, ignore_index)
    if tag_mask is not None:
        confusion = exclude_classes(confusion, tag_mask)
    return confusion


def _rsepm_sweep(seed_dict, gt, thresholds, num_classes, ignore_index):
    size = num_classes + 1
    thresholds = np.asarray(thresholds, dtype=np.float32)
    if np.any(np.diff(thresholds) < 0):
        raise ValueError("thresholds must be ascending")
    rounds = len(thresholds)
    score, fg_class = seed_foreground(seed_dict, num_classes)
    # wins = number of thresholds below the score; R small comparisons are ~10x faster than
    # np.searchsorted on unsorted scores.
    wins = np.zeros(score.shape, dtype=np.uint8 if rounds < 256 else np.intp)
    for threshold in thresholds:
        wins += score > threshold
    rows = _gt_rows(gt, num_classes, ignore_index)
    index = wins.astype(np.intp)  # flat index of (wins, gt row, class), built in place
    index *= size + 1
    index += rows
    index *= size
    index += fg_class
    hist = np.bincount(index, minlength=(rounds + 1) * (size + 1) * size)
    hist = hist.reshape(rounds + 1, size + 1, size)[:, :size]  # drop the ignore row
    # Row r: foreground where wins > r, background (column 0) where wins <= r.
    confusion = np.cumsum(hist[::-1], axis=0)[::-1][1:].copy()
    confusion[:, :, 0] += np.cumsum(hist.sum(axis=2), axis=0)[:rounds]
    return confusion


# ---------------------------------------------------------------------------------------------
# Scores
# ---------------------------------------------------------------------------------------------
def class_counts(confusion):
    """(..., C+1, C+1) -> P, T, TP, each int64 (..., C)."""
    confusion = np.asarray(confusion)
    classes = confusion.shape[-1] - 1
    pred = confusion[..., :, :classes].sum(axis=-2)
    true = confusion[..., :classes, :].sum(axis=-1)
    hit = np.diagonal(confusion, axis1=-2, axis2=-1)[..., :classes]
    return pred, true, hit


def _nanmean(values, axis):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slice -> NaN, on purpose
        return np.nanmean(values, axis=axis)


def segmentation_scores(confusion):
    """Scores of one or many confusion matrices.

    Args:
        confusion: int (..., C+1, C+1).
    Returns:
        dict of float64 arrays: "iou" (..., C) in [0, 1], NaN where T + P - TP = 0;
        "mIoU" (...) in percent; "FP", "FN" (...) fractions averaged over the foreground classes.
    """
    pred, true, hit = (x.astype(np.float64) for x in class_counts(confusion))
    union = true + pred - hit
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = hit / union
        fp = (pred - hit) / union
        fn = (true - hit) / union
    return {
        "iou": iou,
        "mIoU": _nanmean(iou, -1) * 100.0,
        "FP": _nanmean(fp[..., 1:], -1),
        "FN": _nanmean(fn[..., 1:], -1),
    }


def best_threshold_index(mious):
    """Index of the highest mIoU (first one on ties, NaN ignored); None when all are NaN."""
    mious = np.asarray(mious, dtype=np.float64)
    if mious.size == 0 or np.all(np.isnan(mious)):
        return None
    return int(np.nanargmax(mious))


class ConfusionMeter:
    """Running sum of confusion matrices, one row per threshold (one row for masks).

    Args:
        num_classes: C, background included.
        num_rows: R, number of thresholds (1 for masks).
    Attributes:
        matrix: int64 (R, C+1, C+1).
    """

    def __init__(self, num_classes, num_rows=1):
        self.num_classes = num_classes
        self.matrix = np.zeros((num_rows, num_classes + 1, num_classes + 1), dtype=np.int64)

    def add(self, confusion):
        """Add (C+1, C+1), (1, C+1, C+1) (broadcast to every row) or (R, C+1, C+1) counts."""
        self.matrix += np.asarray(confusion, dtype=np.int64)
        return self

    def add_prediction(self, pred, gt, ignore_index=IGNORE_INDEX):
        return self.add(confusion_matrix(pred, gt, self.num_classes, ignore_index))

    def __iadd__(self, other):
        return self.add(other.matrix if isinstance(other, ConfusionMeter) else other)

    def scores(self):
        """segmentation_scores of every row: arrays with leading dimension R."""
        return segmentation_scores(self.matrix)


# ---------------------------------------------------------------------------------------------
# Image-level classification (tools/toy/pretrain_toy.py reports how well its backbone tags images)
# ---------------------------------------------------------------------------------------------
def average_precision(scores, labels):
    """Non-interpolated average precision of one class, in [0, 1]; NaN without positives.

    scores: (N,) floats; labels: (N,) 0/1. AP = sum over the distinct score thresholds t (high to
    low) of (R(t) - R(t_prev)) * P(t), with P and R the precision and recall of `score >= t`:
    tied scores enter together, so the order of tied items does not matter (the definition of
    scikit-learn's average_precision_score).
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).ravel().astype(bool)
    positives = int(labels.sum())
    if positives == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    scores, labels = scores[order], labels[order]
    true_positives = np.cumsum(labels)
    # the last index of each run of tied scores closes one threshold
    last = np.r_[np.flatnonzero(np.diff(scores) != 0), scores.size - 1]
    tp = true_positives[last]
    precision = tp / (last + 1)
    recall_steps = np.diff(np.r_[0, tp]) / positives
    return float((recall_steps * precision).sum())
