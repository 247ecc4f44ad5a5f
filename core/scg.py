"""Self-correlation map generation (SCG; from SPA, CVPR 2021), docs/method.md#scg.

A feature map's positions are correlated with each other (first- and second-order), and the
correlation columns of a class's confident CAM points (foreground) minus those of its
near-zero points (background) spread the CAM over the whole object. All operations are batched
matrix products over the N = h * w positions; nothing loops over pixels or classes.

Matrices are (B, N, N) with column j = the correlation of every position with position j; "column
normalised" means each column sums to 1 (divided by its sum + eps, so all-zero columns stay 0).
"""
import torch
import torch.nn.functional as F

SCG_FG_TH = 0.50  # first-order correlation threshold (released SCG code)
SCG_SO_TH = 0.10  # second-order threshold, divided by N (released SCG code)
SCG_FG_POINT = 0.30  # CAM value for a foreground point (docs/method.md#scg)
SCG_BG_POINT = 0.05  # CAM value for a background point (docs/method.md#scg)
EPS = 1e-5


def normalize_columns(x, eps=EPS):
    """x: (B, N, N) non-negative. Each column divided by its sum (+ eps)."""
    return x / (x.sum(dim=1, keepdim=True) + eps)


def minmax(x, dim, eps=EPS):
    """Min-max normalise x to [0, 1] along dim; a constant slice becomes 0."""
    low = x.amin(dim=dim, keepdim=True)
    high = x.amax(dim=dim, keepdim=True)
    return (x - low) / (high - low + eps)


def self_correlation(features, fg_th=SCG_FG_TH, so_th=SCG_SO_TH):
    """Combined first/second-order self-correlation H_F of one feature map.

    features: (B, D, h, w). Returns H (B, N, N), N = h * w, non-negative, columns summing to 1
    (except for positions whose feature vector is all zero, whose column stays 0).
    """
    B, D, h, w = features.shape
    N = h * w
    f = F.normalize(features.float().reshape(B, D, N), dim=1)  # unit vector per position
    s = torch.relu(torch.bmm(f.transpose(1, 2), f))  # (B, N, N) cosine similarities >= 0

    # First order: only strongly correlated positions.
    s1 = normalize_columns(s * (s >= fg_th))

    # Second order: two-step walks through other positions (self-loops removed first so a
    # position does not simply reinforce itself), sparse entries dropped.
    off_diagonal = s * (1.0 - torch.eye(N, dtype=s.dtype, device=s.device))
    walk = normalize_columns(off_diagonal)
    s2 = normalize_columns(torch.bmm(walk, walk))
    s2 = s2 * (s2 >= so_th / N)

    return normalize_columns(torch.maximum(s1, s2))


def resize_to(features, size):
    """(B, D, h', w') -> (B, D, h, w) bilinear, align_corners=False; unchanged when already there."""
    if tuple(features.shape[-2:]) == tuple(size):
        return features
    return F.interpolate(features.float(), size=tuple(size), mode="bilinear", align_corners=False)


def point_maps(point_mask, correlation):
    """Sum of the min-max normalised correlation columns at the points, min-max normalised.

    point_mask: (B, C, N) 0/1; correlation: (B, N, N) with columns already min-max normalised.
    Returns (B, C, N); all zeros for a class without points.
    """
    # sum_p mask[c, p] * H[:, p]  ==  (mask @ H^T)[c, :]
    summed = torch.bmm(point_mask, correlation.transpose(1, 2))
    return minmax(summed, dim=2)


def scg_maps(feature_list, cam_norm, tags, fg_point=SCG_FG_POINT, bg_point=SCG_BG_POINT,
             fg_th=SCG_FG_TH, so_th=SCG_SO_TH):
    """Self-correlation maps M_scg of the tagged classes (docs/method.md#scg).

    feature_list: list of (B, D_i, h_i, w_i) feature maps (detached; the caller passes C4 and C5),
        each resized bilinearly to the CAM grid when its size differs.
    cam_norm: (B, C, h, w) max-normalised CAM in [0, 1] (see core.targets.normalize_cam).
    tags: (B, C) multi-hot. fg_th, so_th: thresholds of self_correlation.
    Returns M_scg (B, C, h, w) float32 in [0, 1]: min-max normalised ReLU(fg - bg) per image and
    tagged class; zeros for untagged classes and for classes without foreground points.
    """
    B, C, h, w = cam_norm.shape
    N = h * w
    correlation = sum(self_correlation(resize_to(f, (h, w)), fg_th, so_th) for f in feature_list)  # (B, N, N)
    correlation = minmax(correlation, dim=1)  # each column H[:, p] to [0, 1]

    tagged = (tags > 0).reshape(B, C, 1)
    cam = cam_norm.float().reshape(B, C, N)
    fg_points = ((cam >= fg_point) & tagged).float()
    bg_points = ((cam <= bg_point) & tagged).float()

    fg = point_maps(fg_points, correlation)
    bg = point_maps(bg_points, correlation)
    scg = minmax(torch.relu(fg - bg), dim=2)
    has_fg = fg_points.sum(dim=2, keepdim=True) > 0  # also False for untagged classes
    return (scg * has_fg).reshape(B, C, h, w)
