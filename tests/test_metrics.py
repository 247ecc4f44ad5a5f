"""tools/metrics.py against independent pure-Python references and a hand-worked example."""

import math

import numpy as np
import pytest

from tools import metrics

IGNORE = 255


# ---------------------------------------------------------------------------------------------
# Independent references: plain loops over pixels and classes
# ---------------------------------------------------------------------------------------------
def brute_counts(pred, gt, num_classes, keep=None, counts=None):
    """P, T, TP lists by walking every pixel. `keep[c]` False: class c gets nothing from this image."""
    P, T, TP = counts or ([0] * num_classes, [0] * num_classes, [0] * num_classes)
    kept = (lambda c: True) if keep is None else (lambda c: bool(keep[c]))
    for p, g in zip(np.ravel(pred).tolist(), np.ravel(gt).tolist()):
        if g == IGNORE:
            continue
        if 0 <= g < num_classes and kept(g):
            T[g] += 1
            if p == g:
                TP[g] += 1
        if 0 <= p < num_classes and kept(p):
            P[p] += 1
    return P, T, TP


def brute_scores(P, T, TP):
    """(iou list with None, mIoU %, FP, FN) by looping over classes."""
    ious, fps, fns = [], [], []
    for c in range(len(P)):
        union = T[c] + P[c] - TP[c]
        if union == 0:
            ious.append(None)
            continue
        ious.append(TP[c] / union)
        if c > 0:
            fps.append((P[c] - TP[c]) / union)
            fns.append((T[c] - TP[c]) / union)
    defined = [v for v in ious if v is not None]

    def mean(xs):
        return sum(xs) / len(xs) if xs else math.nan

    return ious, 100 * mean(defined), mean(fps), mean(fns)


def brute_rsepm_prediction(keys, seed, threshold, num_classes):
    """The original procedure: scatter the planes into a full class-indexed stack (zeros for
    absent classes), put a constant background plane in front, argmax."""
    _, h, w = seed.shape
    full = np.zeros((num_classes - 1, h, w), dtype=np.float32)
    for plane, key in zip(seed, keys[1:]):
        full[key - 1] = plane
    stacked = np.concatenate([np.full((1, h, w), threshold, dtype=np.float32), full])
    return stacked.argmax(axis=0)


def assert_scores_match(confusion, P, T, TP):
    ious, miou, fp, fn = brute_scores(P, T, TP)
    got = metrics.segmentation_scores(confusion)
    expected_iou = np.array([np.nan if v is None else v for v in ious])
    np.testing.assert_allclose(got["iou"], expected_iou, rtol=1e-12, equal_nan=True)
    np.testing.assert_allclose([got["mIoU"], got["FP"], got["FN"]], [miou, fp, fn], rtol=1e-12, equal_nan=True)
    pred_count, true_count, hit = metrics.class_counts(confusion)
    assert pred_count.tolist() == P and true_count.tolist() == T and hit.tolist() == TP


def blocky(rng, shape, values, block=4):
    """Random piecewise-constant map: rng choices of `values` on a coarse grid, upsampled."""
    h, w = shape
    coarse = rng.choice(values, size=(-(-h // block), -(-w // block)))
    return np.kron(coarse, np.ones((block, block), dtype=coarse.dtype))[:h, :w]


# ---------------------------------------------------------------------------------------------
# Confusion matrix and scores
# ---------------------------------------------------------------------------------------------
def test_hand_worked_3x3_example():
    # gt/pred pairs over the 8 non-ignored pixels: (0,1) (0,1) (1,1) (0,0) (1,1) (1,2) (2,2) (2,7).
    gt = np.array([[0, 0, 1], [0, 1, 1], [255, 2, 2]], dtype=np.uint8)
    pred = np.array([[1, 1, 1], [0, 1, 2], [0, 2, 7]], dtype=np.uint8)
    confusion = metrics.confusion_matrix(pred, gt, num_classes=4)
    # T = 3, 3, 2, 0; P = 1, 4, 2, 0 (the 7 is nobody's); TP = 1, 2, 1, 0
    # unions 3, 5, 3, 0 -> IoU 1/3, 2/5, 1/3, undefined (class 3 absent from both)
    scores = metrics.segmentation_scores(confusion)
    np.testing.assert_allclose(scores["iou"], [1 / 3, 2 / 5, 1 / 3, np.nan], equal_nan=True)
    assert scores["mIoU"] == pytest.approx(100 * (1 / 3 + 2 / 5 + 1 / 3) / 3)  # 35.56 %
    assert scores["FP"] == pytest.approx(((4 - 2) / 5 + (2 - 1) / 3) / 2)  # 11/30
    assert scores["FN"] == pytest.approx(((3 - 2) / 5 + (2 - 1) / 3) / 2)  # 4/15
    assert confusion[2, 4] == 1  # the out-of-range prediction sits in the "no class" column
    assert confusion.sum() == 8


@pytest.mark.parametrize("seed", range(5))
def test_confusion_matches_brute_force_with_ignore_and_invalid(seed):
    rng = np.random.default_rng(seed)
    num_classes = 5
    gt = rng.choice([0, 1, 2, 4, IGNORE], size=(9, 11), p=[0.3, 0.2, 0.2, 0.2, 0.1]).astype(np.uint8)
    # class 3 absent from both (NaN, excluded from means); 5, 9 and 255 are out of range
    pred = rng.choice([0, 1, 2, 4, 5, 9, 255], size=(9, 11)).astype(np.uint8)
    confusion = metrics.confusion_matrix(pred, gt, num_classes)
    assert_scores_match(confusion, *brute_counts(pred, gt, num_classes))
    assert np.isnan(metrics.segmentation_scores(confusion)["iou"][3])


def test_signed_predictions_outside_range_count_as_wrong():
    gt = np.array([[1, 1], [0, 0]])
    pred = np.array([[-1, 1], [0, 3]])
    confusion = metrics.confusion_matrix(pred, gt, num_classes=2)
    assert_scores_match(confusion, *brute_counts(pred, gt, 2))


def test_meter_sums_images_like_one_big_image():
    rng = np.random.default_rng(7)
    meter = metrics.ConfusionMeter(num_classes=4)
    counts = None
    for _ in range(3):
        gt = rng.choice([0, 1, 2, IGNORE], size=(6, 7)).astype(np.uint8)
        pred = rng.integers(0, 6, size=(6, 7)).astype(np.uint8)
        meter.add_prediction(pred, gt)
        counts = brute_counts(pred, gt, 4, counts=counts)
    other = metrics.ConfusionMeter(num_classes=4)
    other += meter
    assert_scores_match(other.matrix[0], *counts)


def test_ground_truth_outside_classes_is_an_error():
    gt = np.array([[0, 30]], dtype=np.uint8)
    with pytest.raises(ValueError, match="30"):
        metrics.confusion_matrix(np.zeros_like(gt), gt, num_classes=21)


def test_all_ignored_gives_nan_scores():
    gt = np.full((3, 3), IGNORE, dtype=np.uint8)
    scores = metrics.segmentation_scores(metrics.confusion_matrix(gt * 0, gt, 3))
    assert np.isnan(scores["mIoU"]) and np.isnan(scores["FP"]) and np.isnan(scores["FN"])
    assert metrics.best_threshold_index([np.nan, np.nan]) is None
    assert metrics.best_threshold_index([1.0, 3.0, np.nan, 3.0]) == 1


def test_exclude_classes_zeroes_only_the_dropped_classes():
    rng = np.random.default_rng(3)
    confusion = rng.integers(0, 50, size=(2, 6, 6))
    confusion[:, 5, :] = 0  # nothing excluded yet
    keep = np.array([True, False, True, True, False])
    out = metrics.exclude_classes(confusion, keep)
    before, after = metrics.class_counts(confusion), metrics.class_counts(out)
    for b, a in zip(before, after):
        np.testing.assert_array_equal(a[:, keep], b[:, keep])
        assert not a[:, ~keep].any()


# ---------------------------------------------------------------------------------------------
# Seeds: threshold sweep, ties, seg dialect, tag rule
# ---------------------------------------------------------------------------------------------
def quantised_seed(rng, k, shape):
    """Seed planes on a 0.05 grid so that ties with thresholds and between classes are common."""
    return (rng.integers(0, 21, size=(k,) + shape) * 0.05).astype(np.float32)


@pytest.mark.parametrize("case", range(4))
def test_sweep_matches_brute_force_stack_and_argmax(case):
    rng = np.random.default_rng(100 + case)
    num_classes = 6
    shape = (10, 13)
    keys = np.array([0] + sorted(rng.choice(np.arange(1, 6), size=case % 3 + 1, replace=False).tolist()))
    seed = quantised_seed(rng, len(keys) - 1, shape)
    gt = rng.choice([0, 1, 2, 3, 4, 5, IGNORE], size=shape).astype(np.uint8)
    thresholds = metrics.sweep_thresholds(0.10, 0.80, 0.05)
    got = metrics.seed_sweep_confusions({"keys": keys, "seed": seed, "dialect": "rsepm"}, gt, thresholds, num_classes)
    assert got.shape == (15, num_classes + 1, num_classes + 1)
    for row, threshold in enumerate(thresholds):
        pred = brute_rsepm_prediction(keys, seed, threshold, num_classes)
        assert_scores_match(got[row], *brute_counts(pred, gt, num_classes))


def test_sweep_ties_background_wins_at_equality_then_lowest_class():
    keys = np.array([0, 4, 2])  # deliberately not sorted
    seed = np.zeros((2, 1, 4), dtype=np.float32)
    seed[0, 0] = [0.3, 0.3, 0.2, 0.5]  # class 4
    seed[1, 0] = [0.3, 0.1, 0.2, 0.5]  # class 2
    gt = np.zeros((1, 4), dtype=np.uint8)
    confusion = metrics.seed_sweep_confusions(
        {"keys": keys, "seed": seed, "dialect": "rsepm"}, gt, [0.2, 0.3], num_classes=5
    )
    # t = 0.2: pixel0 tie 2/4 -> 2; pixel1 -> 4; pixel2 equals t -> background; pixel3 tie -> 2
    np.testing.assert_array_equal(confusion[0, 0, :5], [1, 0, 2, 0, 1])
    # t = 0.3: pixels 0..2 at or below t -> background; pixel3 -> 2
    np.testing.assert_array_equal(confusion[1, 0, :5], [3, 0, 1, 0, 0])
    for row, threshold in enumerate([0.2, 0.3]):
        pred = brute_rsepm_prediction(keys, seed, threshold, 5)
        assert_scores_match(confusion[row], *brute_counts(pred, gt, 5))


def test_float32_threshold_comparison_like_the_original():
    # 0.15 in float32 is 0.15000000596; a seed storing float32(0.15) ties with t = 0.15.
    seed = np.full((1, 1, 1), 0.15, dtype=np.float32)
    confusion = metrics.seed_sweep_confusions(
        {"keys": np.array([0, 1]), "seed": seed}, np.zeros((1, 1), np.uint8), [0.1, 0.15, 0.2], num_classes=2
    )
    assert confusion[:, 0, 1].tolist() == [1, 0, 0]  # foreground only for t = 0.1


def test_empty_seed_predicts_background_everywhere():
    seed = np.zeros((0, 3, 4), dtype=np.float32)
    gt = np.array([[0, 1, 1, 255]] * 3, dtype=np.uint8)
    confusion = metrics.seed_sweep_confusions(
        {"keys": np.array([0]), "seed": seed, "dialect": "rsepm"}, gt, [0.1, 0.5], num_classes=3
    )
    for row in confusion:
        assert_scores_match(row, *brute_counts(np.zeros_like(gt), gt, 3))


def test_seed_key_outside_classes_counts_as_wrong():
    seed = np.ones((1, 2, 2), dtype=np.float32)
    gt = np.ones((2, 2), dtype=np.uint8)
    confusion = metrics.seed_sweep_confusions({"keys": np.array([0, 9]), "seed": seed}, gt, [0.5], 3)
    P, T, TP = metrics.class_counts(confusion[0])
    assert P.tolist() == [0, 0, 0] and T.tolist() == [0, 4, 0] and TP.sum() == 0


def test_seg_dialect_is_argmax_through_keys_without_threshold():
    rng = np.random.default_rng(11)
    keys = np.array([0, 2, 5])
    seed = (rng.integers(1, 6, size=(3, 7, 8)) * 0.05).astype(np.float32)  # ties common
    gt = rng.choice([0, 2, 3, 5, IGNORE], size=(7, 8)).astype(np.uint8)
    confusion = metrics.seed_sweep_confusions(
        {"keys": keys, "seed": seed, "dialect": "seg"}, gt, [0.1, 0.5, 0.9], num_classes=6
    )
    assert confusion.shape == (1, 7, 7)
    full = np.zeros((6, 7, 8), dtype=np.float32)  # reference: scatter by class, argmax
    full[keys] = seed
    pred = full.argmax(axis=0)
    assert_scores_match(confusion[0], *brute_counts(pred, gt, 6))


def test_train_domain_tag_rule_matches_per_image_class_skipping():
    """A class absent from the image's tags adds nothing to P, T or TP for that image; the other
    classes (background included) keep every pixel, including those that meet an untagged class."""
    rng = np.random.default_rng(5)
    num_classes = 6
    thresholds = [0.1, 0.3, 0.5]
    with_rule = np.zeros((3, 7, 7), dtype=np.int64)
    without = np.zeros((3, 7, 7), dtype=np.int64)
    reference = [None] * 3
    for image in range(4):
        tags = sorted(rng.choice(np.arange(1, 6), size=2, replace=False).tolist())
        untagged = [c for c in range(1, 6) if c not in tags][image % 3]
        keys = np.array([0] + sorted(tags + [untagged]))  # the seed predicts an untagged class too
        seed = quantised_seed(rng, 3, (8, 9))
        gt = blocky(rng, (8, 9), np.array([0, tags[0], tags[1], untagged, IGNORE], dtype=np.uint8), block=2)
        keep = metrics.tag_keep_mask(tags, num_classes)
        seed_dict = {"keys": keys, "seed": seed, "dialect": "rsepm"}
        with_rule += metrics.seed_sweep_confusions(seed_dict, gt, thresholds, num_classes, keep)
        without += metrics.seed_sweep_confusions(seed_dict, gt, thresholds, num_classes)
        for row, threshold in enumerate(thresholds):
            pred = brute_rsepm_prediction(keys, seed, threshold, num_classes)
            reference[row] = brute_counts(pred, gt, num_classes, keep=keep, counts=reference[row])
    for row in range(3):
        assert_scores_match(with_rule[row], *reference[row])
    assert not np.array_equal(metrics.class_counts(with_rule)[1], metrics.class_counts(without)[1])


def test_tag_keep_mask():
    assert metrics.tag_keep_mask([3, 1], 5).tolist() == [True, True, False, True, False]
    assert metrics.tag_keep_mask([], 3).tolist() == [True, False, False]


def test_sweep_thresholds_inclusive_and_validated():
    assert metrics.sweep_thresholds() == [round(0.10 + 0.05 * i, 2) for i in range(15)]
    assert metrics.sweep_thresholds(0.3, 0.3, 0.05) == [0.3]
    with pytest.raises(ValueError):
        metrics.sweep_thresholds(0.5, 0.1, 0.05)
    with pytest.raises(ValueError):
        metrics.sweep_thresholds(0.1, 0.5, 0.0)


def test_th_interval_gives_at_most_1000_thresholds():
    """Before: --th_interval 1e-7 built 7 million thresholds (and matrices) without a word."""
    with pytest.raises(ValueError, match="7,000,001 thresholds .* more than 1,000"):
        metrics.sweep_thresholds(0.1, 0.8, 1e-7)
    assert len(metrics.sweep_thresholds(0.0, 0.999, 0.001)) == 1000


# ---------------------------------------------------------------------------------------------
# average precision (tools/toy/pretrain_toy.py's score of its classifier)
# ---------------------------------------------------------------------------------------------
def test_average_precision_hand_worked():
    # Ranked: +, -, +, -  ->  precision 1 at the first positive, 2/3 at the second: (1 + 2/3) / 2.
    assert metrics.average_precision([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]) == pytest.approx(5 / 6)
    # A tie between a positive and a negative enters together: precision 1/2 at recall 1, not 1.
    assert metrics.average_precision([0.3, 0.5, 0.5], [0, 1, 0]) == pytest.approx(0.5)
    assert metrics.average_precision([0.1, 0.2], [1, 1]) == pytest.approx(1.0)
    assert math.isnan(metrics.average_precision([0.1, 0.2], [0, 0]))


@pytest.mark.parametrize("seed", range(5))
def test_average_precision_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 6, size=40) / 5.0  # many ties
    labels = rng.random(40) < 0.4
    # Brute force: every distinct threshold, high to low, precision and recall counted by loops.
    expected, previous_recall = 0.0, 0.0
    for t in sorted(set(scores.tolist()), reverse=True):
        kept = [label for score, label in zip(scores, labels) if score >= t]
        recall = sum(kept) / labels.sum()
        expected += (recall - previous_recall) * sum(kept) / len(kept)
        previous_recall = recall
    assert metrics.average_precision(scores, labels) == pytest.approx(expected)
    # Without ties AP is the mean precision at the rank of each positive (the classical form).
    untied = rng.permutation(40).astype(float)
    ranks = np.argsort(np.argsort(-untied)) + 1
    positive_ranks = np.sort(ranks[labels])
    classical = np.mean(np.arange(1, len(positive_ranks) + 1) / positive_ranks)
    assert metrics.average_precision(untied, labels) == pytest.approx(classical)
