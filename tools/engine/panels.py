"""TensorBoard image panels of a training run (docs/formats.md#tensorboard).

A fixed handful of images (--vis_images), chosen once per run, is drawn at each validation (or at
each epoch's end when the run does not validate) from a forward pass of its own, in eval mode
without grad, on rank 0: the training iterations gain no host sync. Every map comes from the
method's own functions (core/rsepm.py, core/inference.py), never a copy of them. Colours and
resizes with numpy and Pillow: no matplotlib at train time, and no OpenCV in the main process
(its thread pool, once started, deadlocks the data-loader and pool workers forked after it).

Tags: "{image_id}/{panel}", so that TensorBoard groups the panels of one image. A panel is an
RGB uint8 (H, W, 3) array at the image's size (shrunk to PANEL_SIDE when larger), except the
mix panels, at the size of the first image.
"""
import contextlib
import dataclasses

import numpy as np
import torch
import torch.nn.functional as F

from core.datasets import normalize_image, read_image
from PIL import Image

from core.errors import ProjectError
from core.inference import multiscale_inference, rsepm_seed
from core.io import read_mask
from core.rsepm import RSEPMTraining
from core.targets import certain_filter, mix_batch, normalize_cam
from tools.metrics import seed_foreground

PANEL_SIDE = 512  # longest panel side: bounds the event file and the SCG matrices of a large image
SEED_THRESHOLD = 0.30  # [inferred] background threshold of the seed panel until a validation finds the best
HEAT_ALPHA = 0.5  # weight of the heat map over the image


@dataclasses.dataclass
class Pick:
    """One panel image: id, uint8 RGB (H, W, 3), its normalised (3, H, W) tensor, 1-based tags."""
    image_id: str
    image: np.ndarray
    tensor: torch.Tensor
    tags: list


def pick_images(layout, ids, count, max_pixels=None):
    """The first `count` usable images of `ids` (sorted ids of a split: the same picks every epoch
    and run). An image the training would skip (unreadable, above max_pixels, a bad annotation)
    is passed over: the run reports those itself."""
    picks = []
    for image_id in ids:
        if len(picks) == count:
            break
        try:
            image = read_image(layout.image_path(image_id), max_pixels or layout.max_pixels)
            tags = layout.read_tags(image_id, required=False)
        except (OSError, ProjectError):
            continue
        image = shrink(image, Image.BOX)
        picks.append(Pick(image_id, image, normalize_image(image), tags))
    return picks


def shrink(array, interpolation):
    """Scale a uint8 (H, W[, 3]) array down to PANEL_SIDE on its longest side (a PIL resample
    filter); smaller ones unchanged."""
    height, width = array.shape[:2]
    scale = PANEL_SIDE / max(height, width)
    if scale >= 1:
        return np.ascontiguousarray(array)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(array).resize(size, interpolation))


def read_label_map(path, size):
    """A mask file shrunk like its image (nearest); None when the file is missing or unreadable."""
    try:
        mask = read_mask(path)
    except (OSError, ProjectError):  # a panel is not worth stopping the run for
        return None
    if mask.shape != tuple(size):
        mask = np.asarray(Image.fromarray(mask).resize((size[1], size[0]), Image.NEAREST))
    return mask


# --- colours ---------------------------------------------------------------------------------
def heat(values):
    """(H, W) in [0, 1] -> RGB jet colours: dark blue (0), cyan, yellow, dark red (1); NaN as 0."""
    x = np.clip(np.nan_to_num(np.asarray(values, np.float32)), 0.0, 1.0)[..., None]
    rgb = np.clip(1.5 - np.abs(4.0 * x - np.array([3.0, 2.0, 1.0], np.float32)), 0.0, 1.0)
    return (rgb * 255.0).round().astype(np.uint8)


def overlay(image, values):
    """The heat map of `values` blended over the RGB image."""
    return (image * (1.0 - HEAT_ALPHA) + heat(values) * HEAT_ALPHA).round().astype(np.uint8)


def colorize(labels, palette):
    """Class indices (H, W) -> RGB in the dataset palette (255 = ignore in its own colour)."""
    return np.asarray(palette, np.uint8).reshape(256, 3)[np.asarray(labels, np.uint8)]


def denormalize(tensor):
    """Normalised (3, H, W) -> uint8 RGB (H, W, 3): the inverse of core.datasets.normalize_image."""
    mean, std = normalize_image(np.zeros((1, 1, 3), np.uint8)), normalize_image(np.full((1, 1, 3), 255, np.uint8))
    rgb = (tensor.float().cpu() - mean) / (std - mean)  # both reference colours: no constants copied here
    return (rgb.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


def to_image_size(maps, size, mode="bilinear"):
    """(C, h, w) or (h, w) tensor -> numpy at `size` (bilinear maps, nearest labels)."""
    x = maps[None, None] if maps.dim() == 2 else maps[None]
    x = x.float()
    x = F.interpolate(x, size=tuple(size), mode=mode) if mode == "nearest" else \
        F.interpolate(x, size=tuple(size), mode=mode, align_corners=False)
    x = x[0, 0] if maps.dim() == 2 else x[0]
    return x.cpu().numpy()


@contextlib.contextmanager
def eval_mode(*modules):
    """Eval mode without grad, each module's own mode restored afterwards."""
    modes = [m.training for m in modules]
    try:
        for m in modules:
            m.eval()
        with torch.no_grad():
            yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


# --- the panels of each script ---------------------------------------------------------------
class Panels:
    """Draws the panels of the picks; `draw(...)` returns {tag: image}. The image and the maps
    that do not change during a run (pseudo mask, ground truth) are returned by the first draw
    of a process only, so the event file holds them once (a resumed run writes them again)."""

    def __init__(self, picks, info, device):
        self.picks, self.info, self.device, self.first = picks, info, device, True

    def static(self, pick):
        return {"image": pick.image}

    def dynamic(self, pick, **state):
        raise NotImplementedError

    def draw(self, **state):
        out = {}
        for pick in self.picks:
            panels = self.dynamic(pick, **state)
            if self.first:
                panels = {**self.static(pick), **panels}
            out.update({f"{pick.image_id}/{name}": image for name, image in panels.items()})
        self.first = False
        return out

    def tags(self, pick):
        return torch.from_numpy(_multi_hot(pick.tags, self.info.num_foreground))[None].to(self.device)

    def name(self, class_index):
        return self.info.class_names[class_index]


def _multi_hot(tags, count):
    vector = np.zeros(count, np.float32)
    vector[[t - 1 for t in tags]] = 1.0
    return vector


class RSEPMPanels(Panels):
    """train_rsepm.py: image, CAM of each tag, seed; SCG map and RecurSeed target (certain
    filter, ignore in the palette's ignore colour) from --rs_start; one mixed image and its
    target from --mix_start."""

    def __init__(self, step_module, picks, info, device):
        super().__init__(picks, info, device)
        self.step = step_module
        # recur_seed without PAMR stops at M_scg (PAMR with 0 iterations returns its input)
        self.scg = RSEPMTraining(step_module.network, dataclasses.replace(step_module.config, pamr_iterations=0))

    def modules(self):
        return [m for m in (self.step.network, self.step.teacher) if m is not None]

    def draw(self, epoch, threshold=None):
        with eval_mode(*self.modules()):
            use_rs, use_mix = self.step.config.active_terms(epoch)
            out = super().draw(use_rs=use_rs, threshold=SEED_THRESHOLD if threshold is None else threshold)
            if use_mix and self.picks:
                out.update(self.mix_panels())
        return out

    def dynamic(self, pick, use_rs, threshold):
        cfg, network = self.step.config, self.step.network
        x, tags, size = pick.tensor[None].to(self.device), self.tags(pick), pick.image.shape[:2]
        out = network(x, with_features=cfg.feature_names())
        panels = {}
        cams = to_image_size(normalize_cam(out["cam"], tags)[0], size)
        for c in pick.tags:
            panels[f"cam_{self.name(c)}"] = overlay(pick.image, cams[c - 1])
        probs, _ = multiscale_inference(network, pick.tensor.to(self.device), "rsepm", scales=(1.0,),
                                        interpolation="nearest")  # the seed validation scores
        keys, seed = rsepm_seed(probs, pick.tags)
        score, best = seed_foreground({"keys": keys, "seed": seed}, self.info.num_classes)
        panels["seed"] = colorize(np.where(score > threshold, best, 0).reshape(size), self.info.palette)
        if use_rs:
            source = out if self.step.teacher is None else self.step.teacher(x, with_features=cfg.feature_names())
            scg = to_image_size(self.scg.recur_seed(x, source, tags)[0], size)
            for c in pick.tags:
                panels[f"scg_{self.name(c)}"] = overlay(pick.image, scg[c - 1])
            m_rs = self.step.recur_seed(x, source, tags)
            target = certain_filter(m_rs, tags, cfg.cf_fg_th, cfg.cf_bg_th)[0]
            panels["rs_target"] = colorize(to_image_size(target, size, "nearest"), self.info.palette)
        return panels

    def mix_panels(self):
        """The first pick pasted onto the second (onto its own mirror image when it is alone),
        by the mix of the training step: mix_labels, then mix_batch."""
        cfg, first = self.step.config, self.picks[0]
        size = first.image.shape[:2]
        a = first.tensor[None].to(self.device)
        if len(self.picks) > 1:
            b = F.interpolate(self.picks[1].tensor[None].to(self.device), size=size, mode="bilinear",
                              align_corners=False)
            tags = torch.cat([self.tags(first), self.tags(self.picks[1])])
        else:
            b, tags = a.flip(-1), self.tags(first).repeat(2, 1)
        images = torch.cat([a, b])
        generator = self.step.network if self.step.teacher is None else self.step.teacher
        source = generator(images, with_features=cfg.feature_names())
        m_rs = self.step.recur_seed(images, source, tags)
        m_ep = self.step.mix_labels(images, source["seg"], tags)
        images_mix, labels_mix, _, _ = mix_batch(images, m_ep, m_rs, tags, torch.tensor([1, 0]))
        target = to_image_size(labels_mix[0], size, "nearest")
        return {f"{first.image_id}/mix_image": denormalize(images_mix[0]),
                f"{first.image_id}/mix_target": colorize(target, self.info.palette)}


class SegPanels(Panels):
    """train_seg.py: image, the pseudo mask it learns from, ground truth (where the split has
    it), the prediction (single-scale + flip argmax, as its validation) and its foreground
    probability (1 - background) over the image."""

    def __init__(self, network, picks, info, device, mask_path, gt_layout=None):
        super().__init__(picks, info, device)
        self.network, self.mask_path, self.gt_layout = network, mask_path, gt_layout

    def static(self, pick):
        size = pick.image.shape[:2]
        panels = {"image": pick.image}
        pseudo = read_label_map(self.mask_path(pick.image_id), size)
        if pseudo is not None:
            panels["pseudo_mask"] = colorize(pseudo, self.info.palette)
        if self.gt_layout is not None and self.gt_layout.has_masks:
            gt = read_label_map(self.gt_layout.mask_path(pick.image_id), size)
            if gt is not None:
                panels["ground_truth"] = colorize(gt, self.info.palette)
        return panels

    def draw(self):
        with eval_mode(self.network):
            return super().draw()

    def dynamic(self, pick):
        probs, _ = multiscale_inference(self.network, pick.tensor.to(self.device), "seg", scales=(1.0,))
        # the foreground probability shows learning that the argmax hides (all background early on)
        return {"prediction": colorize(probs.argmax(0).cpu().numpy(), self.info.palette),
                "foreground": overlay(pick.image, 1.0 - probs[0].cpu().numpy())}


class AffinityPanels(Panels):
    """train_affinity.py: image and boundary map (predict_boundary, what the random walk reads)."""

    def __init__(self, network, picks, info, device):
        super().__init__(picks, info, device)
        self.network = network

    def draw(self):
        with eval_mode(self.network):
            return super().draw()

    def dynamic(self, pick):
        boundary = self.network.predict_boundary(pick.tensor[None].to(self.device))[0]
        return {"boundary": heat(to_image_size(boundary, pick.image.shape[:2]))}


def iou_table(iou, class_names):
    """Markdown table of per-class IoU (fractions -> percent; n/a where the class never occurs)."""
    rows = [f"| {name} | {'n/a' if np.isnan(v) else f'{100 * v:.1f}'} |" for name, v in zip(class_names, iou)]
    return "\n".join(["| class | IoU (%) |", "|---|---|", *rows])
