"""Pixel-adaptive mask refinement (PAMR; Araslanov & Roth, CVPR 2020), docs/method.md#pamr.

Each pixel p looks at its 8 neighbours q at every dilation d (so 8 * len(dilations) neighbours).
The affinity of p to q is

    a(p, q) = mean over RGB of  -|I(p) - I(q)| / (0.1 * std(p) + 1e-8)

where std(p) is the local standard deviation of that colour channel over the 3x3 windows at all
dilations (the centre pixel counts once per dilation, 9 * len(dilations) values, unbiased, as in
the released module). A softmax over all neighbours turns the affinities into weights, and the
mask is iterated as m(p) <- sum_q a(p, q) m(q). The weights of a pixel sum to 1, so a mask whose
channels sum to 1 at every pixel keeps that property, and a constant mask stays constant.

Neighbours outside the image are read with replicate padding (coordinates clamped to the border):
a border pixel then "sees" border pixels, never zeros, so the image frame creates no fake edge.
Shifts are slices of one padded tensor (no unfold), and the mask is updated one neighbour at a
time to keep memory at a few copies of (B, C, H, W) instead of (B, C, 48, H, W).

PAMR builds training targets, so it runs in float32 with autocast disabled whatever the caller's
autocast state (core.precision; docs/method.md#scg, precision).
"""

import torch
import torch.nn.functional as F

from core.precision import float32_targets

PAMR_ITERATIONS = 10  # [inferred] docs/method.md#pamr
PAMR_DILATIONS = (1, 2, 4, 8, 12, 24)  # [inferred] docs/method.md#pamr
PAMR_SIGMA = 0.1  # scale of the local std in the affinity (Araslanov & Roth)
PAMR_EPS = 1e-8  # keeps the division finite in flat regions, where std is 0

# The 8 neighbour directions (dy, dx) of a 3x3 window, centre excluded.
NEIGHBOURS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0))


def shifted_neighbours(x, dilations, include_centre=False):
    """All neighbours of every pixel, read with replicate padding.

    x: (B, C, H, W). Returns a list of (B, C, H, W) tensors, one per (dilation, direction) in the
    order dilations x NEIGHBOURS (the centre first within each dilation if include_centre);
    element [..., y, x] of a shift (dy, dx) at dilation d is x[..., clamp(y + dy*d), clamp(x + dx*d)].
    """
    pad = max(dilations)
    # One replicate pad by the largest dilation equals clamping coordinates, so every smaller
    # dilation can slice the same padded tensor.
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    H, W = x.shape[-2:]
    directions = (((0, 0),) if include_centre else ()) + NEIGHBOURS
    out = []
    for d in dilations:
        for dy, dx in directions:
            y0, x0 = pad + dy * d, pad + dx * d
            out.append(padded[..., y0 : y0 + H, x0 : x0 + W])
    return out


@float32_targets
def pamr_affinity(image, dilations=PAMR_DILATIONS, sigma=PAMR_SIGMA, eps=PAMR_EPS):
    """Softmax affinity of each pixel to its 8 * len(dilations) neighbours.

    image: (B, 3, H, W) float (any colour scaling; the std makes it scale-free).
    Returns (B, K, H, W), K = 8 * len(dilations), summing to 1 over K, in shifted_neighbours order.
    """
    image = image.float()
    neighbours = torch.stack(shifted_neighbours(image, dilations), dim=2)  # (B, 3, K, H, W)
    windows = torch.stack(shifted_neighbours(image, dilations, include_centre=True), dim=2)
    std = windows.std(dim=2, keepdim=True)  # (B, 3, 1, H, W), unbiased over 9 * len(dilations)
    affinity = -(neighbours - image.unsqueeze(2)).abs() / (sigma * std + eps)
    return torch.softmax(affinity.mean(dim=1), dim=1)


@float32_targets
def pamr(image, mask, iterations=PAMR_ITERATIONS, dilations=PAMR_DILATIONS):
    """Refine a mask with image-adaptive local averaging (PAMR).

    image: (B, 3, H, W), already at the mask's size.
    mask: (B, C, H, W) float (class scores or probabilities).
    Returns the refined mask (B, C, H, W), float32. Differentiable in mask (the caller usually
    wraps this in torch.no_grad()); the affinities depend on the image only.
    """
    if image.shape[0] != mask.shape[0] or image.shape[-2:] != mask.shape[-2:]:
        raise ValueError(
            f"pamr: image {tuple(image.shape)} and mask {tuple(mask.shape)} must share batch size and spatial size"
        )
    dilations = tuple(int(d) for d in dilations)
    affinity = pamr_affinity(image, dilations)  # (B, K, H, W)
    m = mask.float()
    for _ in range(iterations):
        refined = torch.zeros_like(m)
        for k, neighbour in enumerate(shifted_neighbours(m, dilations)):
            refined = refined + affinity[:, k : k + 1] * neighbour
        m = refined
    return m


@float32_targets
def refine_with_pamr(image, maps, out_size=None, iterations=PAMR_ITERATIONS, dilations=PAMR_DILATIONS):
    """Upsample maps to out_size, resize the image to the same size, and run PAMR (docs/method.md#pamr).

    image: (B, 3, H, W) (the network input); maps: (B, C, h, w); out_size: (H', W') or None to
    keep the maps' size (e.g. stride 4 of the crop: (H // 4, W // 4)). Both resizes are bilinear,
    align_corners=False (docs/formats.md#preprocessing). Returns (B, C, H', W') float32.
    """
    size = tuple(out_size) if out_size is not None else tuple(maps.shape[-2:])
    maps = maps.float()
    if tuple(maps.shape[-2:]) != size:
        maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
    image = F.interpolate(image.float(), size=size, mode="bilinear", align_corners=False)
    return pamr(image, maps, iterations=iterations, dilations=dilations)
