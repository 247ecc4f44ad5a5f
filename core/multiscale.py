"""Multi-scale, flipped inference on tensors: the seeds of both inference scripts and of validation
(docs/formats.md#inference).

Each test-time scale is ONE batched forward of the image and its horizontal flip; nothing that
the seed does not need (CAMs at every scale, backbone feature maps) is computed or kept.
"""

import numpy as np
import torch
import torch.nn.functional as F

SCALES = (1.0, 0.5, 1.5, 2.0)
SEG_CLASS_TH = 0.05  # infer_seg keeps classes whose max probability reaches this (docs/formats.md#seed-files)


def resize(x, size, mode):
    """Resize (B, C, h, w) to `size` = (H, W); bilinear uses align_corners=False."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    return F.interpolate(x, size=size, mode=mode, align_corners=False)


def scaled_size(height, width, scale):
    """floor(h * s), floor(w * s), as the original."""
    return int(height * scale), int(width * scale)


@torch.no_grad()
def multiscale_inference(
    model, image, kind, scales=SCALES, interpolation="bilinear", same=True, with_scores=False, class_fn="sigmoid"
):
    """Average softmax probabilities over scales and horizontal flips.

    Args:
        model: RSEPM (returns a dict with 'seg' and 'logits') or DeepLabV3+/V2 (returns logits),
            possibly wrapped in DataParallel.
        image: normalised (3, H, W) tensor on the model's device.
        kind: "rsepm" (decoder probabilities), "cam" (RSEPM's ReLU CAMs, bilinear, the classic
            CAM seed; channel 0 is left at 0) or "seg" (DeepLab probabilities).
        interpolation: mode used to bring each pass's logits to its input size and its
            probabilities to the reference size (`--interpolation`; DeepLab: bilinear).
        same: resize logits to the pass's input size before the softmax (original `--same`);
            when False the probabilities stay at stride 4 until the final resize.
        with_scores: RSEPM only: also return the mean class scores (`class_fn` of the logits).
    Returns:
        probs (C+1, H, W) at full image size; scores (C,) or None.
    """
    height, width = image.shape[-2:]
    ref_size, total, scores = None, None, None
    for scale in scales:
        size = scaled_size(height, width, scale)
        x = resize(image[None], size, "bilinear")
        out = model(torch.cat([x, x.flip(-1)], dim=0))
        if kind == "cam":
            maps = resize(torch.relu(out["cam"].float()), size, "bilinear")
            ref_size = ref_size or size
            probs = resize(maps, ref_size, "bilinear")
        else:
            logits = out["seg"] if kind == "rsepm" else out
            if same:
                logits = resize(logits, size, interpolation)
            if ref_size is None:  # the first scale (1.0) fixes the size every pass is brought to
                ref_size = tuple(logits.shape[-2:])
            probs = resize(torch.softmax(logits.float(), dim=1), ref_size, interpolation)
        probs = probs[0] + probs[1].flip(-1)
        total = probs if total is None else total + probs
        if with_scores:
            logits = out["logits"].float()
            s = (torch.sigmoid(logits) if class_fn == "sigmoid" else torch.softmax(logits, dim=1)).sum(dim=0)
            scores = s if scores is None else scores + s
    probs = total / (2 * len(scales))
    if kind == "cam":
        probs = torch.cat([torch.zeros_like(probs[:1]), probs])
    probs = resize(probs[None], (height, width), "bilinear")[0]
    return probs, (scores / (2 * len(scales)) if with_scores else None)


def rsepm_seed(probs, classes):
    """rsepm dialect: keys [0, c1..cK], seed = foreground probabilities of the present classes,
    each divided by (its spatial max + 1e-5). `classes`: 1-based class indices."""
    classes = sorted(int(c) for c in classes)
    seed = probs[classes]
    seed = seed / (seed.flatten(1).max(dim=1).values.view(-1, 1, 1) + 1e-5) if classes else seed
    return np.asarray([0] + classes, dtype=np.int64), seed.cpu().numpy().astype(np.float32)


def seg_seed(probs, threshold=SEG_CLASS_TH):
    """seg dialect: keys = channels (background included) whose max probability >= threshold,
    seed = their raw probabilities."""
    keep = probs.flatten(1).max(dim=1).values >= threshold
    keys = torch.nonzero(keep).flatten()
    return keys.cpu().numpy().astype(np.int64), probs[keys].cpu().numpy().astype(np.float32)
