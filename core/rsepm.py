"""One RS+EPM training step as a module (docs/method.md#training-iteration).

The target generation (SCG, PAMR, certain filter, edge predict, mix) lives inside `forward`, so
that DataParallel and DistributedDataParallel split it across devices together with the
network: each device builds the targets of its own share of the batch (images are mixed with
partners from the same share).

Targets are generated in float32 with autocast disabled, whatever the caller's autocast state
(docs/method.md#scg, precision); the padded part of a crop (`valid` False) is ignored by every
loss and target, SCG and L_rec included.
"""

import dataclasses

import torch
import torch.nn as nn

from core.losses import classification_loss, masked_global_average, reconstruction_loss, segmentation_loss
from core.pamr import PAMR_DILATIONS, PAMR_ITERATIONS, refine_with_pamr
from core.precision import autocast_off
from core.scg import SCG_BG_POINT, SCG_FG_POINT, SCG_FIRST_TH, SCG_SECOND_TH, resize_to, scg_maps
from core.targets import (
    CF_BG_TH,
    CF_FG_TH,
    EP_CONF,
    EP_DELTA,
    IGNORE_INDEX,
    certain_filter,
    edge_predict,
    mix_batch,
    normalize_cam,
    paste,
    random_partner,
    resize_nearest,
    restrict_to_tags,
    valid_cells,
)

LOSS_TERMS = ("cls", "rec", "seg", "rec_mix", "seg_mix", "cls_mix")
FEATURE_NAMES = ("C1", "C2", "C3", "C4", "C5")
SCG_GRIDS = ("cam", "c3")
MIX_MODES = ("epm", "certainmix", "none")
TEACHERS = ("online", "ema")
# where a default comes from (docs/method.md#sources); every field names one of these
SOURCES = ("paper", "released code", "default tag", "sibling code", "inferred")


def _field(default, source, help, **flag):
    """A config field with the metadata train_rsepm.py turns into its flag: `source` (one of
    SOURCES, optionally followed by a detail such as the file), `help`, and the flag's own
    `choices` / `kind` ('int_list', 'feature_list') when the type alone does not say it."""
    if source.split(" (")[0] not in SOURCES:
        raise ValueError(f"unknown source {source!r}")
    return dataclasses.field(default=default, metadata={"source": source, "help": help, **flag})


@dataclasses.dataclass
class RSEPMConfig:
    """The method's settings: the single definition of each default (train_rsepm.py generates its
    method flags from these fields, docs/method.md lists them).

    Epochs are counted from 1 as in the authors' trainers: a term with start epoch s is on in the
    epoch with 0-based index e when e + 1 >= s (see `active_terms`).
    """

    rs_start: int = _field(
        5,
        "default tag (RS(ep=5); 1-based reading from the released trainers.py)",
        "first epoch of RecurSeed, counted from 1 (on when epoch index + 1 >= rs_start); "
        "above --max_epoch with --mix none = CAM-only baseline",
    )
    mix_start: int = _field(15, "default tag (CM(ep=15))", "first epoch of the mix, counted from 1 like --rs_start")
    mix: str = _field(
        "epm", "paper (certainmix = version 1)", "label rule of the mixed images; none = no mix", choices=MIX_MODES
    )
    w_cam: float = _field(1.0, "default tag (RS(cam=1.0))", "weight of L_rec")
    w_seg: float = _field(1.0, "default tag (RS(seg=1.0))", "weight of L_seg")
    w_cam_mix: float = _field(1.0, "default tag (CM(cam=1.0))", "weight of L_rec on mixed images")
    w_seg_mix: float = _field(1.0, "default tag (CM(seg=1.0))", "weight of L_seg on mixed images")
    w_cls_mix: float = _field(1.0, "default tag (CM(cls=1.0))", "weight of L_cls on mixed images")
    scg_fg_th: float = _field(
        SCG_FIRST_TH,
        "released code (the authors' core/inferences.py SCG first_th)",
        "SCG: similarities below it are zeroed",
    )
    scg_so_th: float = _field(
        SCG_SECOND_TH,
        "released code (the authors' core/inferences.py SCG second_th)",
        "SCG second-order threshold (divided by N)",
    )
    scg_fg_point: float = _field(SCG_FG_POINT, "released code (foreground_th)", "CAM value of SCG foreground points")
    scg_bg_point: float = _field(SCG_BG_POINT, "released code (background_th)", "CAM value of SCG background points")
    scg_features: tuple = _field(
        ("C4", "C5"), "inferred", "backbone maps SCG correlates (comma list of C1..C5)", kind="feature_list"
    )
    scg_grid: str = _field(
        "cam",
        "inferred",
        "grid of SCG: cam = the CAM grid (stride 16); c3 = the C3 grid "
        "(stride 8), as the released inference code's SCG option",
        choices=SCG_GRIDS,
    )
    pamr_iterations: int = _field(PAMR_ITERATIONS, "inferred", "PAMR iterations")
    pamr_dilations: tuple = _field(PAMR_DILATIONS, "inferred", "PAMR dilations (comma list)", kind="int_list")
    cf_fg_th: float = _field(CF_FG_TH, "default tag (CF(c=0.55); meaning inferred)", "certain filter c")
    cf_bg_th: float = _field(CF_BG_TH, "default tag (CF(u=0.10); meaning inferred)", "certain filter u")
    ep_delta: float = _field(EP_DELTA, "inferred", "edge predict: probability jump that makes an edge")
    ep_conf: float = _field(EP_CONF, "inferred", "edge predict: pixels at least this confident are kept")
    teacher: str = _field(
        "online", "inferred", "network that generates the targets: the online network or its EMA", choices=TEACHERS
    )
    ema_decay: float = _field(
        0.999,
        "released code (the authors' tools/ai/torch_utils.py ModelEMA)",
        "EMA decay d; after u updates the decay is d * (1 - exp(-u / 2000))",
    )

    def __post_init__(self):
        self.scg_features = tuple(self.scg_features)
        unknown = [name for name in self.scg_features if name not in FEATURE_NAMES]
        if not self.scg_features or unknown:
            raise ValueError(f"scg_features must be a non-empty subset of {FEATURE_NAMES}, got {self.scg_features!r}")
        self.pamr_dilations = tuple(self.pamr_dilations)
        for name in ("scg_grid", "mix", "teacher"):
            choices = type(self).__dataclass_fields__[name].metadata["choices"]
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")

    def active_terms(self, epoch):
        """(use_rs, use_mix) in epoch `epoch`, counted from 1 as the starts are."""
        use_rs = epoch >= self.rs_start
        return use_rs, use_rs and self.mix != "none" and epoch >= self.mix_start

    def feature_names(self):
        """Backbone maps the target generator must return: SCG's maps, plus C3 for its grid."""
        extra = ("C3",) if self.scg_grid == "c3" and "C3" not in self.scg_features else ()
        return self.scg_features + extra

    def weights(self):
        return {
            "cls": 1.0,
            "rec": self.w_cam,
            "seg": self.w_seg,
            "rec_mix": self.w_cam_mix,
            "seg_mix": self.w_seg_mix,
            "cls_mix": self.w_cls_mix,
        }


class RSEPMTraining(nn.Module):
    """Wraps an RSEPM network (and optionally an EMA teacher) to compute the loss terms.

    forward(images (B, 3, S, S), tags (B, C) multi-hot, valid (B, S, S) bool, use_rs, use_mix,
    seed) returns a dict of scalar loss terms (only those that are active) and detached
    statistics ('certain', 'ignored': fractions of pixels in the RS target). Under DataParallel
    each value comes back once per device and the caller averages them.
    """

    def __init__(self, network, config, teacher=None):
        super().__init__()
        self.network = network
        self.teacher = teacher  # None: the online network generates its own targets
        self.config = config

    def train(self, mode=True):
        """Train/eval the online network; the teacher always stays in eval mode, so its BatchNorm
        uses (and does not update) its averaged statistics and its dropout is off."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def forward(self, images, tags, valid, use_rs=False, use_mix=False, seed=0):
        cfg = self.config
        own_features = cfg.feature_names() if use_rs and self.teacher is None else False
        out = self.network(images, with_features=own_features)
        losses = {"cls": classification_loss(masked_global_average(out["cam"], valid), tags)}
        stats = {}
        seg_logits = out["seg"]
        if not use_rs:
            # The decoder is unused before rs_start; a zero-weighted term keeps every parameter in
            # the graph so DistributedDataParallel needs no unused-parameter search.
            losses["cls"] = losses["cls"] + 0.0 * seg_logits.sum()
            return {**losses, **stats}

        with torch.no_grad():
            source = out if self.teacher is None else self.teacher(images, with_features=cfg.feature_names())
            m_rs = self.recur_seed(images, source, tags, valid)  # (B, C, H/4, W/4)
            valid4 = resize_nearest(valid, m_rs.shape[-2:])
            m_seg = certain_filter(m_rs, tags, cfg.cf_fg_th, cfg.cf_bg_th).masked_fill(~valid4, IGNORE_INDEX)
            stats.update(_label_stats(m_seg, valid4))
            # images whose target keeps no foreground pixel: most of an epoch's is a collapse
            certain_fg = m_seg.gt(0) & m_seg.ne(IGNORE_INDEX)
            stats["no_fg"] = (~certain_fg.flatten(1).any(1)).float().mean()
        losses["rec"] = reconstruction_loss(out["cam"], m_rs, tags, valid)
        losses["seg"] = segmentation_loss(seg_logits, m_seg)

        if use_mix and cfg.mix != "none":
            with torch.no_grad(), autocast_off(images.device.type):
                # the decoder of the target generator (the teacher when there is one)
                m_ep = self.mix_labels(images, source["seg"].detach(), tags).masked_fill(~valid4, IGNORE_INDEX)
                generator = torch.Generator().manual_seed(int(seed))
                perm = random_partner(images.shape[0], generator).to(images.device)
                images_mix, m_seg_mix, m_rs_mix, tags_mix = mix_batch(images, m_ep, m_rs, tags, perm)
                pasted = m_ep.ne(0) & m_ep.ne(IGNORE_INDEX)  # the region mix_batch pastes
                valid_mix = paste(pasted, valid, valid[perm])
                # per image, in input pixels: 0 over an epoch means the mix did nothing
                stats["pasted_pixels"] = pasted.flatten(1).sum(1).float().mean() * (
                    images.shape[-2] * images.shape[-1] / (pasted.shape[-2] * pasted.shape[-1])
                )
            out_mix = self.network(images_mix)
            losses["rec_mix"] = reconstruction_loss(out_mix["cam"], m_rs_mix, tags_mix, valid_mix)
            losses["seg_mix"] = segmentation_loss(out_mix["seg"], m_seg_mix)
            if cfg.w_cls_mix > 0:
                losses["cls_mix"] = classification_loss(masked_global_average(out_mix["cam"], valid_mix), tags_mix)
        return {**losses, **stats}

    def recur_seed(self, images, source, tags, valid=None):
        """RecurSeed targets M_rs (docs/method.md#cam, #scg, #pamr): CAM -> SCG -> PAMR at stride 4.

        images: (B, 3, H, W); source: the target generator's outputs ('cam', 'seg' and the
        feature maps cfg.feature_names()); tags: (B, C) multi-hot; valid: None or (B, H, W) bool,
        False on crop padding (padded cells are neither SCG points nor correlation partners).
        SCG runs on cfg.scg_grid: the CAM grid, or the C3 grid (the raw CAM is then resized
        bilinearly to it before the max normalisation, as the released inference code does).
        Everything in float32 with autocast off. Returns (B, C, H/4, W/4) in [0, 1], zero on
        classes not in `tags`.
        """
        cfg = self.config
        with autocast_off(images.device.type):
            cam = source["cam"].detach().float()
            grid = tuple(source["C3"].shape[-2:]) if cfg.scg_grid == "c3" else tuple(cam.shape[-2:])
            cells = None if valid is None else valid_cells(valid, grid)
            cam = normalize_cam(resize_to(cam, grid), tags, valid=cells)
            features = [source[name].detach().float() for name in cfg.scg_features]
            m_scg = scg_maps(
                features,
                cam,
                tags,
                fg_point=cfg.scg_fg_point,
                bg_point=cfg.scg_bg_point,
                fg_th=cfg.scg_fg_th,
                so_th=cfg.scg_so_th,
                valid=cells,
            )
            size = source["seg"].shape[-2:]
            m_rs = refine_with_pamr(
                images, m_scg, out_size=size, iterations=cfg.pamr_iterations, dilations=cfg.pamr_dilations
            )
            return m_rs.clamp(0, 1) * (tags > 0).to(m_rs.dtype)[:, :, None, None]

    def mix_labels(self, images, seg_logits, tags):
        """Hard labels of the mix (docs/method.md#edgepredictmix): decoder probabilities over
        background and the tags, refined by PAMR, then edge predict (epm) or the certain filter
        (certainmix). Float32 with autocast off."""
        cfg = self.config
        m_dec = refine_with_pamr(
            images, restrict_to_tags(seg_logits, tags), iterations=cfg.pamr_iterations, dilations=cfg.pamr_dilations
        )
        if cfg.mix == "certainmix":
            return certain_filter(m_dec[:, 1:], tags, cfg.cf_fg_th, cfg.cf_bg_th)
        return edge_predict(m_dec, delta=cfg.ep_delta, conf=cfg.ep_conf)


def _label_stats(labels, valid):
    """Fractions of valid pixels that are certain (foreground or background) and ignored."""
    total = valid.sum().clamp(min=1).float()
    ignored = (labels.eq(IGNORE_INDEX) & valid).sum().float()
    return {"certain": (total - ignored) / total, "ignored": ignored / total}
