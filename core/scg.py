"""Self-correlation map generation (SCG; from SPA, CVPR 2021), docs/method.md#scg.

Follows the `SCG` class the authors released with their inference code: the positions of a
feature map are correlated with each other (first and second order), and the correlation columns
of a class's confident CAM points (foreground) minus those of its near-zero points (background)
spread the CAM over the whole object. Everything is a batched matrix product over the N = h * w
positions of the grid; nothing loops over pixels, points or classes.

Matrices are (B, N, N) with column j = the correlation of every position with position j;
"column normalised" means each column divided by its sum + 1e-10 (an all-zero column stays 0).
All eps are 1e-10 as in the released class. Everything runs in float32 with autocast disabled
(docs/method.md#scg, precision), whatever the caller's autocast state.

Padding (docs/method.md#training-iteration): an optional `valid` mask (B, h, w) on the grid marks
the positions that are image, not crop padding. Padded positions take no part: their feature
vectors are zeroed (so they correlate with nothing), they are never foreground or background
points, the min-max normalisations look at valid positions only, the second-order threshold uses
the number of valid positions, and the output is 0 there. For a padded crop this gives exactly
what SCG computes on the valid part alone.
"""

import torch
import torch.nn.functional as F

from core.precision import float32_targets

SCG_FIRST_TH = 0.50  # first_th of the released SCG: similarities below it are zeroed
SCG_SECOND_TH = 0.10  # second_th of the released SCG, divided by N
SCG_FG_POINT = 0.30  # foreground_th: CAM value of a foreground point
SCG_BG_POINT = 0.05  # background_th: CAM value of a background point
EPS = 1e-10  # every eps of the released SCG class


def normalize_columns(x, eps=EPS):
    """x: (B, N, N) non-negative. Each column divided by its sum (+ eps)."""
    return x / (x.sum(dim=1, keepdim=True) + eps)


def minmax(x, dim, eps=EPS, valid=None):
    """Min-max normalise x to [0, 1] along dim (a constant slice becomes 0).

    valid: None, or a bool tensor broadcastable to x: the min and max are taken over the valid
    entries only and invalid entries come out 0 (a slice without valid entries is all 0).
    """
    if valid is None:
        low = x.amin(dim=dim, keepdim=True)
        high = x.amax(dim=dim, keepdim=True)
        return (x - low) / (high - low + eps)
    valid = valid.expand_as(x)
    low = x.masked_fill(~valid, float("inf")).amin(dim=dim, keepdim=True)
    high = x.masked_fill(~valid, float("-inf")).amax(dim=dim, keepdim=True)
    some = valid.any(dim=dim, keepdim=True)
    low = torch.where(some, low, torch.zeros_like(low))
    high = torch.where(some, high, torch.zeros_like(high))
    return ((x - low) / (high - low + eps)).masked_fill(~valid, 0.0)


@float32_targets
def self_correlation(features, fg_th=SCG_FIRST_TH, so_th=SCG_SECOND_TH, valid=None):
    """Combined first/second-order self-correlation H_F of one feature map (released SCG).

    features: (B, D, h, w). valid: None or bool (B, h, w), False on crop padding.
    fg_th: first-order threshold (first_th), so_th: second-order threshold (second_th, / N);
    a threshold <= 0 is not applied, as in the released class.
    Returns H (B, N, N) float32, N = h * w, non-negative, columns summing to 1 except for
    positions whose (valid) feature vector is all zero, whose column is 0.
    """
    B, D, h, w = features.shape
    N = h * w
    # (B, N, D): one row per position, the layout of the released class (same float32 rounding)
    f = features.float().permute(0, 2, 3, 1).contiguous().view(B, N, D)
    if valid is not None:
        f = f * valid.reshape(B, N, 1).to(f.dtype)
    f = f / (torch.norm(f, dim=2, keepdim=True) + EPS)  # unit vectors (0 stays 0)
    s = torch.relu(torch.matmul(f, f.transpose(1, 2)))  # (B, N, N) cosine similarities >= 0

    # First order. The threshold is applied to S itself: the second order below starts from
    # the thresholded S too, as the released class does.
    if fg_th > 0:
        s = s.masked_fill(s < fg_th, 0.0)
    s1 = normalize_columns(s)

    # Second order: two-step walks through other positions (self-loops removed, so a position
    # does not simply reinforce itself), then sparse entries dropped.
    walk = normalize_columns(s.masked_fill(torch.eye(N, dtype=torch.bool, device=s.device), 0.0))
    s2 = normalize_columns(torch.bmm(walk, walk))
    if so_th > 0:
        count = valid.reshape(B, N).sum(dim=1) if valid is not None else torch.full((B,), N, device=s.device)
        threshold = so_th / count.clamp(min=1).to(s2.dtype)
        s2 = s2.masked_fill(s2 < threshold[:, None, None], 0.0)

    return normalize_columns(torch.maximum(s1, s2))


def resize_to(features, size):
    """(B, D, h', w') -> (B, D, h, w) bilinear, align_corners=False; unchanged when already there."""
    if tuple(features.shape[-2:]) == tuple(size):
        return features
    return F.interpolate(features.float(), size=tuple(size), mode="bilinear", align_corners=False)


def point_maps(point_mask, correlation, valid=None):
    """Sum of the (min-max normalised) correlation columns at the points, min-max normalised.

    point_mask: (B, C, N) 0/1; correlation: (B, N, N) with columns already min-max normalised;
    valid: None or bool (B, 1, N). Returns (B, C, N); all zeros for a class without points.
    """
    # sum_p mask[c, p] * H[:, p]  ==  (mask @ H^T)[c, :]
    summed = torch.bmm(point_mask, correlation.transpose(1, 2))
    return minmax(summed, dim=2, valid=valid)


@float32_targets
def scg_maps(
    feature_list,
    cam_norm,
    tags,
    fg_point=SCG_FG_POINT,
    bg_point=SCG_BG_POINT,
    fg_th=SCG_FIRST_TH,
    so_th=SCG_SECOND_TH,
    valid=None,
):
    """Self-correlation maps M_scg of the tagged classes (docs/method.md#scg).

    feature_list: list of (B, D_i, h_i, w_i) feature maps (detached), each resized bilinearly
        (align_corners=False) to the CAM grid when its size differs.
    cam_norm: (B, C, h, w) max-normalised CAM in [0, 1] (core.targets.normalize_cam).
    tags: (B, C) multi-hot. fg_point / bg_point: CAM values of foreground (>=) and background
        (<=) points. fg_th, so_th: thresholds of self_correlation.
    valid: None or bool (B, h, w), False on crop padding (see the module docstring).
    Returns M_scg (B, C, h, w) float32 in [0, 1]: min-max normalised ReLU(fg - bg) per image and
    tagged class; zeros for untagged classes, for classes without foreground points, and on
    padded positions.
    """
    B, C, h, w = cam_norm.shape
    N = h * w
    valid_n = None if valid is None else valid.reshape(B, 1, N).bool()
    correlation = sum(self_correlation(resize_to(f, (h, w)), fg_th, so_th, valid) for f in feature_list)  # (B, N, N)
    # each column H[:, p] to [0, 1] over the valid rows
    correlation = minmax(correlation, dim=1, valid=None if valid_n is None else valid_n.transpose(1, 2))

    usable = (tags > 0).reshape(B, C, 1)
    if valid_n is not None:
        usable = usable & valid_n  # padded positions are never points
    cam = cam_norm.float().reshape(B, C, N)
    fg_points = ((cam >= fg_point) & usable).float()
    bg_points = ((cam <= bg_point) & usable).float()

    fg = point_maps(fg_points, correlation, valid_n)
    bg = point_maps(bg_points, correlation, valid_n)
    scg = minmax(torch.relu(fg - bg), dim=2, valid=valid_n)
    has_fg = fg_points.sum(dim=2, keepdim=True) > 0  # also False for untagged classes
    return (scg * has_fg).reshape(B, C, h, w)
