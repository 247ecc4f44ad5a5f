"""Pairs, path affinities and the random walk against brute-force loops over pixel pairs."""

import itertools

import numpy as np
import pytest
import torch

from core.randomwalk import (
    PairGrid,
    dense_affinity,
    direction_path,
    pair_directions,
    random_walk,
    random_walk_labels,
    scores_to_stride,
    sparse_affinity,
    transition_matrix,
)


def brute_path(p, q):
    """Pixels of the box spanned by p and q whose distance to the line p-q is below 1."""
    (py, px), (qy, qx) = p, q
    dy, dx = qy - py, qx - px
    length = np.hypot(dy, dx)
    out = []
    for y in range(min(py, qy), max(py, qy) + 1):
        for x in range(min(px, qx), max(px, qx) + 1):
            if abs(dy * (x - px) - dx * (y - py)) / length < 1:
                out.append((y, x))
    return out


def brute_affinity(edge, radius):
    """Dense (N, N) affinity with explicit loops over every ordered pixel pair."""
    h, w = edge.shape
    n = h * w
    aff = np.zeros((n, n))
    for (py, px), (qy, qx) in itertools.product(itertools.product(range(h), range(w)), repeat=2):
        i, j = py * w + px, qy * w + qx
        dist_sq = (py - qy) ** 2 + (px - qx) ** 2
        if i == j:
            aff[i, j] = 1.0
        elif dist_sq < radius**2:
            aff[i, j] = 1 - max(edge[y, x] for y, x in brute_path((py, px), (qy, qx)))
    return aff


def brute_walk(scores, edge, radius, beta, exp_times):
    """IRN's walk from its definition: column-normalised A ** beta to the power 2 ** exp_times."""
    k, h, w = scores.shape
    a = brute_affinity(edge, radius) ** beta
    t = a / a.sum(axis=0, keepdims=True)
    x = (scores * (1 - edge)).reshape(k, h * w)
    return (x @ np.linalg.matrix_power(t, 2**exp_times)).reshape(k, h, w)


def test_directions_are_the_half_disc():
    for radius in (2, 3, 5, 10):
        expected = {
            (dy, dx)
            for dy in range(-radius, radius + 1)
            for dx in range(-radius, radius + 1)
            if 0 < dy * dy + dx * dx < radius * radius and (dy > 0 or (dy == 0 and dx > 0))
        }
        got = [tuple(d) for d in pair_directions(radius)]
        assert len(got) == len(expected) and set(got) == expected
    assert len(pair_directions(5)) == 34 and len(pair_directions(10)) == 152


def test_paths_by_hand():
    assert direction_path(0, 3).tolist() == [[0, 0], [0, 1], [0, 2], [0, 3]]
    # (2, 2): distance |x - y| / sqrt(2) < 1 keeps the diagonal and its 4-neighbours off it
    assert sorted(direction_path(2, 2).tolist()) == [[0, 0], [0, 1], [1, 0], [1, 1], [1, 2], [2, 1], [2, 2]]
    # (1, 2): |x - 2 y| / sqrt(5) < 1 holds for the whole 2x3 box
    assert len(direction_path(1, 2)) == 6
    # (2, 3): |2 x - 3 y| / sqrt(13) < 1, i.e. |2 x - 3 y| <= 3: drops (0, 2), (0, 3), (2, 0), (2, 1)
    assert sorted(direction_path(2, 3).tolist()) == [[0, 0], [0, 1], [1, 0], [1, 1], [1, 2], [1, 3], [2, 2], [2, 3]]
    for dy, dx in pair_directions(5):
        assert sorted(map(tuple, direction_path(dy, dx).tolist())) == brute_path((0, 0), (dy, dx))


def test_dense_affinity_matches_brute_force():
    rng = np.random.default_rng(0)
    edge = rng.random((6, 7))
    for radius in (2, 3, 5):
        got = dense_affinity(torch.from_numpy(edge), radius).numpy()
        np.testing.assert_allclose(got, brute_affinity(edge, radius), atol=1e-12)


def test_training_pairs_match_brute_force():
    rng = np.random.default_rng(1)
    h, w, radius = 7, 9, 3
    edge = rng.random((2, h, w))
    grid = PairGrid(radius, (h, w))
    aff = grid.affinity(torch.from_numpy(edge)).numpy()
    assert aff.shape == (2, len(pair_directions(radius)), (h - 2) * (w - 4))
    for b in range(2):
        full = brute_affinity(edge[b], radius)
        for d, (dy, dx) in enumerate(grid.directions):
            for s in range(grid.num_sources):
                y, x = divmod(s, grid.crop[1])
                x += grid.margin
                assert aff[b, d, s] == pytest.approx(full[y * w + x, (y + dy) * w + x + dx], abs=1e-12)


def test_affinity_gradient_goes_to_the_path_maximum():
    edge = torch.zeros(1, 3, 5, dtype=torch.float64)
    edge[0, 0, 3] = 0.9
    edge.requires_grad_(True)
    grid = PairGrid(2, (3, 5))  # directions (0,1), (1,-1), (1,0), (1,1); sources (0..1, 1..3)
    aff = grid.affinity(edge)
    direction = [tuple(d) for d in grid.directions].index((0, 1))
    source = 0 * grid.crop[1] + (2 - grid.margin)  # pixel (0, 2), its pair ends at (0, 3)
    assert aff[0, direction, source].item() == pytest.approx(0.1)
    aff[0, direction, source].backward()
    expected = torch.zeros_like(edge)
    expected[0, 0, 3] = -1
    assert torch.equal(edge.grad, expected)


@pytest.mark.parametrize("method", ["dense", "sparse"])
@pytest.mark.parametrize("radius,beta,exp_times", [(3, 10, 3), (5, 10, 8), (2, 1, 4)])
def test_random_walk_matches_matrix_power(method, radius, beta, exp_times):
    rng = np.random.default_rng(radius + exp_times)
    edge = rng.random((5, 6)) ** 3  # mostly low boundaries, so the walk mixes
    scores = rng.random((2, 5, 6))
    expected = brute_walk(scores, edge, radius, beta, exp_times)
    got = random_walk(torch.from_numpy(scores), torch.from_numpy(edge), radius, beta, exp_times, method)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6, atol=1e-9)


def test_random_walk_float32_close_to_float64():
    rng = np.random.default_rng(3)
    edge = rng.random((9, 8)) ** 2
    scores = rng.random((3, 9, 8))
    expected = brute_walk(scores, edge, 5, 10, 8)
    for method in ("dense", "sparse"):
        got = random_walk(torch.from_numpy(scores).float(), torch.from_numpy(edge).float(), method=method)
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-5)


def test_transition_matrix_is_column_stochastic_power():
    rng = np.random.default_rng(4)
    edge = torch.from_numpy(rng.random((4, 4)))
    t = transition_matrix(dense_affinity(edge, 3), beta=2, exp_times=2).numpy()
    a = brute_affinity(edge.numpy(), 3) ** 2
    step = a / a.sum(axis=0)
    np.testing.assert_allclose(t, step @ step @ step @ step, atol=1e-12)
    np.testing.assert_allclose(t.sum(axis=0), 1.0, atol=1e-12)


def test_sparse_affinity_lists_each_pair_once():
    edge = torch.rand(4, 6)
    src, dst, _ = sparse_affinity(edge, 3)
    pairs = {(int(a), int(b)) for a, b in zip(src, dst)}
    expected = {
        (i, j) for i in range(24) for j in range(i + 1, 24) if (i // 6 - j // 6) ** 2 + (i % 6 - j % 6) ** 2 < 9
    }
    assert len(pairs) == len(src) and pairs == expected


def test_scores_to_stride_averages_cells():
    seed = torch.arange(2 * 6 * 5, dtype=torch.float64).reshape(2, 6, 5)
    got = scores_to_stride(seed, 4)
    assert got.shape == (2, 2, 2)
    padded = np.pad(seed.numpy(), ((0, 0), (0, 2), (0, 3)), mode="edge")
    expected = padded.reshape(2, 2, 4, 2, 4).mean(axis=(2, 4))
    np.testing.assert_allclose(got.numpy(), expected)


def test_random_walk_labels_by_hand():
    # a vertical boundary splits the 8x8 grid (32x32 image); class 7 is seeded on the left only
    height, width = 32, 30
    edge = torch.zeros(8, 8, dtype=torch.float64)
    edge[:, 4] = 1.0
    seed = torch.zeros(1, height, width, dtype=torch.float64)
    seed[0, 4:12, 2:10] = 1.0
    labels = random_walk_labels(seed, [7], edge)
    assert labels.shape == (height, width) and labels.dtype == torch.int64
    assert set(labels.unique().tolist()) == {0, 7}
    assert (labels[:, :14] == 7).all()  # the walk spreads over the whole left region
    assert (labels[:, 18:] == 0).all()  # and never crosses the boundary column (pixels 16..19)
    # no foreground plane: everything background
    empty = random_walk_labels(seed[:0], [], edge)
    assert empty.shape == (height, width) and not empty.any()
    with pytest.raises(ValueError, match="stride-4 grid"):
        random_walk_labels(seed, [7], edge[:7])


def test_tiny_maps_and_tensor_keys():
    # maps smaller than the radius: every pixel still pairs with every pixel in reach
    for h, w in [(1, 1), (2, 3), (3, 1)]:
        edge = torch.rand(h, w, dtype=torch.float64) * 0.5
        scores = torch.rand(1, h, w, dtype=torch.float64)
        np.testing.assert_allclose(
            random_walk(scores, edge, 5, 10, 2).numpy(), brute_walk(scores.numpy(), edge.numpy(), 5, 10, 2), rtol=1e-9
        )
    seed = torch.zeros(2, 8, 8)
    seed[1, :4] = 1
    labels = random_walk_labels(seed, torch.tensor([2, 5]), torch.zeros(2, 2))
    assert set(labels.unique().tolist()) <= {0, 2, 5} and (labels[:2] == 5).all()
