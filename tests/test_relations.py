"""Relation labels from seeds, pair labels and the boundary loss on hand-worked examples."""

import math

import numpy as np
import pydensecrf.densecrf as dcrf
import pytest
import torch
from pydensecrf.utils import unary_from_labels

from core.randomwalk import PairGrid
from core.relations import (
    boundary_loss,
    foreground_planes,
    ir_label_from_seed,
    label_crf,
    labels_to_stride,
    relation_labels,
)


def test_ir_label_without_crf_by_hand():
    seed = np.array(
        [[[0.9, 0.4, 0.2, 0.0], [0.3, 0.06, 0.04, 0.0]], [[0.1, 0.5, 0.1, 0.0], [0.2, 0.05, 0.0, 0.31]]],
        dtype=np.float32,
    )
    got = ir_label_from_seed(seed, [4, 9], None, crf=False)
    # fg: class above 0.30 -> its id; bg: nothing above 0.05; in between (or exactly 0.30) ignored
    expected = np.array([[4, 9, 255, 0], [255, 255, 0, 9]], dtype=np.uint8)
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == np.uint8
    # no foreground planes: all background
    np.testing.assert_array_equal(ir_label_from_seed(seed[:0], [], None, crf=False), np.zeros((2, 4)))


def test_ir_label_with_crf_matches_label_unary_crf():
    rng = np.random.default_rng(0)
    image = np.zeros((24, 32, 3), np.uint8)
    image[:, 16:] = (200, 40, 40)
    image = np.clip(image + rng.integers(0, 20, image.shape), 0, 255).astype(np.uint8)
    seed = np.zeros((1, 24, 32), np.float32)
    seed[0, 4:20, 18:30] = 0.8  # confident object inside the red half
    seed[0, 2:22, 14:18] = 0.2  # uncertain rim
    got = ir_label_from_seed(seed, [3], image)

    def irn_crf(labels):  # pydensecrf's own label unary and IRN's pairwise settings
        d = dcrf.DenseCRF2D(32, 24, 2)
        d.setUnaryEnergy(unary_from_labels(labels, 2, gt_prob=0.7, zero_unsure=False))
        d.addPairwiseGaussian(sxy=3, compat=3)
        d.addPairwiseBilateral(sxy=50, srgb=5, rgbim=np.ascontiguousarray(image), compat=10)
        return np.argmax(np.array(d.inference(10)).reshape(2, 24, 32), axis=0)

    fg = irn_crf((seed[0] > 0.30).astype(np.int64))
    bg = irn_crf((seed[0] > 0.05).astype(np.int64))
    expected = np.where(fg == 1, 3, np.where(bg == 0, 0, 255))
    np.testing.assert_array_equal(got, expected)
    assert {0, 3} <= set(np.unique(got).tolist())


def test_label_crf_keeps_a_uniform_map():
    image = np.full((8, 8, 3), 100, np.uint8)
    labels = np.full((8, 8), 2)
    np.testing.assert_array_equal(label_crf(image, labels, 3), labels)


def test_foreground_planes_of_both_dialects():
    seed = np.random.rand(2, 3, 4).astype(np.float32)
    planes, keys = foreground_planes({"keys": np.array([0, 5, 7]), "seed": seed, "dialect": "rsepm"})
    assert keys.tolist() == [5, 7] and planes.shape == (2, 3, 4)
    planes, keys = foreground_planes({"keys": np.array([0, 7]), "seed": seed, "dialect": "seg"})
    assert keys.tolist() == [7]
    np.testing.assert_array_equal(planes, seed[1:])
    with pytest.raises(ValueError, match="placeholder"):
        foreground_planes({"keys": np.array([5, 7]), "seed": seed})


def test_labels_to_stride_picks_cell_centres():
    labels = torch.arange(6 * 9).reshape(1, 6, 9)
    got = labels_to_stride(labels, 4)
    assert got.shape == (1, 2, 3)
    assert got[0].tolist() == [[2 * 9 + 2, 2 * 9 + 6, 255], [255, 255, 255]]


def test_relation_labels_hand_counted():
    labels = torch.tensor([[[0, 0, 1, 1, 255], [0, 0, 1, 1, 1], [2, 0, 0, 1, 1]]])
    bg_pos, fg_pos, neg = relation_labels(labels, radius=2)
    # radius 2: directions (0,1), (1,-1), (1,0), (1,1); sources rows 0-1, columns 1-3: 24 pairs,
    # counted by hand: 4 background, 11 same-class foreground, 8 different, 1 touching 255
    assert bg_pos.shape == (1, 4, 6)
    assert (bg_pos.sum().item(), fg_pos.sum().item(), neg.sum().item()) == (4, 11, 8)
    assert not torch.any((bg_pos + fg_pos + neg) > 1)
    grid = PairGrid(2, (3, 5))
    d = [tuple(x) for x in grid.directions].index((0, 1))
    assert (bg_pos[0, d, 2].item(), fg_pos[0, d, 2].item(), neg[0, d, 2].item()) == (0, 0, 0)  # (0,3)-(0,4)
    d = [tuple(x) for x in grid.directions].index((1, -1))
    assert neg[0, d, 3].item() == 1  # (1,1)=0 against (2,0)=2


def test_relation_labels_match_loops():
    rng = np.random.default_rng(5)
    labels = rng.choice([0, 0, 1, 3, 255], size=(2, 6, 9))
    radius = 3
    bg_pos, fg_pos, neg = relation_labels(torch.from_numpy(labels), radius)
    grid = PairGrid(radius, (6, 9))
    for b in range(2):
        for d, (dy, dx) in enumerate(grid.directions):
            for s in range(grid.num_sources):
                y, x = divmod(s, grid.crop[1])
                a, c = labels[b, y, x + radius - 1], labels[b, y + dy, x + radius - 1 + dx]
                valid = a != 255 and c != 255
                assert bg_pos[b, d, s] == (valid and a == c == 0)
                assert fg_pos[b, d, s] == (valid and a == c != 0)
                assert neg[b, d, s] == (valid and a != c)


def test_boundary_loss_hand_worked():
    aff = torch.tensor([[[0.5, 0.9, 0.2, 0.8, 0.3]]], requires_grad=True)
    bg = torch.tensor([[[1.0, 0, 0, 0, 0]]])
    fg = torch.tensor([[[0, 1.0, 0, 0, 0]]])
    neg = torch.tensor([[[0, 0, 1.0, 1.0, 0]]])
    loss = boundary_loss(aff, bg, fg, neg)
    e = 1e-5
    expected_bg = -math.log(0.5 + e) / (1 + e)
    expected_fg = -math.log(0.9 + e) / (1 + e)
    expected_neg = (-math.log(1 + e - 0.2) - math.log(1 + e - 0.8)) / (2 + e)
    assert loss["bg_pos"].item() == pytest.approx(expected_bg, rel=1e-6)
    assert loss["fg_pos"].item() == pytest.approx(expected_fg, rel=1e-6)
    assert loss["neg"].item() == pytest.approx(expected_neg, rel=1e-6)
    total = (expected_bg / 2 + expected_fg / 2 + expected_neg) / 2
    assert loss["total"].item() == pytest.approx(total, rel=1e-6)
    loss["total"].backward()
    assert aff.grad[0, 0, 4].item() == 0  # an unlabelled pair gets no gradient
    # d total / d aff_bg = -1 / (4 (0.5 + e) (1 + e))
    assert aff.grad[0, 0, 0].item() == pytest.approx(-1 / (4 * (0.5 + e) * (1 + e)), rel=1e-5)
    # no pair of a kind: its term is 0, not NaN
    empty = boundary_loss(aff, bg * 0, fg, neg)
    assert empty["bg_pos"].item() == 0 and torch.isfinite(empty["total"])
