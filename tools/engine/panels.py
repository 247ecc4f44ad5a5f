"""TensorBoard image panels of a training run (docs/formats.md#tensorboard).

A handful of images (--vis_images, or the ids of --vis_ids), chosen once per run, is drawn at each
validation (or at each epoch's end when the run does not validate) from a forward pass of its own,
in eval mode without grad, on rank 0: the training iterations gain no host sync. Every map comes
from the method's own functions (core/rsepm.py, core/multiscale.py), never a copy of them, and is
drawn by tools/drawing.py, as the notebook's figure is.

Tags: "panels/{image_id}", one composite picture per image with its maps side by side in pipeline
order and a legend of the classes shown; "parts/{image_id}/{map}", each map alone at the image's
size (shrunk to PANEL_SIDE when larger).
"""

import contextlib
import dataclasses

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from core.dataset_layout import normalize_image, read_image
from core.errors import ProjectError, UsageError
from core.io import IGNORE_INDEX, read_mask
from core.multiscale import multiscale_inference, rsepm_seed
from core.rsepm import RSEPMTraining
from core.targets import certain_filter, mix_batch, normalize_cam, resize_nearest
from tools.drawing import colorize, composite, heat, legend_entries, outline, overlay
from tools.drawing import shrink as shrink_to
from tools.metrics import seed_foreground

PANEL_SIDE = 512  # longest side of a part: bounds the event file and the SCG matrices of a large image
SEED_THRESHOLD = 0.30  # [inferred] background threshold of the seed panel until a validation finds the best
SCAN_LIMIT = 2000  # images whose tags are read to spread the default picks over the classes


@dataclasses.dataclass
class Pick:
    """One panel image: id, uint8 RGB (H, W, 3), its normalised (3, H, W) tensor, 1-based tags and
    its ground truth (H, W) uint8 (None when the split has no masks)."""

    image_id: str
    image: np.ndarray
    tensor: torch.Tensor
    tags: list
    gt: np.ndarray = None


def spread_over_classes(layout, ids, count, limit=SCAN_LIMIT):
    """`ids` reordered so that the first `count` cover as many classes as they can: repeatedly the
    image whose least-shown tag has been shown least so far (ties: sorted order), among the first
    `limit` ids; the rest follow in their order (spares for unreadable picks). Images without tags
    come last."""
    candidates = []
    for image_id in ids[:limit]:
        try:
            tags = layout.read_tags(image_id, required=False)
        except (OSError, ProjectError):
            tags = []
        candidates.append((image_id, list(tags)))
    shown, order = np.zeros(layout.info.num_classes + 1, np.int64), []
    while candidates and len(order) < count:
        best = min(
            range(len(candidates)), key=lambda k: (shown[candidates[k][1]].min() if candidates[k][1] else np.inf, k)
        )
        image_id, tags = candidates.pop(best)
        shown[tags] += 1
        order.append(image_id)
    chosen = set(order)
    return order + [i for i in ids if i not in chosen]


def pick_images(layout, ids, count, max_pixels=None, chosen=None):
    """The panel images: the ids of `chosen` (--vis_ids; each must be in `ids`, else UsageError), or
    `count` usable images of `ids` spread over the classes (spread_over_classes: the same picks
    every epoch and run). An image the training would skip (unreadable, above max_pixels, a bad
    annotation) is passed over: the run reports those itself."""
    if chosen:
        known = set(ids)
        missing = [i for i in chosen if i not in known]
        if missing and ids:
            raise UsageError(
                f"--vis_ids: {', '.join(missing[:5])} not among the {len(ids)} images of "
                f"{layout.split_dir} the panels are drawn from"
            )
        ids, count = [i for i in chosen if i in known], len(chosen)
    elif ids:
        ids = spread_over_classes(layout, ids, count)
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
        gt = read_label_map(layout.mask_path(image_id), image.shape[:2]) if layout.has_masks else None
        picks.append(Pick(image_id, image, normalize_image(image), tags, gt))
    return picks


def shrink(array, interpolation):
    """Scale a uint8 (H, W[, 3]) array down to PANEL_SIDE on its longest side (a PIL resample
    filter); smaller ones unchanged."""
    return shrink_to(array, interpolation, PANEL_SIDE)


def read_label_map(path, size):
    """A mask file shrunk like its image (nearest); None when the file is missing or unreadable."""
    try:
        mask = read_mask(path)
    except (OSError, ProjectError):  # a panel is not worth stopping the run for
        return None
    if mask.shape != tuple(size):
        mask = np.asarray(Image.fromarray(mask).resize((size[1], size[0]), Image.NEAREST))
    return mask


def denormalize(tensor):
    """Normalised (3, H, W) -> uint8 RGB (H, W, 3): the inverse of core.dataset_layout.normalize_image."""
    mean, std = normalize_image(np.zeros((1, 1, 3), np.uint8)), normalize_image(np.full((1, 1, 3), 255, np.uint8))
    rgb = (tensor.float().cpu() - mean) / (std - mean)  # both reference colours: no constants copied here
    return (rgb.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


def to_image_size(maps, size, mode="bilinear"):
    """(C, h, w) or (h, w) tensor -> numpy at `size` (bilinear maps, nearest labels)."""
    x = maps[None, None] if maps.dim() == 2 else maps[None]
    x = x.float()
    x = (
        F.interpolate(x, size=tuple(size), mode=mode)
        if mode == "nearest"
        else F.interpolate(x, size=tuple(size), mode=mode, align_corners=False)
    )
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
@dataclasses.dataclass
class Tile:
    """One map of a composite: its title, the RGB picture, and the label map it shows (uint8, for
    the legend; None for a photo or a heat map)."""

    title: str
    picture: np.ndarray
    labels: np.ndarray = None


class Panels:
    """Draws the panels of the picks: `draw(...)` returns {tag: image}, a composite per pick
    ("panels/{id}", every draw) and its parts ("parts/{id}/{name}"). The parts that do not change
    during a run (image, ground truth, pseudo mask) are returned by the first draw of a process
    only, so the event file holds them once (a resumed run writes them again)."""

    def __init__(self, picks, info, device):
        self.picks, self.info, self.device, self.first = picks, info, device, True
        self._static = {}  # image id -> its static parts, read from disk once per process

    def static(self, pick):
        """[(part name, Tile)] that stay the same during a run."""
        return [("image", Tile("image", pick.image))]

    def dynamic(self, pick, **state):
        """[(part name, Tile)] drawn again each time."""
        raise NotImplementedError

    def legend_always(self, pick):
        return (0,)

    def draw(self, **state):
        out = {}
        for pick in self.picks:
            if pick.image_id not in self._static:
                self._static[pick.image_id] = self.static(pick)
            static, dynamic = self._static[pick.image_id], self.dynamic(pick, **state)
            tiles = [tile for _, tile in static + dynamic]  # pipeline order
            legend = legend_entries(
                [t.labels for t in tiles], self.info.palette, self.info.class_names, always=self.legend_always(pick)
            )
            # label maps shrink by nearest neighbour: no blended colour that no class has
            shown = [(t.title, t.picture, t.labels is not None) for t in tiles]
            out[f"panels/{pick.image_id}"] = composite(shown, legend)
            parts = (static if self.first else []) + dynamic
            out.update({f"parts/{pick.image_id}/{name}": tile.picture for name, tile in parts})
        self.first = False
        return out

    def tags(self, pick):
        return torch.from_numpy(_multi_hot(pick.tags, self.info.num_foreground))[None].to(self.device)

    def name(self, class_index):
        return self.info.class_names[class_index]

    def label_tile(self, title, labels):
        labels = np.asarray(labels, np.uint8)
        return Tile(title, colorize(labels, self.info.palette), labels)

    def ground_truth(self, pick):
        return [("ground_truth", self.label_tile("ground truth", pick.gt))] if pick.gt is not None else []


def _multi_hot(tags, count):
    vector = np.zeros(count, np.float32)
    vector[[t - 1 for t in tags]] = 1.0
    return vector


class RSEPMPanels(Panels):
    """train_rsepm.py: image | ground truth | CAM of each tag with its class score | SCG map of each
    tag | RecurSeed target (certain filter; ignore in its colour) | seed | this image with its
    partner's EdgePredictMix region pasted and outlined (the pasted pixels counted) | the mix
    target. SCG and RS target from --rs_start, the mix from --mix_start. The partner of a pick is
    the next pick (its own mirror image when it is alone)."""

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
            return super().draw(
                use_rs=use_rs,
                use_mix=use_mix and self.step.config.mix != "none",
                threshold=SEED_THRESHOLD if threshold is None else threshold,
            )

    def static(self, pick):
        return super().static(pick) + self.ground_truth(pick)

    def legend_always(self, pick):
        return (0, *pick.tags)

    def dynamic(self, pick, use_rs, use_mix, threshold):
        cfg, network = self.step.config, self.step.network
        x, tags, size = pick.tensor[None].to(self.device), self.tags(pick), pick.image.shape[:2]
        out = network(x, with_features=cfg.feature_names())
        parts = []
        cams = to_image_size(normalize_cam(out["cam"], tags)[0], size)
        # the seed validation's forward (scale 1 + flip); its class scores are what --conf_th reads
        probs, scores = multiscale_inference(
            network, pick.tensor.to(self.device), "rsepm", scales=(1.0,), interpolation="nearest", with_scores=True
        )
        for c in pick.tags:
            parts.append(
                (
                    f"cam_{self.name(c)}",
                    Tile(f"CAM {self.name(c)} {float(scores[c - 1]):.2f}", overlay(pick.image, cams[c - 1])),
                )
            )
        if use_rs:
            source = out if self.step.teacher is None else self.step.teacher(x, with_features=cfg.feature_names())
            scg = to_image_size(self.scg.recur_seed(x, source, tags)[0], size)
            for c in pick.tags:
                parts.append((f"scg_{self.name(c)}", Tile(f"SCG {self.name(c)}", overlay(pick.image, scg[c - 1]))))
            m_rs = self.step.recur_seed(x, source, tags)
            target = certain_filter(m_rs, tags, cfg.cf_fg_th, cfg.cf_bg_th)[0]
            parts.append(("rs_target", self.label_tile("RS target", to_image_size(target, size, "nearest"))))
        keys, seed = rsepm_seed(probs, pick.tags)
        score, best = seed_foreground({"keys": keys, "seed": seed}, self.info.num_classes)
        parts.append(
            ("seed", self.label_tile(f"seed (bg {threshold:.2f})", np.where(score > threshold, best, 0).reshape(size)))
        )
        if use_mix:
            parts += self.mix_parts(pick)
        return parts

    def partner(self, pick):
        """(partner image (1, 3, H, W) at the pick's size, its multi-hot tags (1, C), its id)."""
        others = [p for p in self.picks if p is not pick]
        if not others:
            return pick.tensor[None].to(self.device).flip(-1), self.tags(pick), pick.image_id + " mirrored"
        other = self.picks[(self.picks.index(pick) + 1) % len(self.picks)]
        image = F.interpolate(
            other.tensor[None].to(self.device), size=pick.image.shape[:2], mode="bilinear", align_corners=False
        )
        return image, self.tags(other), other.image_id

    def mix_parts(self, pick):
        """The partner's mix region pasted onto this pick by the training step's own functions
        (mix_labels, then mix_batch), with the region outlined and its pixels counted."""
        cfg, size = self.step.config, pick.image.shape[:2]
        partner, partner_tags, partner_id = self.partner(pick)
        images = torch.cat([pick.tensor[None].to(self.device), partner])
        tags = torch.cat([self.tags(pick), partner_tags])
        generator = self.step.network if self.step.teacher is None else self.step.teacher
        source = generator(images, with_features=cfg.feature_names())
        m_rs = self.step.recur_seed(images, source, tags)
        m_ep = self.step.mix_labels(images, source["seg"], tags)
        # mix_batch pastes image i's foreground of m_ep onto image perm[i]: entry 1 is the partner's
        # region pasted onto this pick (image 0)
        images_mix, labels_mix, _, _ = mix_batch(images, m_ep, m_rs, tags, torch.tensor([1, 0]))
        region = resize_nearest(((m_ep[1] != 0) & (m_ep[1] != IGNORE_INDEX))[None].to(torch.uint8), size)[0].bool()
        region = region.cpu().numpy()
        picture = outline(denormalize(images_mix[1]), region)
        target = to_image_size(labels_mix[1], size, "nearest")
        return [
            ("mix_image", Tile(f"mix + {partner_id}: {int(region.sum())} px", picture)),
            ("mix_target", self.label_tile("mix target", target)),
        ]


class SegPanels(Panels):
    """train_seg.py: image | the pseudo mask it learns from | ground truth (where the split has it) |
    the prediction (single-scale + flip argmax, as its validation) | its foreground probability
    (1 - background) over the image."""

    def __init__(self, network, picks, info, device, mask_path, gt_layout=None):
        super().__init__(picks, info, device)
        self.network, self.mask_path, self.gt_layout = network, mask_path, gt_layout

    def static(self, pick):
        size = pick.image.shape[:2]
        parts = super().static(pick)
        pseudo = read_label_map(self.mask_path(pick.image_id), size)
        if pseudo is not None:
            parts.append(("pseudo_mask", self.label_tile("pseudo mask", pseudo)))
        if self.gt_layout is not None and self.gt_layout.has_masks:
            gt = read_label_map(self.gt_layout.mask_path(pick.image_id), size)
            if gt is not None:
                parts.append(("ground_truth", self.label_tile("ground truth", gt)))
        return parts

    def draw(self):
        with eval_mode(self.network):
            return super().draw()

    def dynamic(self, pick):
        probs, _ = multiscale_inference(self.network, pick.tensor.to(self.device), "seg", scales=(1.0,))
        # the foreground probability shows learning that the argmax hides (all background early on)
        return [
            ("prediction", self.label_tile("prediction", probs.argmax(0).cpu().numpy())),
            ("foreground", Tile("foreground probability", overlay(pick.image, 1.0 - probs[0].cpu().numpy()))),
        ]


class AffinityPanels(Panels):
    """train_affinity.py: image | the relation labels it learns from (confident background, classes,
    ignore) | boundary map (predict_boundary, what the random walk reads)."""

    def __init__(self, network, picks, info, device, label_path=None):
        super().__init__(picks, info, device)
        self.network, self.label_path = network, label_path

    def static(self, pick):
        parts = super().static(pick)
        labels = (
            None if self.label_path is None else read_label_map(self.label_path(pick.image_id), pick.image.shape[:2])
        )
        if labels is not None:
            parts.append(("relation_labels", self.label_tile("relation labels", labels)))
        return parts

    def draw(self):
        with eval_mode(self.network):
            return super().draw()

    def dynamic(self, pick):
        boundary = self.network.predict_boundary(pick.tensor[None].to(self.device))[0]
        return [("boundary", Tile("boundary map", heat(to_image_size(boundary, pick.image.shape[:2]))))]


def iou_table(iou, class_names):
    """Markdown table of per-class IoU (fractions -> percent; n/a where the class never occurs)."""
    rows = [f"| {name} | {'n/a' if np.isnan(v) else f'{100 * v:.1f}'} |" for name, v in zip(class_names, iou)]
    return "\n".join(["| class | IoU (%) |", "|---|---|", *rows])
