import numpy as np
import torch
import torch.nn.functional as F

from core.scg import scg_maps, self_correlation


def brute_force_self_correlation(features, fg_th=0.5, so_th=0.1, eps=1e-5):
    """Element-by-element loops in float64, written from docs/method.md#scg."""
    f = features.double().numpy()
    B, D, h, w = f.shape
    N = h * w
    out = np.zeros((B, N, N))

    def col_norm(m):
        r = np.zeros_like(m)
        for j in range(N):
            total = sum(m[i, j] for i in range(N))
            for i in range(N):
                r[i, j] = m[i, j] / (total + eps)
        return r

    for b in range(B):
        vecs = [f[b, :, p // w, p % w] for p in range(N)]
        vecs = [v / max(np.sqrt((v * v).sum()), 1e-12) for v in vecs]
        s = np.zeros((N, N))
        for i in range(N):
            for j in range(N):
                s[i, j] = max(0.0, float((vecs[i] * vecs[j]).sum()))
        s1 = col_norm(np.where(s >= fg_th, s, 0.0))
        nd = s.copy()
        for i in range(N):
            nd[i, i] = 0.0
        nd = col_norm(nd)
        s2 = np.zeros((N, N))
        for i in range(N):
            for j in range(N):
                s2[i, j] = sum(nd[i, k] * nd[k, j] for k in range(N))
        s2 = col_norm(s2)
        s2 = np.where(s2 >= so_th / N, s2, 0.0)
        out[b] = col_norm(np.maximum(s1, s2))
    return out


def two_cluster_features(h=4, w=4, noise=0.0, seed=0):
    """Left half of the map has feature e1, right half e2 (orthogonal clusters)."""
    g = torch.Generator().manual_seed(seed)
    features = torch.zeros(1, 8, h, w)
    features[0, 0, :, : w // 2] = 1.0
    features[0, 1, :, w // 2:] = 1.0
    return (features + noise * torch.rand(features.shape, generator=g)).clamp(min=0)


def test_self_correlation_matches_brute_force_loop():
    features = torch.randn(2, 5, 3, 3, generator=torch.Generator().manual_seed(0))
    expected = brute_force_self_correlation(features)
    np.testing.assert_allclose(self_correlation(features).numpy(), expected, rtol=1e-4, atol=1e-6)


def test_self_correlation_columns_are_distributions():
    features = torch.randn(2, 6, 4, 5, generator=torch.Generator().manual_seed(1))
    H = self_correlation(features)
    assert H.shape == (2, 20, 20)
    assert (H >= 0).all()
    torch.testing.assert_close(H.sum(dim=1), torch.ones(2, 20), atol=1e-4, rtol=0)


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
    torch.testing.assert_close(scg_maps([fine, coarse], cam, tags),
                               scg_maps([fine, upsampled], cam, tags))


def loop_scg_maps(feature_list, cam, tags, fg_point=0.30, bg_point=0.05, eps=1e-5):
    """Per image, class and point loops in float64 on top of self_correlation."""
    B, C, h, w = cam.shape
    N = h * w
    H = sum(self_correlation(F.interpolate(f, size=(h, w), mode="bilinear", align_corners=False)
                             if f.shape[-2:] != (h, w) else f) for f in feature_list).double().numpy()
    cam = cam.double().numpy().reshape(B, C, N)
    out = np.zeros((B, C, N))

    def mm(v):
        return (v - v.min()) / (v.max() - v.min() + eps)

    for b in range(B):
        for c in range(C):
            if tags[b, c] == 0:
                continue
            fg_pts = [p for p in range(N) if cam[b, c, p] >= fg_point]
            bg_pts = [p for p in range(N) if cam[b, c, p] <= bg_point]
            if not fg_pts:
                continue
            fg = mm(sum(mm(H[b, :, p]) for p in fg_pts))
            bg = mm(sum(mm(H[b, :, p]) for p in bg_pts)) if bg_pts else np.zeros(N)
            out[b, c] = mm(np.maximum(fg - bg, 0.0))
    return out.reshape(B, C, h, w)


def test_scg_maps_matches_per_point_loop():
    g = torch.Generator().manual_seed(5)
    features = [torch.rand(2, 6, 4, 5, generator=g), torch.rand(2, 3, 2, 3, generator=g)]
    cam = torch.rand(2, 3, 4, 5, generator=g) ** 3  # mostly small values: both point kinds occur
    cam[1, 2] = 0.1  # tagged but no foreground point
    tags = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    expected = loop_scg_maps(features, cam, tags)
    np.testing.assert_allclose(scg_maps(features, cam, tags).numpy(), expected, rtol=1e-4, atol=1e-5)
