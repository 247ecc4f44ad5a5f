"""Losses of RS+EPM (docs/method.md#classification-loss, #losses). All return a scalar tensor with grad."""

import torch
import torch.nn.functional as F

from core.precision import autocast_off
from core.targets import IGNORE_INDEX, normalize_cam, resize_nearest, valid_cells


def classification_loss(logits, tags):
    """L_cls: multi-label soft margin loss. logits: (B, C) class logits; tags: (B, C) multi-hot."""
    return F.multilabel_soft_margin_loss(logits.float(), tags.float())


def box_mask(boxes, size):
    """Valid-box masks from boxes. boxes: (B, 4) (x0, y0, x1, y1) in pixels, half-open;
    size: (H, W). Returns bool (B, H, W), True inside each box."""
    H, W = size
    boxes = boxes.to(torch.long)
    ys = torch.arange(H, device=boxes.device)[None, :, None]
    xs = torch.arange(W, device=boxes.device)[None, None, :]
    x0, y0, x1, y1 = (boxes[:, i, None, None] for i in range(4))
    return (ys >= y0) & (ys < y1) & (xs >= x0) & (xs < x1)


def masked_global_average(cam, valid=None):
    """Class logits as the spatial mean of the CAM inside the crop's valid region
    (docs/method.md#classification-loss).

    cam: (B, C, h, w) CAM logits A. valid: None (plain mean), or (B, H, W) bool/0-1 mask of the
    non-padded pixels at any size (image size: see box_mask). [inferred] A mask at another size is
    area-averaged to the CAM grid, so a CAM cell counts with the fraction of its pixels that are
    valid (exact for grid-aligned boxes, no rounding of partial cells). Returns (B, C).
    """
    if valid is None:
        return cam.mean(dim=(2, 3))
    weight = valid.to(cam.dtype)[:, None]
    if tuple(weight.shape[-2:]) != tuple(cam.shape[-2:]):
        weight = F.adaptive_avg_pool2d(weight.float(), cam.shape[-2:]).to(cam.dtype)
    total = weight.sum(dim=(2, 3)).clamp(min=1e-5)  # an image with no valid cell averages to 0
    return (cam * weight).sum(dim=(2, 3)) / total


def reconstruction_loss(cam, target, tags, valid=None):
    """L_rec (docs/method.md#losses): mean |M_cam_grad - M_rs_down| over the tagged classes.

    cam: (B, C, h, w) CAM logits A WITH grad; M_cam_grad = normalize_cam(cam), i.e. ReLU(A) over
        its spatial max + 1e-5 per image and class (the max is part of the graph).
    target: (B, C, H', W') M_rs in [0, 1] (no grad taken); average-pooled to (h, w) if needed.
    tags: (B, C) multi-hot.
    valid: None, or (B, H, W) bool mask of the crop's non-padded pixels at any size; reduced to
        the CAM grid by core.targets.valid_cells (a cell counts when at least half of it is
        image). Padded cells then take no part: the max of M_cam_grad is taken over valid cells
        and the error is averaged over valid cells only, so padding cannot change the loss.
    Normalisation: the L1 error of each tagged (image, class) map is averaged over its (valid)
    cells, then the tagged maps are averaged with equal weight; untagged classes and images
    without a valid cell contribute nothing. No such map in the batch gives 0 (still connected
    to cam). Runs in float32 with autocast off.
    """
    with autocast_off(cam.device.type):
        cells = None if valid is None else valid_cells(valid, cam.shape[-2:])
        cam_norm = normalize_cam(cam.float(), valid=cells)
        target = target.detach().float()
        if tuple(target.shape[-2:]) != tuple(cam.shape[-2:]):
            target = F.adaptive_avg_pool2d(target, cam.shape[-2:])
        error = (cam_norm - target).abs()
        if cells is None:
            per_map = error.mean(dim=(2, 3))  # (B, C)
            weight = (tags > 0).to(per_map.dtype)
        else:
            area = cells.float().sum(dim=(1, 2))  # (B,) valid cells per image
            per_map = (error * cells[:, None].float()).sum(dim=(2, 3)) / area.clamp(min=1.0)[:, None]
            weight = (tags > 0).to(per_map.dtype) * (area > 0).to(per_map.dtype)[:, None]
        # clamp instead of a branch: no host sync, and an empty selection gives an exact 0.
        return (per_map * weight).sum() / weight.sum().clamp(min=1.0)


def segmentation_loss(seg_logits, labels, ignore_index=IGNORE_INDEX):
    """L_seg: cross entropy with ignore (docs/method.md#losses), averaged over the non-ignored pixels.

    seg_logits: (B, C + 1, h, w); labels: long (B, H, W), resized nearest to (h, w) if needed.
    A batch whose labels are all ignore_index gives 0 (still connected to seg_logits), not NaN.
    """
    labels = resize_nearest(labels.long(), seg_logits.shape[-2:])
    # Summed then divided by the clamped count: reduction="mean" would give 0/0 = NaN.
    loss = F.cross_entropy(seg_logits.float(), labels, ignore_index=ignore_index, reduction="sum")
    return loss / (labels != ignore_index).sum().clamp(min=1)
