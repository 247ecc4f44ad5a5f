# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: id,tags,-all
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown] id="intro"
# # RS+EPM demo: from class activation maps to pseudo masks
#
# Weakly-supervised semantic segmentation (WSSS) trains a network to label every pixel although
# the training images only come with image-level tags ("this picture contains a disc and a ring").
# This notebook takes a few images through every stage of RS+EPM and shows what each stage
# produces:
#
# 1. the **CAM** of the classifier head (where the network finds evidence for a class),
# 2. the **RS+EPM seed** of the segmentation head (a soft map per class, thresholded),
# 3. the **CRF pseudo mask** made from the seed,
# 4. the **retrained model**'s prediction (a DeepLabV3+ trained on the random-walk pseudo masks of
#    the training images, as in the paper),
#
# next to the image and its ground truth, then the stored pseudo masks of a few training images,
# and the per-class IoU that `evaluate.py` measured.
#
# **The outputs stored in this file** come from the toy run of `bash tools/quickstart.sh`
# (`python tools/toy/toy_pipeline.py`, training seed 0; the run's own record is printed below), read from
# `experiments/toy/` (or `experiments/toy/seed0/` after `--seeds 0,1,2`);
# `python tools/toy/make_demo_notebook.py --execute` re-executes the notebook on that folder and stores
# the new outputs. The settings of that run are shown below the parameters cell, read from
# `tools/toy/toy_pipeline.py`; on another run, that run's own, from the `config.json` its training wrote.
#
# **This notebook's source is `demo.py`** (a [jupytext](https://jupytext.readthedocs.io) percent-format
# script beside it): edit that file, then `python tools/toy/make_demo_notebook.py` rewrites
# `demo.ipynb`, keeping the stored outputs, and `--execute` re-executes it.
#
# This notebook recomputes the CAM, seed, CRF and retrained panels with the same scales (the
# `SCALES` parameter), so they match the run's seed files up to CRF rounding.
#
# **Running it yourself.** Start Jupyter from the repository root (`jupyter notebook demo.ipynb`)
# so that `core` and `tools` can be imported. Besides the runtime requirements it needs matplotlib
# and a Jupyter kernel (`pip install -r requirements-dev.txt`) and a front end such as
# `pip install notebook` or `jupyterlab`. Everything runs on the CPU in a minute or less.
#
# **Another run.** Set the parameters below, or their `RSEPM_DEMO_<NAME>` variables before starting
# Jupyter (`RSEPM_DEMO_TAG=MyRS RSEPM_DEMO_PRED_DIR=./experiments/ jupyter notebook demo.ipynb`), or
# execute it headlessly with one flag per parameter:
# `python tools/toy/make_demo_notebook.py --execute --tag MyRS --seg_tag MySeg --dataset ../MyData/MyData.json
# --root_dir ../MyData/ --pred_dir ./experiments/ --out my_demo.ipynb` (`--help` lists them; a flag wins
# over its variable). The networks' backbone, decoder and output stride come from the runs' `config.json`
# unless set.
#
# **The released VOC weights.** Set `DATASET = "VOC"`, `ROOT_DIR = "../VOC2012/"`,
# `BACKBONE = "resnet50"`, `RSEPM_TAG = "ResNet50@VOC@RS+EPM@Official"`, `PRED_DIR = "./experiments/"`,
# `SCALES = (1.0, 0.5, 1.5, 2.0)` and `WEIGHTS` to the downloaded `.pth` file (or leave it `None` when
# the file sits at `experiments/models/ResNet50@VOC@RS+EPM@Official/last.pth`); for the multi-stage
# model `SEG_TAG = "ResNet101@VOC@RS+EPM@MS@Official"`, `SEG_BACKBONE = "resnet101"`,
# `SEG_OUTPUT_STRIDE = 8` (and `SEG_WEIGHTS`). At full VOC resolution these networks take several
# seconds per image on a CPU.

# %% tags=["parameters"] id="parameters"
# Parameters. Edit the defaults here, or set the environment variable RSEPM_DEMO_<NAME> shown on
# each line before starting Jupyter; `python tools/toy/make_demo_notebook.py --execute` passes those
# variables on and sets them from its flags (--tag, --root_dir, --pred_dir, ...; its --help).
import os

if not os.path.isfile(os.path.join("core", "networks.py")):
    raise RuntimeError(
        f"start this notebook from the repository root (the folder holding core/ and tools/); "
        f"the working directory is {os.getcwd()}"
    )

from tools.paths import model_path
from tools.seeds.infer_loop import parse_scales
from tools.toy.toy_pipeline import PRED_ROOT as TOY_PRED_DIR
from tools.toy.toy_pipeline import RSEPM_TAG as TOY_RSEPM_TAG
from tools.toy.toy_pipeline import SCALES as TOY_SCALES
from tools.toy.toy_pipeline import SEG_TAG as TOY_SEG_TAG


def setting(name, default, kind=str):
    """RSEPM_DEMO_{name} from the environment (converted by `kind`) if set, else `default`."""
    value = os.environ.get("RSEPM_DEMO_" + name, "")
    return kind(value) if value.strip() else default


def id_list(text):
    return [part.strip() for part in text.split(",") if part.strip()]


ROOT_DIR = setting("ROOT", "toy_data/TOY")  # dataset root in the seed layout
DATASET = setting("DATASET", "TOY")  # data/{DATASET}.json: class names, colours
DOMAIN = setting("DOMAIN", "validation")  # split the images come from
# The toy run: experiments/toy/, or its seed0/ after `toy_pipeline.py --seeds 0,1,2`.
TOY_RUN = next(
    (d for d in (TOY_PRED_DIR, os.path.join(TOY_PRED_DIR, "seed0/")) if os.path.isfile(model_path(d, TOY_RSEPM_TAG))),
    TOY_PRED_DIR,
)
PRED_DIR = setting("PRED_DIR", TOY_RUN)  # experiment folder (models/, predictions/, ...)
RSEPM_TAG = setting("TAG", TOY_RSEPM_TAG)  # single-stage RS+EPM run
SEG_TAG = setting("SEG_TAG", TOY_SEG_TAG)  # retrained segmenter (multi-stage) run
# The networks: None takes what the run's config.json (beside the weights) records, else the default
# named (the toy run's), as infer_rsepm.py / infer_seg.py do; a value contradicting the record is refused.
BACKBONE = setting("BACKBONE", None)  # RS+EPM backbone (resnet18)
SEG_DECODER = setting("SEG_DECODER", None)  # deeplabv3+ or deeplabv2 (deeplabv3+)
SEG_BACKBONE = setting("SEG_BACKBONE", None)  # (resnet18)
SEG_OUTPUT_STRIDE = setting("SEG_OUTPUT_STRIDE", None, int)  # (16, the toy run's; 8 for the VOC weights)
WEIGHTS = setting("WEIGHTS", None)  # None: {PRED_DIR}/models/{RSEPM_TAG}/last.pth
SEG_WEIGHTS = setting("SEG_WEIGHTS", None)  # None: {PRED_DIR}/models/{SEG_TAG}/last.pth
IMAGE_IDS = setting("IMAGE_IDS", None, id_list)  # None: the first NUM_IMAGES of DOMAIN
NUM_IMAGES = setting("NUM_IMAGES", 4, int)
SCALES = setting("SCALES", parse_scales(TOY_SCALES[1]), parse_scales)  # test-time scales (+ flips), as the toy run
CONF_TH = setting("CONF_TH", -1.0, float)  # -1: ground-truth tags; else classes scoring >= CONF_TH
BG_TH = setting("BG_TH", None, float)  # None: evaluate.py's best threshold, else 0.35

# %% id="toy-settings"
# The settings of the run shown. On the toy run (the defaults above; the stored outputs) the toy
# pipeline's, read from it so that this text cannot drift from what it does; on any other run, the
# settings its trainings recorded in the config.json beside the weights (train_rsepm.py, train_seg.py).
from IPython.display import Markdown, display

from core.io import read_json
from tools.toy import toy_pipeline as toy

rsepm_weights = WEIGHTS or model_path(PRED_DIR, RSEPM_TAG)
seg_weights = SEG_WEIGHTS or model_path(PRED_DIR, SEG_TAG)
TOY_RUNS = (TOY_PRED_DIR, os.path.join(TOY_PRED_DIR, "seed0/"))
ON_TOY_RUN = (
    RSEPM_TAG == TOY_RSEPM_TAG
    and WEIGHTS is None
    and os.path.abspath(PRED_DIR) in {os.path.abspath(d) for d in TOY_RUNS}
)


def flag(arguments, name):
    """The value following `name` in a command-line list such as toy.RSEPM_TRAIN."""
    return arguments[arguments.index(name) + 1]


TOY_TEXT = f"""**The toy run** (`tools/toy/toy_pipeline.py`, on the synthetic TOY dataset `toy_data/TOY`):

* both networks start from a ResNet-18 pretrained by `tools/toy/pretrain_toy.py` for
  {flag(toy.PRETRAIN, "--max_epoch")} epochs on the image-level tags of a separate toy set (generator seed
  {toy.PRETRAIN_DATA_SEED}; `{toy.PRETRAINED}`), the stand-in for the ImageNet weights of the paper;
  no stage sees a pixel label;
* RS+EPM: {flag(toy.RSEPM_TRAIN, "--max_epoch")} epochs, batch {flag(toy.RSEPM_TRAIN, "--batch_size")},
  lr {flag(toy.RSEPM_TRAIN, "--lr")}, {flag(toy.RSEPM_TRAIN, "--crop_size")}-pixel crops, RecurSeed from
  epoch {flag(toy.RSEPM_TRAIN, "--rs_start")}, EdgePredictMix from epoch {flag(toy.RSEPM_TRAIN, "--mix_start")};
* the retrained DeepLabV3+ (output stride 16): {flag(toy.SEG_TRAIN, "--max_epoch")} epochs,
  batch {flag(toy.SEG_TRAIN, "--batch_size")}, {flag(toy.SEG_TRAIN, "--crop_size")}-pixel crops, on the
  random-walk pseudo masks of `train_aug` (`--rw_crf true`: walk, then dense CRF);
* training crops get colour jitter without its hue part
  (`--color_jitter {flag(toy.TOY_JITTER, "--color_jitter")}`): the toy classes differ by hue, among
  other cues, and the published hue jitter would blur that line;
* test-time scales `{flag(toy.SCALES, "--scales")}` with flips (the published `1.0,0.5,1.5,2.0` cost
  several times more), single-stage classes from scores >= {toy.CONF_TH}.
"""
# (key of the recorded args, how it reads) of each training's settings shown for another run
RSEPM_FIELDS = [
    ("dataset", "dataset `{}`"),
    ("domain", "`{}` images"),
    ("backbone", "{}"),
    ("pretrained", "pretrained `{}`"),
    ("max_epoch", "{} epochs"),
    ("batch_size", "batch {}"),
    ("lr", "lr {}"),
    ("crop_size", "{}-pixel crops"),
    ("rs_start", "RecurSeed from epoch {}"),
    ("mix", "mix `{}`"),
    ("mix_start", "EdgePredictMix from epoch {}"),
    ("color_jitter", "colour jitter `{}`"),
    ("seed", "training seed {}"),
]
SEG_FIELDS = [
    ("dataset", "dataset `{}`"),
    ("domain", "`{}` images"),
    ("decoder", "{}"),
    ("backbone", "{}"),
    ("output_stride", "output stride {}"),
    ("pretrained", "pretrained `{}`"),
    ("label_tag", "on the pseudo masks of `{}`"),
    ("max_epoch", "{} epochs"),
    ("batch_size", "batch {}"),
    ("lr", "lr {}"),
    ("crop_size", "{}-pixel crops"),
    ("seed", "training seed {}"),
]


def training_record(weights):
    """(path, config) of the config.json that the training run wrote beside `weights`; config is
    None when there is none (released or foreign weights, or no such run)."""
    path = os.path.join(os.path.dirname(weights), "config.json")
    return path, (read_json(path) if os.path.isfile(path) else None)


def recorded_settings(what, tag, weights, fields):
    """A bullet: the run's `fields` as its config.json records them."""
    path, config = training_record(weights)
    if config is None:
        found = "its weights are there" if os.path.isfile(weights) else f"nor `{weights}`"
        return f"* {what} `{tag}`: no training record (no `{path}`; {found})"
    args = config.get("args") if isinstance(config.get("args"), dict) else {}
    shown = [
        text.format(",".join(map(str, v)) if isinstance(v, list) else v)
        for key, text in fields
        for v in [args.get(key)]
        if v is not None
    ]
    machine = (
        f"trained on {config['world_size']} x {config['device']}"
        if config.get("world_size") and config.get("device")
        else ""
    )
    when = ", ".join(part for part in (machine, config.get("time")) if part)
    return f"* {what} `{args.get('tag') or tag}`: {', '.join(shown)} (`{path}`{', ' + when if when else ''})"


def run_text():
    """The settings of a run that is not the toy pipeline's, from its trainings' records."""
    classes = "classes from the ground-truth tags" if CONF_TH == -1 else f"the classes scoring >= {CONF_TH}"
    return "\n".join(
        [
            f"**The run `{RSEPM_TAG}` in `{PRED_DIR}`**, as its trainings recorded it:",
            "",
            recorded_settings("RS+EPM", RSEPM_TAG, rsepm_weights, RSEPM_FIELDS),
            recorded_settings("the retrained model", SEG_TAG, seg_weights, SEG_FIELDS),
            f"* here: images of `{ROOT_DIR}` ({DATASET}, {DOMAIN}), test-time scales "
            f"`{','.join(map(str, SCALES))}` with flips, {classes}.",
        ]
    )


display(Markdown(TOY_TEXT if ON_TOY_RUN else run_text()))

# %% id="setup"
import contextlib
import glob
import io
from types import SimpleNamespace

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from IPython.display import Markdown, display

from core.crf import seed_to_mask
from core.dataset_layout import SeedLayout, load_dataset_info, normalize_image
from core.io import read_mask
from core.multiscale import multiscale_inference, rsepm_seed
from core.networks import RSEPM, build_network
from core.targets import normalize_cam
from core.weights import load_checkpoint
from tools.paths import evaluation_path, model_path, pseudo_labels_dir
from tools.seeds.infer_loop import resolve_network_args


def set_by(name, variable, flag):
    """Where a parameter is set: here, by its environment variable, or by make_demo_notebook.py's flag."""
    return f"{name} (RSEPM_DEMO_{variable}, make_demo_notebook.py {flag})"


if not os.path.isfile(rsepm_weights):
    if WEIGHTS:
        problem = f"{set_by('WEIGHTS', 'WEIGHTS', '--weights')} is {WEIGHTS}: no such file"
    else:
        problem = (
            f"no RS+EPM weights at {rsepm_weights}, the last.pth of {set_by('RSEPM_TAG', 'TAG', '--tag')} "
            f"{RSEPM_TAG!r} under {set_by('PRED_DIR', 'PRED_DIR', '--pred_dir')} {PRED_DIR!r}: name a "
            f"trained run, or set {set_by('WEIGHTS', 'WEIGHTS', '--weights')} to its .pth file"
        )
        if ON_TOY_RUN:
            problem += "; `bash tools/quickstart.sh` makes the toy run"
    raise FileNotFoundError(problem)


def network_args(weights, given, defaults, labels):
    """`given` ({name: value or None}) with each None filled from the config.json that the training
    run wrote beside `weights`, else from `defaults`; a value contradicting the record is refused
    (UsageError), as infer_rsepm.py / infer_seg.py do. Returns (values, where they come from)."""
    args = SimpleNamespace(**given)
    with contextlib.redirect_stdout(io.StringIO()):  # its line names the absolute path; said below as given
        config = resolve_network_args(args, weights, defaults, labels)
    where = os.path.join(os.path.dirname(weights), "config.json") if config else "no config.json beside the weights"
    return vars(args), where


network, where = network_args(
    rsepm_weights,
    {"backbone": BACKBONE},
    {"backbone": "resnet18"},
    {"backbone": set_by("BACKBONE", "BACKBONE", "--backbone")},
)
BACKBONE = network["backbone"]
print(f"RS+EPM network: {BACKBONE} ({where})")
network, where = network_args(
    seg_weights,
    {"decoder": SEG_DECODER, "backbone": SEG_BACKBONE, "output_stride": SEG_OUTPUT_STRIDE},
    {"decoder": "deeplabv3+", "backbone": "resnet18", "output_stride": 16},
    {
        "decoder": set_by("SEG_DECODER", "SEG_DECODER", "--seg_decoder"),
        "backbone": set_by("SEG_BACKBONE", "SEG_BACKBONE", "--seg_backbone"),
        "output_stride": set_by("SEG_OUTPUT_STRIDE", "SEG_OUTPUT_STRIDE", "--seg_output_stride"),
    },
)
SEG_DECODER, SEG_BACKBONE, SEG_OUTPUT_STRIDE = network["decoder"], network["backbone"], network["output_stride"]
if os.path.isfile(seg_weights):
    print(f"retrained network: {SEG_DECODER} {SEG_BACKBONE}, output stride {SEG_OUTPUT_STRIDE} ({where})")

torch.set_grad_enabled(False)
FIGURE_DPI = 72  # small PNGs: the notebook is stored with its figures
plt.rcParams["figure.dpi"] = FIGURE_DPI
info = load_dataset_info(DATASET)
layout = SeedLayout(ROOT_DIR, DOMAIN, info)
image_ids = list(IMAGE_IDS or layout.ids[:NUM_IMAGES])
known = set(layout.ids)
missing = [i for i in image_ids if i not in known]
if missing:
    raise ValueError(f"IMAGE_IDS not in {layout.split_dir}: {', '.join(missing)}")
if CONF_TH == -1 and not layout.has_xml:
    raise ValueError(f"{layout.split_dir} has no xml tags: set CONF_TH (e.g. 0.34) to use the predicted classes")
print(f"{len(image_ids)} image(s) of {DATASET}/{DOMAIN}: {', '.join(image_ids)}; scales {SCALES}")
record = os.path.join(PRED_DIR, "summary.json")  # written by tools/toy/toy_pipeline.py
if os.path.isfile(record):
    run = read_json(record)
    print(
        f"run record {record}: training seed {run.get('seed')}, {run.get('threads')} thread(s) per stage, "
        f"{run.get('seconds', 0) / 60:.1f} min"
    )
# The random-walk stage writes its pseudo masks beside the CRF ones, under the tag RSEPM_TAG@rw.
RW_TAG = RSEPM_TAG + "@rw"


def stored_mask(tag, domain, image_id):
    """The (H, W) uint8 mask pseudo-labels/{tag}/{domain}/{image_id}.png of PRED_DIR, or None."""
    path = os.path.join(pseudo_labels_dir(PRED_DIR, tag, domain), image_id + ".png")
    return read_mask(path) if os.path.isfile(path) else None


# %% [markdown] id="panels"
# ## What the panels show
#
# * **Image** and **ground truth**: the ground-truth mask is used here only for comparison; the
#   method never sees it. The light band around objects is "ignore" (not scored), as in VOC.
# * **CAM** (class activation map): the classifier's 1x1 convolution evaluated at every position of
#   the last backbone feature map, before it is averaged into an image-level score. It marks where
#   the network found evidence for a class, usually only the most telling part of an object. Each
#   class map is divided by its own maximum (`core.targets.normalize_cam`); the panel shows the
#   largest value over the image's classes, coarse (stride 16) and upsampled.
# * **RS+EPM seed**: the segmentation head's probability of each present class, each scaled so
#   its peak is 1, averaged over the test-time scales and flips: what `infer_rsepm.py` stores.
#   A pixel takes the class with the highest score, or background when no score reaches the
#   background threshold (the best one of `evaluate.py`'s sweep when that result exists).
# * **CRF pseudo mask**: `convert_seed_to_pseudo_masks.py` adds a background score
#   (1 - highest seed)^2 and runs a dense CRF, which pulls the boundaries onto colour edges
#   (`core.crf.seed_to_mask`).
# * **Random-walk mask** (only when `pseudo-labels/{RSEPM_TAG}@rw/` holds masks of these images):
#   the seeds propagated over learned pixel affinities (an affinity network trained on the seeds'
#   confident regions), then, in the toy run (`--rw_crf true`), the same dense CRF; read from its
#   files. These are the labels the retrained model learns from, as in the paper.
# * **Retrained model** (multi-stage): an ordinary, fully supervised DeepLabV3+ trained on the
#   pseudo masks; it needs no tags at test time. Its argmax is often cleaner than its own labels,
#   because mistakes that differ from image to image average out during training.
#
# "Present classes" are the image's ground-truth tags when `CONF_TH = -1` (like
# `infer_rsepm.py --conf_th -1`); with `CONF_TH = 0.34` they are the classes the classifier
# predicts, which is how a single-stage validation result is made.

# %% id="threshold"
DEFAULT_BG_TH = 0.35


def best_threshold(pred_dir, tag, domain):
    """evaluate.py's best background threshold for this run's seeds, and the JSON it came from.

    Looks at the seeds of `domain`, then of train (the toy run sweeps the train seeds).
    Returns (threshold, path) or (None, None).
    """
    for folder_domain in dict.fromkeys([domain, "train"]):
        path = evaluation_path(pred_dir, "predictions", tag, folder_domain)
        if os.path.isfile(path):
            threshold = read_json(path).get("threshold")
            if threshold is not None:
                return float(threshold), path
    return None, None


if BG_TH is not None:
    bg_th = BG_TH
    print(f"background threshold {bg_th:.2f} (BG_TH)")
else:
    bg_th, source = best_threshold(PRED_DIR, RSEPM_TAG, DOMAIN)
    if bg_th is None:
        bg_th = DEFAULT_BG_TH
        print(f"background threshold {bg_th:.2f} (default: no evaluate.py seed result for {RSEPM_TAG})")
    else:
        print(f"background threshold {bg_th:.2f} (best of the sweep in {source})")


# %% id="rsepm"
def load_model(network, weights):
    """The network with the checkpoint's weights, in eval mode; a clear error when the file is absent."""
    if not os.path.isfile(weights):
        raise FileNotFoundError(
            f"{weights}: checkpoint not found (run `bash tools/quickstart.sh` for the toy "
            "run, or set WEIGHTS / SEG_WEIGHTS to a .pth file)"
        )
    load_checkpoint(network, weights)
    return network.eval()


def present_classes(image_id, scores):
    """1-based classes of the image: ground-truth tags (CONF_TH = -1) or scores (C,) >= CONF_TH."""
    if CONF_TH == -1:
        return sorted(layout.read_tags(image_id))
    return (torch.nonzero(scores >= CONF_TH).flatten() + 1).tolist()


def class_activation_map(model, image, classes):
    """Max over `classes` of the normalised CAM at scale 1: image (3, H, W) -> (H, W) in [0, 1)."""
    cam = model(image[None])["cam"]  # (1, C, H/16, W/16) CAM logits
    tags = torch.zeros(1, cam.shape[1])
    tags[0, [c - 1 for c in classes]] = 1.0
    cam = normalize_cam(cam, tags)  # untagged classes are zero
    cam = F.interpolate(cam, size=image.shape[-2:], mode="bilinear", align_corners=False)
    return cam[0].max(dim=0).values.numpy()


rsepm_weights = WEIGHTS or model_path(PRED_DIR, RSEPM_TAG)
rsepm = load_model(RSEPM(BACKBONE, info.num_classes, output_stride=16), rsepm_weights)
print(f"RS+EPM weights: {rsepm_weights}")

results = []
for image_id in image_ids:
    image = layout.read_image(image_id)  # uint8 (H, W, 3)
    tensor = normalize_image(image)  # float (3, H, W)
    # The settings of infer_rsepm.py: nearest resizing of the decoder logits, sigmoid class scores.
    probs, scores = multiscale_inference(
        rsepm, tensor, "rsepm", scales=SCALES, interpolation="nearest", same=True, with_scores=CONF_TH != -1
    )
    classes = present_classes(image_id, scores)
    keys, seed = rsepm_seed(probs, classes)
    seed = {"keys": keys, "seed": seed, "dialect": "rsepm"}
    results.append(
        {
            "id": image_id,
            "image": image,
            "classes": classes,
            "gt": layout.read_mask(image_id, image.shape[:2]) if layout.has_masks else None,
            "cam": class_activation_map(rsepm, tensor, classes),
            "seed": seed,
            "seed_mask": seed_to_mask(seed, image, mode="argmax", bg_th=bg_th),
            "crf_mask": seed_to_mask(seed, image, mode="crf"),
            "seg_mask": None,
            "rw_mask": stored_mask(RW_TAG, DOMAIN, image_id),  # None until the random-walk stage ran
        }
    )
    print(f"{image_id}: classes {[info.class_names[c] for c in classes]}")

# %% id="retrained-model"
seg_weights = SEG_WEIGHTS or model_path(PRED_DIR, SEG_TAG)
if not os.path.isfile(seg_weights):
    print(
        f"skipped the retrained model: no weights at {seg_weights} (train_seg.py writes them; "
        "the toy pipeline's stage 5)"
    )
else:
    seg_model = load_model(build_network(SEG_DECODER, SEG_BACKBONE, info.num_classes, SEG_OUTPUT_STRIDE), seg_weights)
    print(f"retrained model weights: {seg_weights}")
    for result in results:
        # The settings of infer_seg.py: bilinear resizing; the mask is the argmax over all classes.
        probs, _ = multiscale_inference(
            seg_model, normalize_image(result["image"]), "seg", scales=SCALES, interpolation="bilinear", same=True
        )
        result["seg_mask"] = probs.argmax(dim=0).numpy().astype(np.uint8)

# %% id="figure"
# Drawn by tools/drawing.py, the module that draws the training runs' TensorBoard panels: the same
# colours, heat map, tiles and legend in both places.
from tools.drawing import colorize, composite, legend_entries, overlay

DECODER_NAMES = {"deeplabv3+": "DeepLabV3+", "deeplabv2": "DeepLabV2"}


def show(pictures):
    """The composites one under the other, at their own pixel size."""
    width = max(p.shape[1] for p in pictures)
    stacked = np.concatenate(
        [np.pad(p, ((0, 0), (0, width - p.shape[1]), (0, 0)), constant_values=255) for p in pictures]
    )
    fig = plt.figure(figsize=(stacked.shape[1] / FIGURE_DPI, stacked.shape[0] / FIGURE_DPI))
    fig.add_axes([0, 0, 1, 1]).imshow(stacked)
    fig.axes[0].axis("off")
    plt.show()


def label_tile(title, mask):
    return (title, colorize(mask, info.palette), True) if mask is not None else None  # True: a label map


pictures = []
for result in results:
    labels = [result["gt"], result["seed_mask"], result["crf_mask"], result["rw_mask"], result["seg_mask"]]
    seg_name = "retrained " + DECODER_NAMES.get(SEG_DECODER, SEG_DECODER)
    tiles = [
        (f"{result['id']}: image", result["image"]),
        label_tile("ground truth", result["gt"]),
        (
            "CAM (max over " + ", ".join(info.class_names[c] for c in result["classes"]) + ")",
            overlay(result["image"], result["cam"]),
        ),
        label_tile(f"RS+EPM seed (bg {bg_th:.2f})", result["seed_mask"]),
        label_tile("CRF pseudo mask", result["crf_mask"]),
        label_tile("random-walk mask", result["rw_mask"]),
        label_tile(seg_name, result["seg_mask"]),
    ]
    legend = legend_entries(labels, info.palette, info.class_names, always=(0, *result["classes"]))
    pictures.append(composite([t for t in tiles if t is not None], legend, columns=7))
show(pictures)

# %% [markdown] id="train-intro"
# ## The pseudo masks the second stage trains on
#
# The panels above recompute everything from the weights. The files below are the run's own: the
# CRF pseudo masks `convert_seed_to_pseudo_masks.py` wrote for `train_aug`, and, when the
# random-walk stage has run, its masks (`pseudo-labels/{RSEPM_TAG}@rw/`, the labels of `train_seg.py`
# in the toy run), next to the ground truth the method never saw.

# %% id="train-masks"
train_ids = []
if os.path.isdir(pseudo_labels_dir(PRED_DIR, RSEPM_TAG, "train_aug")):  # else train_aug may not even exist
    train_layout = SeedLayout(ROOT_DIR, "train_aug", info)
    train_ids = [i for i in train_layout.ids if stored_mask(RSEPM_TAG, "train_aug", i) is not None][:NUM_IMAGES]
if not train_ids:
    print(
        f"no CRF pseudo masks of train_aug in {pseudo_labels_dir(PRED_DIR, RSEPM_TAG, 'train_aug')} "
        "(convert_seed_to_pseudo_masks.py --domain train_aug writes them; the toy pipeline does)"
    )
else:
    pictures = []
    for image_id in train_ids:
        image = train_layout.read_image(image_id)
        gt = train_layout.read_mask(image_id, image.shape[:2]) if train_layout.has_masks else None
        masks = [gt, stored_mask(RSEPM_TAG, "train_aug", image_id), stored_mask(RW_TAG, "train_aug", image_id)]
        titles = ("ground truth", "CRF pseudo mask", "random-walk mask")
        tiles = [(f"{image_id}: image", image)] + [label_tile(t, m) for t, m in zip(titles, masks)]
        pictures.append(
            composite([t for t in tiles if t is not None], legend_entries(masks, info.palette, info.class_names))
        )
    show(pictures)


# %% [markdown] id="evaluation-intro"
# ## Scores measured by `evaluate.py`
#
# `evaluate.py` writes its result as JSON beside the folder it scored:
# `{PRED_DIR}/{folder}/{tag}/{domain}.eval.json`. The table lists every one found for the two
# tags above and their variants (`{tag}@...`, e.g. the toy run's `@conf0.34` seeds of
# validation made with predicted classes). `predictions` rows score seeds (RS+EPM seeds at the
# best background threshold of the sweep, the retrained model's argmax), `pseudo-labels` rows
# score the CRF masks. IoU is in percent; a blank cell is a class absent from both the prediction
# and the ground truth.


# %% id="evaluation-table"
def evaluation_files(pred_dir, tags):
    """Paths of evaluate.py's JSON results of each tag and its `{tag}@...` variants, tag by tag."""
    found = []
    for tag in tags:
        paths = []
        for name in (glob.escape(tag), glob.escape(tag) + "@*"):
            paths += glob.glob(os.path.join(glob.escape(pred_dir), "*", name, "*.eval.json"))
        found += sorted(paths)
    return list(dict.fromkeys(found))  # a variant of one tag may be the other tag


def cell(value):
    return "" if value is None else f"{value:.2f}"


evaluations = [read_json(path) for path in evaluation_files(PRED_DIR, dict.fromkeys([RSEPM_TAG, SEG_TAG]))]
if not evaluations:
    print(
        f"no evaluate.py results (*.eval.json) under {PRED_DIR} for {RSEPM_TAG} or {SEG_TAG}; "
        "run evaluate.py (the toy pipeline does) to fill this section"
    )
else:
    header = "| class | " + " | ".join(f"({k})" for k in range(1, len(evaluations) + 1)) + " |"
    lines = [header, "|---|" + "---:|" * len(evaluations)]
    for name in info.class_names:
        lines.append(f"| {name} | " + " | ".join(cell(e["iou"].get(name)) for e in evaluations) + " |")
    lines.append("| **mIoU** | " + " | ".join(f"**{cell(e['mIoU'])}**" for e in evaluations) + " |")
    lines.append("")
    for k, e in enumerate(evaluations, start=1):
        threshold = "" if e.get("threshold") is None else f", background threshold {e['threshold']:.2f}"
        lines.append(f"* ({k}) `{e['folder']}` of `{e['tag']}` on {e['domain']}, {e['num_images']} images{threshold}")
    display(Markdown("\n".join(lines)))

# %% id="evaluation-chart"
if evaluations:
    names = info.class_names + ["mIoU"]
    x = np.arange(len(names))
    width = 0.8 / len(evaluations)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(names)), 3.6))
    for k, e in enumerate(evaluations):
        values = [np.nan if e["iou"].get(n) is None else e["iou"][n] for n in info.class_names]
        values.append(np.nan if e["mIoU"] is None else e["mIoU"])
        ax.bar(
            x + (k - (len(evaluations) - 1) / 2) * width,
            values,
            width,
            label=f"({k + 1}) {e['folder']}, {e['domain']}: {e['tag']}",
        )
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=30, ha="right")
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=1)
    fig.tight_layout()
    plt.show()
