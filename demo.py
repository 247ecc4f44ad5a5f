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
# `tools/toy/toy_pipeline.py`.
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
# **The released VOC weights.** Set `DATASET = "VOC"`, `ROOT_DIR = "../VOC2012/"`,
# `BACKBONE = "resnet50"`, `RSEPM_TAG = "ResNet50@VOC@RS+EPM@Official"`, `PRED_DIR = "./experiments/"`,
# `SCALES = (1.0, 0.5, 1.5, 2.0)` and `WEIGHTS` to the downloaded `.pth` file (or leave it `None` when
# the file sits at `experiments/models/ResNet50@VOC@RS+EPM@Official/last.pth`); for the multi-stage
# model `SEG_TAG = "ResNet101@VOC@RS+EPM@MS@Official"`, `SEG_BACKBONE = "resnet101"`,
# `SEG_OUTPUT_STRIDE = 8` (and `SEG_WEIGHTS`). At full VOC resolution these networks take several
# seconds per image on a CPU.

# %% tags=["parameters"] id="parameters"
# Parameters (the cell tagged `parameters`, which `papermill -p NAME VALUE` overrides). Edit the
# defaults here, or set the environment variable RSEPM_DEMO_<NAME> shown on each line
# (`make_demo_notebook.py --root_dir/--pred_dir` and the test run the notebook that way).
import os

if not os.path.isfile(os.path.join("core", "networks.py")):
    raise RuntimeError(f"start this notebook from the repository root (the folder holding core/ and tools/); "
                       f"the working directory is {os.getcwd()}")

from tools.seeds.inference import parse_scales
from tools.paths import model_path
from tools.toy.toy_pipeline import PRED_ROOT as TOY_PRED_DIR, RSEPM_TAG as TOY_RSEPM_TAG, SCALES as TOY_SCALES, \
    SEG_TAG as TOY_SEG_TAG


def setting(name, default, kind=str):
    """RSEPM_DEMO_{name} from the environment (converted by `kind`) if set, else `default`."""
    value = os.environ.get("RSEPM_DEMO_" + name, "")
    return kind(value) if value.strip() else default


def id_list(text):
    return [part.strip() for part in text.split(",") if part.strip()]


ROOT_DIR = setting("ROOT", "toy_data/TOY")               # dataset root in the seed layout
DATASET = setting("DATASET", "TOY")                      # data/{DATASET}.json: class names, colours
DOMAIN = setting("DOMAIN", "validation")                 # split the images come from
# The toy run: experiments/toy/, or its seed0/ after `toy_pipeline.py --seeds 0,1,2`.
TOY_RUN = next((d for d in (TOY_PRED_DIR, os.path.join(TOY_PRED_DIR, "seed0/"))
                if os.path.isfile(model_path(d, TOY_RSEPM_TAG))), TOY_PRED_DIR)
PRED_DIR = setting("PRED_DIR", TOY_RUN)                  # experiment folder (models/, predictions/, ...)
RSEPM_TAG = setting("TAG", TOY_RSEPM_TAG)                # single-stage RS+EPM run
SEG_TAG = setting("SEG_TAG", TOY_SEG_TAG)                # retrained segmenter (multi-stage) run
BACKBONE = setting("BACKBONE", "resnet18")               # RS+EPM backbone
SEG_DECODER = setting("SEG_DECODER", "deeplabv3+")       # deeplabv3+ or deeplabv2
SEG_BACKBONE = setting("SEG_BACKBONE", "resnet18")
SEG_OUTPUT_STRIDE = setting("SEG_OUTPUT_STRIDE", 16, int)  # 16 for the toy run, 8 for the VOC weights
WEIGHTS = setting("WEIGHTS", None)                       # None: {PRED_DIR}/models/{RSEPM_TAG}/last.pth
SEG_WEIGHTS = setting("SEG_WEIGHTS", None)               # None: {PRED_DIR}/models/{SEG_TAG}/last.pth
IMAGE_IDS = setting("IMAGE_IDS", None, id_list)          # None: the first NUM_IMAGES of DOMAIN
NUM_IMAGES = setting("NUM_IMAGES", 4, int)
SCALES = setting("SCALES", parse_scales(TOY_SCALES[1]), parse_scales)  # test-time scales (+ flips), as the toy run
CONF_TH = setting("CONF_TH", -1.0, float)                # -1: ground-truth tags; else classes scoring >= CONF_TH
BG_TH = setting("BG_TH", None, float)                    # None: evaluate.py's best threshold, else 0.35

# %% id="toy-settings"
# The settings of the toy run the stored outputs come from, read from the pipeline so that this
# text cannot drift from what it does.
from IPython.display import Markdown, display

from tools.toy import toy_pipeline as toy


def flag(arguments, name):
    """The value following `name` in a command-line list such as toy.RSEPM_TRAIN."""
    return arguments[arguments.index(name) + 1]


display(Markdown(f"""**The toy run** (`tools/toy/toy_pipeline.py`, on the synthetic TOY dataset `toy_data/TOY`):

* both networks start from a ResNet-18 pretrained by `tools/toy/pretrain_toy.py` for
  {flag(toy.PRETRAIN, '--max_epoch')} epochs on the image-level tags of a separate toy set (generator seed
  {toy.PRETRAIN_DATA_SEED}; `{toy.PRETRAINED}`), the stand-in for the ImageNet weights of the paper;
  no stage sees a pixel label;
* RS+EPM: {flag(toy.RSEPM_TRAIN, '--max_epoch')} epochs, batch {flag(toy.RSEPM_TRAIN, '--batch_size')},
  lr {flag(toy.RSEPM_TRAIN, '--lr')}, {flag(toy.RSEPM_TRAIN, '--crop_size')}-pixel crops, RecurSeed from
  epoch {flag(toy.RSEPM_TRAIN, '--rs_start')}, EdgePredictMix from epoch {flag(toy.RSEPM_TRAIN, '--mix_start')};
* the retrained DeepLabV3+ (output stride 16): {flag(toy.SEG_TRAIN, '--max_epoch')} epochs,
  batch {flag(toy.SEG_TRAIN, '--batch_size')}, {flag(toy.SEG_TRAIN, '--crop_size')}-pixel crops, on the
  random-walk pseudo masks of `train_aug` (`--rw_crf true`: walk, then dense CRF);
* training crops get colour jitter without its hue part
  (`--color_jitter {flag(toy.TOY_JITTER, '--color_jitter')}`): the toy classes differ by hue, among
  other cues, and the published hue jitter would blur that line;
* test-time scales `{flag(toy.SCALES, '--scales')}` with flips (the published `1.0,0.5,1.5,2.0` cost
  several times more), single-stage classes from scores >= {toy.CONF_TH}.
"""))

# %% id="setup"
import glob

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from IPython.display import Markdown, display
from matplotlib.patches import Patch

from core.checkpoint import load_checkpoint
from core.crf import seed_to_mask
from core.datasets import SeedLayout, load_dataset_info, normalize_image
from core.inference import multiscale_inference, rsepm_seed
from core.io import read_json, read_mask
from core.networks import RSEPM, build_network
from core.targets import normalize_cam
from tools.paths import evaluation_path, model_path, pseudo_labels_dir

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
    print(f"run record {record}: training seed {run.get('seed')}, {run.get('threads')} thread(s) per stage, "
          f"{run.get('seconds', 0) / 60:.1f} min")
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
        raise FileNotFoundError(f"{weights}: checkpoint not found (run `bash tools/quickstart.sh` for the toy "
                                "run, or set WEIGHTS / SEG_WEIGHTS to a .pth file)")
    load_checkpoint(network, weights)
    return network.eval()


def present_classes(image_id, scores):
    """1-based classes of the image: ground-truth tags (CONF_TH = -1) or scores (C,) >= CONF_TH."""
    if CONF_TH == -1:
        return sorted(layout.read_tags(image_id))
    return (torch.nonzero(scores >= CONF_TH).flatten() + 1).tolist()


def class_activation_map(model, image, classes):
    """Max over `classes` of the normalised CAM at scale 1: image (3, H, W) -> (H, W) in [0, 1)."""
    cam = model(image[None])["cam"]                          # (1, C, H/16, W/16) CAM logits
    tags = torch.zeros(1, cam.shape[1])
    tags[0, [c - 1 for c in classes]] = 1.0
    cam = normalize_cam(cam, tags)                           # untagged classes are zero
    cam = F.interpolate(cam, size=image.shape[-2:], mode="bilinear", align_corners=False)
    return cam[0].max(dim=0).values.numpy()


rsepm_weights = WEIGHTS or model_path(PRED_DIR, RSEPM_TAG)
rsepm = load_model(RSEPM(BACKBONE, info.num_classes, output_stride=16), rsepm_weights)
print(f"RS+EPM weights: {rsepm_weights}")

results = []
for image_id in image_ids:
    image = layout.read_image(image_id)                      # uint8 (H, W, 3)
    tensor = normalize_image(image)                          # float (3, H, W)
    # The settings of infer_rsepm.py: nearest resizing of the decoder logits, sigmoid class scores.
    probs, scores = multiscale_inference(rsepm, tensor, "rsepm", scales=SCALES, interpolation="nearest",
                                         same=True, with_scores=CONF_TH != -1)
    classes = present_classes(image_id, scores)
    keys, seed = rsepm_seed(probs, classes)
    seed = {"keys": keys, "seed": seed, "dialect": "rsepm"}
    results.append({
        "id": image_id, "image": image, "classes": classes,
        "gt": layout.read_mask(image_id, image.shape[:2]) if layout.has_masks else None,
        "cam": class_activation_map(rsepm, tensor, classes),
        "seed": seed,
        "seed_mask": seed_to_mask(seed, image, mode="argmax", bg_th=bg_th),
        "crf_mask": seed_to_mask(seed, image, mode="crf"),
        "seg_mask": None,
        "rw_mask": stored_mask(RW_TAG, DOMAIN, image_id),  # None until the random-walk stage ran
    })
    print(f"{image_id}: classes {[info.class_names[c] for c in classes]}")

# %% id="retrained-model"
seg_weights = SEG_WEIGHTS or model_path(PRED_DIR, SEG_TAG)
if not os.path.isfile(seg_weights):
    print(f"skipped the retrained model: no weights at {seg_weights} (train_seg.py writes them; "
          "the toy pipeline's stage 5)")
else:
    seg_model = load_model(build_network(SEG_DECODER, SEG_BACKBONE, info.num_classes, SEG_OUTPUT_STRIDE),
                           seg_weights)
    print(f"retrained model weights: {seg_weights}")
    for result in results:
        # The settings of infer_seg.py: bilinear resizing; the mask is the argmax over all classes.
        probs, _ = multiscale_inference(seg_model, normalize_image(result["image"]), "seg", scales=SCALES,
                                        interpolation="bilinear", same=True)
        result["seg_mask"] = probs.argmax(dim=0).numpy().astype(np.uint8)

# %% id="figure"
IGNORE_COLOR = (224, 224, 192)  # VOC's colour of the unscored border band

lookup = np.zeros((256, 3), dtype=np.uint8)
lookup[:info.num_classes] = info.colors
lookup[info.ignore_index] = IGNORE_COLOR


def legend_handles(masks):
    """One coloured patch per class index found in any of the (H, W) masks."""
    present = np.unique(np.concatenate([m.ravel() for m in masks]))
    names = {info.ignore_index: "ignore", **dict(enumerate(info.class_names))}
    return [Patch(facecolor=lookup[c] / 255.0, edgecolor="grey", label=names.get(int(c), str(c)))
            for c in present]


columns = ["image", "ground truth", "CAM", f"RS+EPM seed (bg {bg_th:.2f})", "CRF pseudo mask"]
with_rw = any(r["rw_mask"] is not None for r in results)
if with_rw:
    columns.append("random-walk mask")
with_seg = any(r["seg_mask"] is not None for r in results)
if with_seg:
    columns.append("retrained " + {"deeplabv3+": "DeepLabV3+", "deeplabv2": "DeepLabV2"}.get(SEG_DECODER, SEG_DECODER))

fig, axes = plt.subplots(len(results), len(columns), figsize=(2.3 * len(columns) + 1.6, 2.4 * len(results)),
                         squeeze=False)
for row, result in zip(axes, results):
    masks = [m for m in (result["gt"], result["seed_mask"], result["crf_mask"], result["rw_mask"],
                         result["seg_mask"]) if m is not None]
    row[0].imshow(result["image"])
    if result["gt"] is not None:
        row[1].imshow(lookup[result["gt"]])
    else:
        row[1].text(0.5, 0.5, "no ground truth", ha="center", va="center")
    row[2].imshow(result["image"])
    row[2].imshow(result["cam"], cmap="jet", alpha=0.5, vmin=0.0, vmax=1.0)
    row[3].imshow(lookup[result["seed_mask"]])
    row[4].imshow(lookup[result["crf_mask"]])
    extra = ([result["rw_mask"]] if with_rw else []) + ([result["seg_mask"]] if with_seg else [])
    for ax, mask in zip(row[5:], extra):
        if mask is not None:
            ax.imshow(lookup[mask])
        else:
            ax.text(0.5, 0.5, "no mask", ha="center", va="center")
    for ax in row:
        ax.set_xticks([])
        ax.set_yticks([])
    row[0].set_ylabel(result["id"] + "\n" + ", ".join(info.class_names[c] for c in result["classes"]), fontsize=8)
    row[-1].legend(handles=legend_handles(masks), loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
for ax, title in zip(axes[0], columns):
    ax.set_title(title, fontsize=9)
fig.tight_layout()
plt.show()

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
    print(f"no CRF pseudo masks of train_aug in {pseudo_labels_dir(PRED_DIR, RSEPM_TAG, 'train_aug')} "
          "(convert_seed_to_pseudo_masks.py --domain train_aug writes them; the toy pipeline does)")
else:
    rw_masks = [stored_mask(RW_TAG, "train_aug", i) for i in train_ids]
    titles = ["image", "ground truth", "CRF pseudo mask"] + (["random-walk mask"] if any(
        m is not None for m in rw_masks) else [])
    fig, axes = plt.subplots(len(train_ids), len(titles), figsize=(2.3 * len(titles) + 1.6, 2.4 * len(train_ids)),
                             squeeze=False)
    for row, image_id, rw_mask in zip(axes, train_ids, rw_masks):
        image = train_layout.read_image(image_id)
        panels = [train_layout.read_mask(image_id, image.shape[:2]) if train_layout.has_masks else None,
                  stored_mask(RSEPM_TAG, "train_aug", image_id), rw_mask][:len(titles) - 1]
        row[0].imshow(image)
        for ax, mask in zip(row[1:], panels):
            if mask is None:
                ax.text(0.5, 0.5, "no mask", ha="center", va="center")
            else:
                ax.imshow(lookup[mask])
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_ylabel(image_id, fontsize=8)
        row[-1].legend(handles=legend_handles([m for m in panels if m is not None]), loc="center left",
                       bbox_to_anchor=(1.02, 0.5), fontsize=8)
    for ax, title in zip(axes[0], titles):
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    plt.show()


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
    print(f"no evaluate.py results (*.eval.json) under {PRED_DIR} for {RSEPM_TAG} or {SEG_TAG}; "
          "run evaluate.py (the toy pipeline does) to fill this section")
else:
    header = "| class | " + " | ".join(f"({k})" for k in range(1, len(evaluations) + 1)) + " |"
    lines = [header, "|---|" + "---:|" * len(evaluations)]
    for name in info.class_names:
        lines.append(f"| {name} | " + " | ".join(cell(e["iou"].get(name)) for e in evaluations) + " |")
    lines.append("| **mIoU** | " + " | ".join(f"**{cell(e['mIoU'])}**" for e in evaluations) + " |")
    lines.append("")
    for k, e in enumerate(evaluations, start=1):
        threshold = "" if e.get("threshold") is None else f", background threshold {e['threshold']:.2f}"
        lines.append(f"* ({k}) `{e['folder']}` of `{e['tag']}` on {e['domain']}, "
                     f"{e['num_images']} images{threshold}")
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
        ax.bar(x + (k - (len(evaluations) - 1) / 2) * width, values, width,
               label=f"({k + 1}) {e['folder']}, {e['domain']}: {e['tag']}")
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=30, ha="right")
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=1)
    fig.tight_layout()
    plt.show()
