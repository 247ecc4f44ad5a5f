import numpy as np
import torch

from core.targets import (
    certain_filter,
    edge_predict,
    mix_batch,
    normalize_cam,
    paste,
    random_partner,
    restrict_to_tags,
    valid_cells,
)

IGN = 255


# ---------------------------------------------------------------- normalize_cam


def test_normalize_cam_hand_worked():
    cam = torch.tensor([[[[-1.0, 2.0], [4.0, 1.0]], [[3.0, -2.0], [0.0, 6.0]]]])  # (1, 2, 2, 2)
    out = normalize_cam(cam, eps=0.0)
    torch.testing.assert_close(out[0, 0], torch.tensor([[0.0, 0.5], [1.0, 0.25]]))
    torch.testing.assert_close(out[0, 1], torch.tensor([[0.5, 0.0], [0.0, 1.0]]))
    zeroed = normalize_cam(cam, tags=torch.tensor([[0, 1]]))
    assert (zeroed[0, 0] == 0).all() and zeroed[0, 1].max() > 0.99


def test_normalize_cam_all_negative_map_is_zero_and_differentiable():
    cam = torch.tensor([[[[-1.0, 2.0]], [[-3.0, -1.0]]]], requires_grad=True)
    out = normalize_cam(cam)
    assert (out[0, 1] == 0).all()
    out.sum().backward()
    assert torch.isfinite(cam.grad).all() and cam.grad.abs().sum() > 0
    with torch.no_grad():
        assert normalize_cam(cam).requires_grad is False


def test_normalize_cam_takes_the_max_over_valid_cells_only():
    cam = torch.tensor([[[[1.0, 2.0], [9.0, -1.0]]]])  # (1, 1, 2, 2); the 9 is padding
    valid = torch.tensor([[[True, True], [False, True]]])
    out = normalize_cam(cam, valid=valid, eps=0.0)
    torch.testing.assert_close(out[0, 0], torch.tensor([[0.5, 1.0], [0.0, 0.0]]))
    assert normalize_cam(cam, eps=0.0)[0, 0, 0, 1] == 2.0 / 9.0  # without the mask it counts


def test_valid_cells_majority_rule():
    # 8 x 8 image on a 2 x 2 grid (cells of 4 x 4 pixels). The box covers columns 0-5 (cell
    # column 1 half image: valid) and rows 0-4 (cell row 1: 1/4 image: padding).
    valid = torch.zeros(1, 8, 8, dtype=torch.bool)
    valid[0, :5, :6] = True
    assert valid_cells(valid, (2, 2)).tolist() == [[[True, True], [False, False]]]
    assert valid_cells(valid, (8, 8)).equal(valid)


# ---------------------------------------------------------------- certain_filter


def test_certain_filter_three_regions_and_untagged_class_never_chosen():
    # Three classes; class 1 is NOT tagged and is the largest everywhere.
    probs = torch.zeros(1, 3, 1, 6)
    probs[0, 0] = torch.tensor([0.90, 0.55, 0.54, 0.30, 0.10, 0.00])
    probs[0, 2] = torch.tensor([0.20, 0.10, 0.00, 0.40, 0.05, 0.00])
    probs[0, 1] = 1.0
    tags = torch.tensor([[1, 0, 1]])
    labels = certain_filter(probs, tags)
    # col 0: class 0 at 0.90 -> 1; col 1: 0.55 >= c -> 1; col 2: 0.54 -> ignore;
    # col 3: max 0.40 (class 2) between -> ignore; col 4: 0.10 <= u -> 0; col 5: 0 -> 0.
    assert labels.tolist() == [[[1, 1, IGN, IGN, 0, 0]]]
    assert labels.dtype == torch.long
    probs[0, 2, 0, 3] = 0.7
    assert certain_filter(probs, tags)[0, 0, 3] == 3  # class 2 -> label 3


def test_certain_filter_image_without_tags_is_background():
    probs = torch.full((1, 2, 2, 2), 0.9)
    assert (certain_filter(probs, torch.zeros(1, 2)) == 0).all()


# ---------------------------------------------------------------- restrict_to_tags


def test_restrict_to_tags_zeroes_untagged_and_sums_to_one():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 3, 4, generator=g)
    tags = torch.tensor([[1, 0, 0, 1], [0, 0, 0, 0]])
    probs = restrict_to_tags(logits, tags)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(2, 3, 4))
    assert (probs[0, [2, 3]] == 0).all() and (probs[0, [0, 1, 4]] > 0).all()
    assert (probs[1, 0] == 1).all()  # no tags: background only
    # Same as the full softmax, zeroed and renormalised.
    full = torch.softmax(logits, dim=1)
    keep = torch.tensor([1, 1, 0, 0, 1.0])[None, :, None, None]
    torch.testing.assert_close(probs[:1], (full * keep / (full * keep).sum(1, keepdim=True))[:1])


# ---------------------------------------------------------------- edge_predict


def brute_force_edge_predict(probs, delta, conf, dilations):
    p = probs.double().numpy()
    B, K, H, W = p.shape
    out = np.zeros((B, H, W), dtype=np.int64)
    for b in range(B):
        for y in range(H):
            for x in range(W):
                k = int(np.argmax(p[b, :, y, x]))
                edge = False
                for d in dilations:
                    for dy in (-1, 0, 1):
                        for dx in (-1, 0, 1):
                            qy = min(max(y + dy * d, 0), H - 1)
                            qx = min(max(x + dx * d, 0), W - 1)
                            edge |= abs(p[b, k, y, x] - p[b, k, qy, qx]) > delta
                out[b, y, x] = IGN if edge and p[b, :, y, x].max() < conf else k
    return out


def column_probs(p1_by_column, rows=3):
    """Two channels (background, class 1), constant down each column."""
    p1 = torch.tensor(p1_by_column).expand(rows, -1)
    return torch.stack([1 - p1, p1])[None]


def test_edge_predict_marks_the_uncertain_band_at_an_edge():
    probs = column_probs([0.95, 0.95, 0.95, 0.54, 0.46, 0.05, 0.05, 0.05])
    labels = edge_predict(probs)
    assert labels[0, :, :].tolist() == [[1, 1, 1, IGN, IGN, 0, 0, 0]] * 3


def test_edge_predict_flat_uncertain_region_is_not_an_edge():
    probs = torch.tensor([0.45, 0.35, 0.20])[None, :, None, None].expand(1, 3, 5, 6).clone()
    labels = edge_predict(probs)
    assert (labels == 0).all()  # uncertain everywhere, but no neighbour differs; borders too


def test_edge_predict_uses_the_second_dilation():
    # Gradual ramp: the jump exceeds delta only two columns away from column 3.
    probs = column_probs([0.95, 0.95, 0.74, 0.52, 0.30, 0.05, 0.05])
    assert edge_predict(probs, dilations=(1, 2))[0, 0].tolist() == [1, 1, 1, IGN, 0, 0, 0]
    assert edge_predict(probs, dilations=(1,))[0, 0].tolist() == [1, 1, 1, 1, 0, 0, 0]


def test_edge_predict_matches_brute_force_and_never_marks_confident_pixels():
    g = torch.Generator().manual_seed(1)
    probs = torch.softmax(torch.randn(2, 4, 7, 8, generator=g) * 2, dim=1)
    labels = edge_predict(probs, delta=0.3, conf=0.55, dilations=(1, 2))
    np.testing.assert_array_equal(labels.numpy(), brute_force_edge_predict(probs, 0.3, 0.55, (1, 2)))
    marked = labels == IGN
    assert marked.any() and (~marked).any()
    assert (probs.max(dim=1).values[marked] < 0.55).all()
    assert (labels[~marked] == probs.argmax(dim=1)[~marked]).all()


# ---------------------------------------------------------------- mix_batch


def make_batch():
    """Two images 8x8, labels 4x4 (stride 2 here), rs maps 4x4, C = 3 classes."""
    images = torch.stack([torch.full((3, 8, 8), 1.0), torch.full((3, 8, 8), 2.0)])
    labels = torch.zeros(2, 4, 4, dtype=torch.long)
    rs = torch.zeros(2, 3, 4, 4)
    tags = torch.tensor([[1, 0, 0], [0, 1, 1]])
    return images, labels, rs, tags


def test_mix_with_no_foreground_in_a_returns_b():
    images, labels, rs, tags = make_batch()
    labels[0] = torch.tensor([[0, 0, IGN, IGN]] * 4)  # A: background and ignore only: K = 0
    labels[1, :2] = 2
    labels[1, 2:] = 3
    rs[1, 1, :2] = 0.8
    rs[1, 2, 2:] = 0.6
    perm = torch.tensor([1, 0])
    im, lab, rmix, tmix = mix_batch(images, labels, rs, tags, perm)
    torch.testing.assert_close(im[0], images[1])
    assert torch.equal(lab[0], labels[1])
    torch.testing.assert_close(rmix[0], rs[1])
    assert tmix[0].tolist() == [0, 1, 1]


def test_mix_with_all_foreground_a_returns_a():
    images, labels, rs, tags = make_batch()
    labels[0] = 1
    rs[0, 0] = 0.9
    labels[1] = 2
    perm = torch.tensor([1, 0])
    im, lab, rmix, tmix = mix_batch(images, labels, rs, tags, perm)
    torch.testing.assert_close(im[0], images[0])
    assert torch.equal(lab[0], labels[0])
    torch.testing.assert_close(rmix[0], rs[0])
    assert tmix[0].tolist() == [1, 0, 0]  # B's classes are fully covered


def test_mix_pastes_a_foreground_at_image_resolution_and_keeps_visible_classes():
    images, labels, rs, tags = make_batch()
    labels[0, 0, 0] = 1  # A: one foreground cell -> a 2x2 image block
    labels[0, 0, 1] = IGN  # ignore in A is not pasted
    labels[1, 0, :] = 2  # B: class index 1 on the top row (partly covered by A's paste)
    labels[1, 3, 3] = 3  # B: class index 2 in one cell
    rs[0, 0] = 0.9
    rs[0, 1] = 0.7  # untagged class in A's rs map: must not leak into the mix
    rs[1, 1] = 0.4
    rs[1, 2] = 0.3
    perm = torch.tensor([1, 0])
    im, lab, rmix, tmix = mix_batch(images, labels, rs, tags, perm)
    expected_image = torch.full((3, 8, 8), 2.0)
    expected_image[:, :2, :2] = 1.0
    torch.testing.assert_close(im[0], expected_image)
    expected_labels = labels[1].clone()
    expected_labels[0, 0] = 1
    assert torch.equal(lab[0], expected_labels)
    k = torch.zeros(4, 4)
    k[0, 0] = 1
    torch.testing.assert_close(rmix[0, 0], 0.9 * k)
    torch.testing.assert_close(rmix[0, 1], 0.4 * (1 - k))
    torch.testing.assert_close(rmix[0, 2], 0.3 * (1 - k))
    assert tmix[0].tolist() == [1, 1, 1]
    # Pair (1 -> 0): image 1's top row covers image 0's only labelled pixel -> class 0 dropped.
    assert tmix[1].tolist() == [0, 1, 1]
    labels[1, 3, 3] = 0  # class index 2 of B has no pixel left -> dropped
    assert mix_batch(images, labels, rs, tags, perm)[3][0].tolist() == [1, 1, 0]


def test_paste_works_on_bool_valid_masks():
    valid = torch.tensor([[[True, False]], [[False, False]]])
    k = torch.tensor([[[1, 0]], [[0, 0]]])
    out = paste(k, valid, valid[torch.tensor([1, 0])])
    assert out.tolist() == [[[True, False]], [[True, False]]]


def test_random_partner_is_a_permutation_without_fixed_points():
    for b in (2, 3, 5, 16):
        g = torch.Generator().manual_seed(b)
        perm = random_partner(b, g)
        assert sorted(perm.tolist()) == list(range(b))
        assert (perm != torch.arange(b)).all()
        assert torch.equal(perm, random_partner(b, torch.Generator().manual_seed(b)))
    assert random_partner(1).tolist() == [0]


# ---------------------------------------------------------------- precision


def test_targets_under_cpu_bf16_autocast_equal_float32():
    g = torch.Generator().manual_seed(11)
    cam = torch.randn(2, 3, 4, 4, generator=g)
    tags = torch.tensor([[1, 0, 1], [0, 1, 1]])
    logits = torch.randn(2, 4, 8, 8, generator=g) * 3
    images = torch.randn(2, 3, 32, 32, generator=g)
    labels = torch.randint(0, 4, (2, 8, 8), generator=g)
    rs = torch.rand(2, 3, 8, 8, generator=g)
    perm = torch.tensor([1, 0])

    def run():
        probs = restrict_to_tags(logits, tags)
        return [
            normalize_cam(cam, tags),
            certain_filter(rs, tags),
            probs,
            edge_predict(probs),
            *mix_batch(images, labels, rs, tags, perm),
        ]

    expected = run()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = run()
    for e, o in zip(expected, got):
        assert o.dtype == e.dtype
        torch.testing.assert_close(o, e, atol=1e-6, rtol=0)
