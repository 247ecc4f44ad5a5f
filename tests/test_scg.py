"""core/scg.py: SCG as in the authors' released `SCG` class (docs/method.md#scg)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.scg import scg_maps, self_correlation

EPS = 1e-10  # every eps of the released class


# ---------------------------------------------------------------- float64 brute-force reference
# Written position by position from docs/method.md#scg, with Python loops and lists: shares no
# code (and no matrix products) with core/scg.py.


def _unit(v):
    return v / (np.sqrt(sum(x * x for x in v)) + EPS)


def _col_normalise(m):
    n = len(m)
    out = [[0.0] * n for _ in range(n)]
    for j in range(n):
        total = sum(m[i][j] for i in range(n))
        for i in range(n):
            out[i][j] = m[i][j] / (total + EPS)
    return out


def brute_hsc(vectors, first_th=0.5, second_th=0.1, threshold_s=True):
    """H of one feature map from a list of N feature vectors (float64, nested lists).

    threshold_s=False is the variant in which the second order starts from the UNthresholded S
    (this project's earlier, wrong reading), kept to show the two differ."""
    n = len(vectors)
    unit = [_unit(np.asarray(v, dtype=np.float64)) for v in vectors]
    s = [[max(0.0, float(np.dot(unit[i], unit[j]))) for j in range(n)] for i in range(n)]
    s_thr = [[x if x >= first_th else 0.0 for x in row] for row in s]
    s1 = _col_normalise(s_thr)
    base = s_thr if threshold_s else s
    walk = _col_normalise([[0.0 if i == j else base[i][j] for j in range(n)] for i in range(n)])
    two = [[sum(walk[i][k] * walk[k][j] for k in range(n)) for j in range(n)] for i in range(n)]
    s2 = _col_normalise(two)
    s2 = [[x if x >= second_th / n else 0.0 for x in row] for row in s2]
    return _col_normalise([[max(s1[i][j], s2[i][j]) for j in range(n)] for i in range(n)])


def _minmax(values):
    low, high = min(values), max(values)
    return [(v - low) / (high - low + EPS) for v in values]


def brute_scg(feature_list, cam, tags, fg_point=0.30, bg_point=0.05, **kw):
    """M_scg (B, C, h, w) with loops over images, classes and points; features already on the
    CAM grid."""
    B, C, h, w = cam.shape
    n = h * w
    out = np.zeros((B, C, n))
    for b in range(B):
        H = np.zeros((n, n))
        for f in feature_list:
            vectors = [f[b, :, p // w, p % w].double().numpy() for p in range(n)]
            H += np.asarray(brute_hsc(vectors, **kw))
        for c in range(C):
            if tags[b, c] == 0:
                continue
            values = [float(cam[b, c, p // w, p % w]) for p in range(n)]
            fg_pts = [p for p in range(n) if values[p] >= fg_point]
            bg_pts = [p for p in range(n) if values[p] <= bg_point]
            if not fg_pts:
                continue
            fg = [0.0] * n
            for p in fg_pts:
                for i, v in enumerate(_minmax(list(H[:, p]))):
                    fg[i] += v
            bg = [0.0] * n
            for p in bg_pts:
                for i, v in enumerate(_minmax(list(H[:, p]))):
                    bg[i] += v
            fg = _minmax(fg)
            bg = _minmax(bg) if bg_pts else [0.0] * n
            out[b, c] = _minmax([max(0.0, x - y) for x, y in zip(fg, bg)])
    return out.reshape(B, C, h, w)


def random_case(seed, B=2, C=3, h=3, w=4, dims=(5, 3)):
    """ReLU'd Gaussian features (like a backbone's: cosines spread over [0, 1], so both
    thresholds bite) and a CAM with both point kinds."""
    g = torch.Generator().manual_seed(seed)
    features = [torch.relu(torch.randn(B, d, h, w, generator=g)) for d in dims]
    cam = torch.rand(B, C, h, w, generator=g) ** 2
    tags = (torch.rand(B, C, generator=g) > 0.3).float()
    tags[:, 0] = 1
    return features, cam, tags


# ---------------------------------------------------------------- hand-worked example

# Three positions on a 1 x 3 grid with unit vectors a = (1, 0), b = (0.8, 0.6), c = (0.28, 0.96):
# S_ab = S_bc = 0.8, S_ac = 0.28 < 0.5. Thresholded S = [[1, .8, 0], [.8, 1, .8], [0, .8, 1]].
# S1 (column sums 1.8, 2.6, 1.8) = [[5/9, 4/13, 0], [4/9, 5/13, 4/9], [0, 4/13, 5/9]].
# Second order from the thresholded S: diagonal zeroed and column-normalised,
# T = [[0, 1/2, 0], [1, 0, 1], [0, 1/2, 0]]; T T = [[1/2, 0, 1/2], [0, 1, 0], [1/2, 0, 1/2]] (columns
# already sum to 1; nothing below 0.1 / 3 except zeros). max(S1, S2) column-normalised:
HAND_FEATURES = torch.tensor([[1.0, 0.8, 0.28], [0.0, 0.6, 0.96]]).reshape(1, 2, 1, 3)
HAND_H = np.array([[10 / 27, 4 / 21, 1 / 3], [8 / 27, 13 / 21, 8 / 27], [1 / 3, 4 / 21, 10 / 27]])


def test_self_correlation_hand_worked_thresholded_second_order():
    H = self_correlation(HAND_FEATURES)[0].double().numpy()
    np.testing.assert_allclose(H, HAND_H, atol=1e-6)
    vectors = [HAND_FEATURES[0, :, 0, p].numpy() for p in range(3)]
    np.testing.assert_allclose(np.asarray(brute_hsc(vectors)), HAND_H, atol=1e-12)
    # from the unthresholded S the 0.28 link a-c enters the walk, and H changes visibly
    unthresholded = np.asarray(brute_hsc(vectors, threshold_s=False))
    assert np.abs(unthresholded - HAND_H).max() > 0.05
    assert np.abs(H - unthresholded).max() > 0.05


def test_scg_maps_hand_worked():
    # CAM (1.0, 0.2, 0.0): a is the only foreground point, c the only background point.
    # Columns of H min-max normalised: H[:, a] -> (1, 0, 1/2), H[:, c] -> (1/2, 0, 1);
    # fg - bg = (1/2, 0, -1/2) -> ReLU -> min-max -> (1, 0, 0).
    cam = torch.tensor([1.0, 0.2, 0.0]).reshape(1, 1, 1, 3)
    out = scg_maps([HAND_FEATURES], cam, torch.ones(1, 1))
    torch.testing.assert_close(out, torch.tensor([1.0, 0.0, 0.0]).reshape(1, 1, 1, 3))


def two_cluster_features(h=4, w=4, noise=0.0, seed=0):
    """Left half of the map has feature e1, right half e2 (orthogonal clusters)."""
    g = torch.Generator().manual_seed(seed)
    features = torch.zeros(1, 8, h, w)
    features[0, 0, :, : w // 2] = 1.0
    features[0, 1, :, w // 2 :] = 1.0
    return (features + noise * torch.rand(features.shape, generator=g)).clamp(min=0)


def test_self_correlation_hand_worked_two_clusters():
    # Clusters of 8 identical positions: S1 column = 1/8 in the cluster; second order gives
    # 7/49 on the diagonal and 6/49 elsewhere in the cluster; max -> 1/7 and 1/8, renormalised.
    H = self_correlation(two_cluster_features())[0]
    left = [p for p in range(16) if p % 4 < 2]
    right = [p for p in range(16) if p % 4 >= 2]
    total = 1 / 7 + 7 / 8
    for p in left:
        assert torch.allclose(H[p, p], torch.tensor(1 / 7 / total), atol=1e-4)
        for q in left:
            if q != p:
                assert torch.allclose(H[q, p], torch.tensor(1 / 8 / total), atol=1e-4)
        assert (H[right, p] == 0).all()


# ---------------------------------------------------------------- brute force on random inputs


def test_self_correlation_matches_brute_force_on_random_features():
    features, _, _ = random_case(0)
    f = features[0]
    H = self_correlation(f).double().numpy()
    for b in range(f.shape[0]):
        vectors = [f[b, :, p // 4, p % 4].double().numpy() for p in range(12)]
        np.testing.assert_allclose(H[b], np.asarray(brute_hsc(vectors)), atol=1e-5)
    # the column of a position with a non-zero feature vector sums to 1
    nonzero = f.reshape(2, 5, 12).abs().sum(dim=1) > 0
    np.testing.assert_allclose(H.sum(axis=1)[nonzero.numpy()], 1.0, atol=1e-5)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_scg_maps_matches_brute_force_on_random_inputs(seed):
    features, cam, tags = random_case(seed)
    cam[1, 1] = 0.1  # a class with no foreground point (and no background point)
    tags[1, 1] = 1
    expected = brute_scg(features, cam, tags)
    got = scg_maps(features, cam, tags).double().numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert (got[tags.numpy() == 0] == 0).all() and (got[1, 1] == 0).all()
    assert got.max() > 0.99  # min-max normalised maps exist in the sample


def test_scg_spreads_a_one_pixel_seed_over_its_cluster_only():
    features = two_cluster_features(h=6, w=6, noise=0.05)
    cam = torch.zeros(1, 2, 6, 6)
    cam[0, 0, 2, 1] = 1.0  # one confident pixel of class 0, in the left cluster
    cam[0, 1] = 0.5  # class 1 is untagged: must come out zero anyway
    tags = torch.tensor([[1.0, 0.0]])
    out = scg_maps([features], cam, tags)
    assert out.shape == (1, 2, 6, 6)
    assert (out[0, 0, :, :3] > 0.5).all()  # the whole left cluster
    assert (out[0, 0, :, 3:] == 0).all()  # nothing in the right cluster
    assert out[0, 0].max() > 0.99  # min-max normalised
    assert (out[0, 1] == 0).all()


def test_scg_without_foreground_points_is_zero():
    features = two_cluster_features()
    cam = torch.full((2, 3, 4, 4), 0.2)  # below fg_point everywhere
    tags = torch.ones(2, 3)
    out = scg_maps([features.expand(2, -1, -1, -1)], cam, tags)
    assert (out == 0).all()


def test_scg_sums_feature_maps_and_resizes_them_to_the_cam_grid():
    fine = two_cluster_features(h=4, w=4, noise=0.1, seed=1)
    coarse = torch.rand(1, 8, 2, 2, generator=torch.Generator().manual_seed(2))
    cam = torch.zeros(1, 1, 4, 4)
    cam[0, 0, 0, 3] = 0.9  # seed in the right cluster
    tags = torch.ones(1, 1)
    single = scg_maps([fine], cam, tags)
    assert (single[0, 0, :, 2:] > 0.5).all() and (single[0, 0, :, :2] == 0).all()
    # Twice the same map doubles H, which the min-max normalisations cancel.
    torch.testing.assert_close(scg_maps([fine, fine], cam, tags), single, atol=1e-5, rtol=0)
    # A coarse map is upsampled bilinearly (align_corners=False) before correlation.
    upsampled = F.interpolate(coarse, size=(4, 4), mode="bilinear", align_corners=False)
    torch.testing.assert_close(scg_maps([fine, coarse], cam, tags), scg_maps([fine, upsampled], cam, tags))
    np.testing.assert_allclose(
        scg_maps([fine, coarse], cam, tags).double().numpy(), brute_scg([fine, upsampled], cam, tags), atol=1e-5
    )


# ---------------------------------------------------------------- precision and padding


def test_scg_under_cpu_bf16_autocast_equals_float32():
    features, cam, tags = random_case(4, h=6, w=6, dims=(16, 8))
    expected = scg_maps(features, cam, tags)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = scg_maps(features, cam, tags)
        H = self_correlation(features[0])
    assert got.dtype == torch.float32 and H.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(H, self_correlation(features[0]), atol=1e-6, rtol=0)


def test_padded_positions_have_no_influence_on_scg():
    # Image 0: right two columns padded; image 1: bottom row padded. On the valid part the
    # result equals SCG computed on the valid part alone (brute force), whatever the padding holds.
    features, cam, tags = random_case(5, h=4, w=5)
    valid = torch.ones(2, 4, 5, dtype=torch.bool)
    valid[0, :, 3:] = False
    valid[1, 3:, :] = False
    out = scg_maps(features, cam, tags, valid=valid)
    assert (out[~valid[:, None].expand_as(out)] == 0).all()

    g = torch.Generator().manual_seed(9)
    noisy = [torch.where(valid[:, None], f, 5 * torch.rand(f.shape, generator=g)) for f in features]
    noisy_cam = torch.where(valid[:, None], cam, torch.rand(cam.shape, generator=g))
    torch.testing.assert_close(scg_maps(noisy, noisy_cam, tags, valid=valid), out, atol=1e-6, rtol=0)

    for b, (rows, cols) in enumerate([(slice(0, 4), slice(0, 3)), (slice(0, 3), slice(0, 5))]):
        part = [f[b : b + 1, :, rows, cols] for f in features]
        expected = brute_scg(part, cam[b : b + 1, :, rows, cols], tags[b : b + 1])
        np.testing.assert_allclose(out[b : b + 1, :, rows, cols].double().numpy(), expected, atol=1e-5)
    # without the mask the padding does change the maps (the check above can fail)
    assert (scg_maps(noisy, noisy_cam, tags) - scg_maps(features, cam, tags)).abs().max() > 0.05


def test_padded_self_correlation_equals_the_valid_part_alone():
    # A 4 x 4 image padded to 6 x 6. The second-order threshold is 0.1 / (number of VALID
    # positions): with this seed, using N = 36 instead of 16 changes H by about 0.006.
    g = torch.Generator().manual_seed(14)
    part = torch.relu(torch.randn(1, 3, 4, 4, generator=g))
    padded = 3 * torch.rand(1, 3, 6, 6, generator=g)
    padded[:, :, 1:5, 2:6] = part
    valid = torch.zeros(1, 6, 6, dtype=torch.bool)
    valid[0, 1:5, 2:6] = True
    H = self_correlation(padded, valid=valid)[0].double()
    inside = valid.reshape(-1)
    expected = brute_hsc([part[0, :, p // 4, p % 4].double().numpy() for p in range(16)])
    np.testing.assert_allclose(H[inside][:, inside].numpy(), np.asarray(expected), atol=1e-5)
    assert (H[~inside] == 0).all() and (H[:, ~inside] == 0).all()
