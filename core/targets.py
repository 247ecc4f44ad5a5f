"""Training targets of RS+EPM (docs/method.md#cam, #certain-filter, #edgepredictmix): CAM
normalisation, certain filter, decoder probabilities restricted to the tags, edge predict, and the
EdgePredictMix paste.

Every target function runs in float32 with autocast disabled (core.precision.float32_targets),
whatever the caller's autocast state (docs/method.md#scg, precision).

Conventions: C = number of foreground classes; tags are multi-hot (B, C) over foreground classes;
label maps are long (B, H, W) with 0 = background, k + 1 = foreground class k, 255 = ignore;
decoder tensors have C + 1 channels with background at channel 0.
"""

import torch
import torch.nn.functional as F

from core.io import IGNORE_INDEX
from core.pamr import shifted_neighbours
from core.precision import float32_targets

CF_FG_TH = 0.55  # certain filter c (experiment tag CF(c=0.55)); [inferred] meaning
CF_BG_TH = 0.10  # certain filter u (experiment tag CF(u=0.10)); [inferred] meaning
EP_DELTA = 0.3  # [inferred] edge predict: probability jump that makes an edge
EP_CONF = 0.55  # [inferred] edge predict: pixels at least this confident are never ignored
EP_DILATIONS = (1, 2)  # [inferred] edge predict neighbourhood
VALID_CELL_FRACTION = 0.5  # [inferred] a grid cell is image (not padding) from this fraction on


def valid_cells(valid, size, min_fraction=VALID_CELL_FRACTION):
    """The crop's valid (non-padded) mask on a coarser grid, for SCG and L_rec.

    valid: (B, H, W) bool/0-1 at image size (or already at `size`); size: (h, w).
    A cell is valid when at least `min_fraction` of its pixels are: the fraction is the area
    average (adaptive average pooling, as L_cls weights its cells), so grid-aligned boxes are
    exact. Returns bool (B, h, w).
    """
    if tuple(valid.shape[-2:]) == tuple(size):
        return valid.bool()
    fraction = F.adaptive_avg_pool2d(valid.float()[:, None], tuple(size))[:, 0]
    return fraction >= min_fraction


@float32_targets
def normalize_cam(cam, tags=None, eps=1e-5, valid=None):
    """Max-normalised CAM, M_cam = ReLU(A) / (spatial max of ReLU(A) + eps) (docs/method.md#cam).

    cam: (B, C, h, w) CAM logits A (with or without grad; differentiable).
    tags: optional (B, C) multi-hot; classes with tag 0 are zeroed.
    valid: optional bool (B, h, w) on the CAM grid (see valid_cells); the max is taken over the
        valid cells only and padded cells come out 0, so padding cannot change M_cam.
    Returns (B, C, h, w) float32 in [0, 1).
    """
    cam = torch.relu(cam.float())
    if valid is not None:
        cam = cam * valid[:, None].to(cam.dtype)
    cam = cam / (cam.amax(dim=(2, 3), keepdim=True) + eps)
    if tags is not None:
        cam = cam * (tags > 0).to(cam.dtype)[:, :, None, None]
    return cam


@float32_targets
def certain_filter(probs, tags, fg_th=CF_FG_TH, bg_th=CF_BG_TH, ignore_index=IGNORE_INDEX):
    """Certain filter CF (docs/method.md#certain-filter): keep only confident foreground and background.

    probs: (B, C, H, W) foreground maps M_rs in [0, 1]; tags: (B, C) multi-hot.
    Over the tagged classes only: m = max, k = argmax. Label k + 1 where m >= fg_th, 0 where
    m <= bg_th, ignore_index in between. An image without tags is all background.
    Returns long (B, H, W). For `--mix certainmix` pass the decoder's foreground channels,
    M_dec[:, 1:].
    """
    tagged = (tags > 0)[:, :, None, None]
    scores = probs.float().masked_fill(~tagged, float("-inf"))
    best, index = scores.max(dim=1)
    best = best.clamp(min=0.0)  # -inf (no tagged class) counts as 0: background
    labels = torch.full_like(index, ignore_index)
    labels[best >= fg_th] = index[best >= fg_th] + 1
    labels[best <= bg_th] = 0
    return labels


@float32_targets
def restrict_to_tags(seg_logits, tags):
    """Decoder probabilities over background + tagged classes only (docs/method.md#edgepredictmix).

    seg_logits: (B, C + 1, H, W); tags: (B, C) multi-hot. A softmax over the allowed channels,
    which equals the full softmax with untagged classes zeroed and renormalised.
    Returns (B, C + 1, H, W): untagged channels exactly 0, each pixel summing to 1.
    """
    B = tags.shape[0]
    allowed = torch.cat([torch.ones(B, 1, dtype=torch.bool, device=tags.device), tags > 0], dim=1)
    logits = seg_logits.float().masked_fill(~allowed[:, :, None, None], float("-inf"))
    return torch.softmax(logits, dim=1)


@float32_targets
def edge_predict(probs, delta=EP_DELTA, conf=EP_CONF, dilations=EP_DILATIONS, ignore_index=IGNORE_INDEX):
    """Edge predict EP (docs/method.md#edgepredictmix): hard labels with uncertain edge zones ignored.

    probs: (B, C + 1, H, W) refined decoder probabilities M_dec (background channel 0).
    label(p) = argmax_k probs_k(p). p becomes ignore_index when, for some neighbour q among the 8
    at any dilation, |probs_k(p) - probs_k(q)| > delta with k = label(p), AND max_k probs_k(p) < conf.
    Neighbours outside the image replicate the border (clamped coordinates), so the image frame is
    never an edge by itself. Returns long (B, H, W).

    [inferred] rule: any function probs -> labels with this signature can replace it.
    """
    probs = probs.float()
    confidence, labels = probs.max(dim=1)
    own = labels.unsqueeze(1)  # (B, 1, H, W)
    edge = torch.zeros_like(labels, dtype=torch.bool)
    for neighbour in shifted_neighbours(probs, tuple(int(d) for d in dilations)):
        # Probability of p's own class at q, compared with p's own probability.
        edge |= (neighbour.gather(1, own) - confidence.unsqueeze(1)).abs().squeeze(1) > delta
    return labels.masked_fill(edge & (confidence < conf), ignore_index)


def resize_nearest(x, size):
    """(B, H, W) or (B, C, H, W) tensor -> nearest-neighbour resize to size, dtype kept."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    squeeze = x.dim() == 3
    y = x[:, None] if squeeze else x
    y = F.interpolate(y.float(), size=tuple(size), mode="nearest").to(x.dtype)
    return y[:, 0] if squeeze else y


def paste(mask, a, b):
    """mask * a + (1 - mask) * b, with the 0/1 mask (B, h, w) resized (nearest) to a's size.

    a, b: (B, ..., H, W) of the same shape; b is already permuted. Works for images, probability
    maps, long label maps and bool valid masks (a select, so dtypes are kept).
    """
    m = resize_nearest(mask.to(torch.uint8), a.shape[-2:]).bool()
    m = m.reshape(m.shape[0], *([1] * (a.dim() - 3)), *m.shape[-2:])
    return torch.where(m, a, b)


def present_classes(labels, num_classes, ignore_index=IGNORE_INDEX):
    """Multi-hot (B, C) of the foreground classes with at least one pixel in labels (B, H, W)."""
    B = labels.shape[0]
    flat = labels.reshape(B, -1)
    flat = torch.where(flat == ignore_index, torch.zeros_like(flat), flat)  # ignore counts as nothing
    present = torch.zeros(B, num_classes + 1, dtype=torch.bool, device=labels.device)
    present.scatter_(1, flat, True)
    return present[:, 1:]


@float32_targets
def mix_batch(images, labels, rs_maps, tags, perm, ignore_index=IGNORE_INDEX):
    """EdgePredictMix / CertainMix paste (docs/method.md#edgepredictmix) of image A = i onto partner B = perm[i].

    images: (B, 3, H, W); labels: (B, h, w) long target M_ep (any size, usually stride 4);
    rs_maps: (B, C, h', w') M_rs (any size; the stride-4 maps, same size as labels, make the paste
        exact, pool to the CAM grid after mixing); tags: (B, C) multi-hot; perm: (B,) long, the
        partner of each image (see random_partner).
    K = A's foreground pixels of labels (neither 0 nor ignore_index), resized nearest to each
    target's size. Returns
      images_mix (B, 3, H, W) = K * I_A + (1 - K) * I_B,
      labels_mix (B, h, w)    = K * M_ep(A) + (1 - K) * M_ep(B),
      rs_mix (B, C, h', w')   = K * M_rs(A) + (1 - K) * M_rs(B), each image's maps first zeroed
                                outside its own tags, so the channels are the union of both,
      tags_mix (B, C), tags' dtype = (y_A OR y_B) AND (the class has a pixel in labels_mix).
    [inferred] tags rule: the label map decides, not rs_mix, because M_rs is dense and soft (a
    class hidden under A's paste would keep a faint rs tail) while the label map holds exactly
    the classes that still have confident pixels; a B class visible only as ignore pixels is
    dropped. A's foreground classes are always kept (K is exactly their pixels).
    """
    perm = perm.to(images.device).long()
    rs_maps = rs_maps.float()
    foreground = (labels != 0) & (labels != ignore_index)
    tags_bool = tags > 0
    rs_maps = rs_maps * tags_bool.to(rs_maps.dtype)[:, :, None, None]
    images_mix = paste(foreground, images, images[perm])
    labels_mix = paste(foreground, labels, labels[perm])
    rs_mix = paste(foreground, rs_maps, rs_maps[perm])
    present = present_classes(labels_mix, tags.shape[1], ignore_index)
    tags_mix = ((tags_bool | tags_bool[perm]) & present).to(tags.dtype)
    return images_mix, labels_mix, rs_mix, tags_mix


def random_partner(batch_size, generator=None):
    """Partner index of each image for mixing: a random permutation with no fixed point when
    batch_size > 1 (a random single cycle through the batch). Returns long (batch_size,)."""
    order = torch.randperm(batch_size, generator=generator)
    partner = torch.empty_like(order)
    partner[order] = order.roll(-1)  # order[i] is paired with order[i + 1]
    return partner
