import numpy as np
import pytest
import torch

from core.pamr import pamr, pamr_affinity, refine_with_pamr


def brute_force_pamr(image, mask, iterations, dilations):
    """Per-pixel loop version of PAMR in float64 numpy, written from the description."""
    image = image.double().numpy()
    m = mask.double().numpy()
    B, _, H, W = image.shape
    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]

    def at(arr, b, y, x):  # replicate padding = clamped coordinates
        return arr[b, :, min(max(y, 0), H - 1), min(max(x, 0), W - 1)]

    weights = np.zeros((B, H, W, 8 * len(dilations)))
    sources = np.zeros((B, H, W, 8 * len(dilations), 2), dtype=int)
    for b in range(B):
        for y in range(H):
            for x in range(W):
                window = [at(image, b, y + dy * d, x + dx * d) for d in dilations for dy, dx in offsets]
                std = np.std(np.stack(window), axis=0, ddof=1)  # per channel
                affs = []
                k = 0
                for d in dilations:
                    for dy, dx in offsets:
                        if (dy, dx) == (0, 0):
                            continue
                        q = at(image, b, y + dy * d, x + dx * d)
                        affs.append(np.mean(-np.abs(image[b, :, y, x] - q) / (0.1 * std + 1e-8)))
                        sources[b, y, x, k] = (min(max(y + dy * d, 0), H - 1), min(max(x + dx * d, 0), W - 1))
                        k += 1
                e = np.exp(np.array(affs) - max(affs))
                weights[b, y, x] = e / e.sum()
    for _ in range(iterations):
        new = np.zeros_like(m)
        for b in range(B):
            for y in range(H):
                for x in range(W):
                    for k, (qy, qx) in enumerate(sources[b, y, x]):
                        new[b, :, y, x] += weights[b, y, x, k] * m[b, :, qy, qx]
        m = new
    return m


def test_pamr_matches_brute_force_loop():
    g = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, 5, 6, generator=g)
    mask = torch.rand(2, 3, 5, 6, generator=g)
    expected = brute_force_pamr(image, mask, iterations=3, dilations=(1, 2, 4))
    got = pamr(image, mask, iterations=3, dilations=(1, 2, 4))
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-5)


def test_affinity_is_a_softmax_over_all_neighbours():
    image = torch.rand(1, 3, 7, 9, generator=torch.Generator().manual_seed(1))
    affinity = pamr_affinity(image, dilations=(1, 3))
    assert affinity.shape == (1, 16, 7, 9)
    assert (affinity >= 0).all()
    torch.testing.assert_close(affinity.sum(dim=1), torch.ones(1, 7, 9))


def test_constant_mask_stays_constant():
    image = torch.rand(1, 3, 10, 12, generator=torch.Generator().manual_seed(2))
    mask = torch.full((1, 2, 10, 12), 0.3)
    mask[:, 1] = 0.7
    torch.testing.assert_close(pamr(image, mask), mask)


def test_probabilities_stay_probabilities():
    g = torch.Generator().manual_seed(3)
    image = torch.rand(2, 3, 9, 11, generator=g)
    mask = torch.softmax(torch.randn(2, 4, 9, 11, generator=g) * 3, dim=1)
    out = pamr(image, mask)
    assert (out >= 0).all()
    torch.testing.assert_close(out.sum(dim=1), torch.ones(2, 9, 11))


def test_misplaced_boundary_moves_to_the_image_edge():
    # Image: dark columns 0-3, bright columns 4-11. Mask: class 1 on columns 0-5 (two columns
    # too far right), class 0 elsewhere.
    H, W, edge, wrong = 8, 12, 4, 6
    image = torch.zeros(1, 3, H, W)
    image[..., edge:] = 1.0
    mask = torch.zeros(1, 2, H, W)
    mask[:, 1, :, :wrong] = 1.0
    mask[:, 0, :, wrong:] = 1.0
    out = pamr(image, mask)
    labels = out.argmax(dim=1)[0]
    assert (labels[:, :edge] == 1).all()  # the dark object keeps its label
    assert (labels[:, edge:] == 0).all()  # the misplaced bright columns switch to background
    assert (out[0, 1, :, edge:wrong] < 0.5).all()
    # Almost nothing leaks across the image edge in either direction.
    assert (out[0, 1, :, :edge] > 0.99).all()


def test_pamr_does_not_break_autograd():
    image = torch.rand(1, 3, 6, 6)
    mask = torch.rand(1, 2, 6, 6, requires_grad=True)
    pamr(image, mask, iterations=2).sum().backward()
    assert mask.grad is not None and torch.isfinite(mask.grad).all()


def test_refine_with_pamr_resizes_maps_and_image():
    image = torch.rand(1, 3, 32, 40)
    maps = torch.full((1, 3, 4, 5), 0.5)
    out = refine_with_pamr(image, maps, out_size=(8, 10))
    assert out.shape == (1, 3, 8, 10)
    torch.testing.assert_close(out, torch.full((1, 3, 8, 10), 0.5))


def test_mismatched_sizes_are_rejected():
    with pytest.raises(ValueError, match="spatial size"):
        pamr(torch.rand(1, 3, 4, 4), torch.rand(1, 2, 5, 4))


def test_pamr_under_cpu_bf16_autocast_equals_float32():
    g = torch.Generator().manual_seed(7)
    image = torch.randn(2, 3, 24, 24, generator=g)
    maps = torch.rand(2, 3, 6, 6, generator=g)
    expected = refine_with_pamr(image, maps, out_size=(12, 12), iterations=3, dilations=(1, 2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = refine_with_pamr(image, maps, out_size=(12, 12), iterations=3, dilations=(1, 2))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
