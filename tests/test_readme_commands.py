"""The four commands of the original README (docs/formats.md#command-line) run unchanged but for --root_dir.

A two-image VOC dataset in the seed layout is built in tmp_path, randomly initialised networks
sit where the official weights would (./experiments/models/{tag}/last.pth, relative to the working
directory), and each command runs as a subprocess with the repository's python. The networks are
random, so only the files, their formats and the exit statuses are checked, plus the evaluation
JSON against a direct computation from the written masks.
"""
import json
import os
import pickle
import shlex
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from core.checkpoint import save_weights
from core.datasets import load_dataset_info
from core.io import save_mask
from core.networks import RSEPM, DeepLabV3Plus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SINGLE_TAG = "ResNet50@VOC@RS+EPM@Official"
MULTI_TAG = "ResNet101@VOC@RS+EPM@MS@Official"
# Verbatim from the original README (docs/formats.md#command-line).
README = [
    r'''python3 infer_rsepm.py --gpus 2 --root_dir ../VOC2012/ --dataset VOC --domain validation \
  --backbone resnet50 --tag "ResNet50@VOC@RS+EPM@Official" --conf_th 0.34''',
    r'''python3 convert_seed_to_pseudo_masks.py --gpus 0 --root_dir ../VOC2012/ --dataset VOC \
  --domain validation --folder predictions --tag "ResNet50@VOC@RS+EPM@Official"''',
    r'''python3 evaluate.py --root_dir ../VOC2012/ --domain validation --folder pseudo-labels \
  --tag "ResNet50@VOC@RS+EPM@Official"''',
    r'''python3 infer_seg.py --gpus 3 --root_dir ../VOC2012/ --dataset VOC --domain validation \
  --backbone resnet101 --decoder deeplabv3+ --tag "ResNet101@VOC@RS+EPM@MS@Official"''',
]
HEIGHT, WIDTH = 48, 64
# id -> list of (class name, box x0, y0, x1, y1 inclusive, 0-based)
IMAGES = {
    "2007_000001": [("person", 8, 6, 27, 41)],
    "2007_000002": [("dog", 30, 20, 59, 44), ("person", 4, 2, 19, 30)],
}


def readme_argv(command, root_dir):
    """The README command as an argv list: our python, the script from the repo root, --root_dir
    replaced; every other token untouched."""
    tokens = shlex.split(command.replace("\\\n", " "))
    assert tokens[0] == "python3" and tokens.count("--root_dir") == 1
    tokens[tokens.index("--root_dir") + 1] = str(root_dir) + os.sep
    return [sys.executable, os.path.join(ROOT, tokens[1])] + tokens[2:]


def write_xml(path, objects):
    parts = [f"<annotation><size><width>{WIDTH}</width><height>{HEIGHT}</height><depth>3</depth></size>"]
    for name, x0, y0, x1, y1 in objects:  # VOC boxes are 1-based
        parts.append(f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{x0 + 1}</xmin>"
                     f"<ymin>{y0 + 1}</ymin><xmax>{x1 + 1}</xmax><ymax>{y1 + 1}</ymax></bndbox></object>")
    path.write_text("".join(parts) + "</annotation>\n")


@pytest.fixture
def voc(tmp_path, monkeypatch):
    """tmp_path/VOC2012 in the seed layout (validation only) and tmp_path/experiments/models with
    random weights under the two official tags; the working directory is tmp_path."""
    info = load_dataset_info("VOC")
    split = tmp_path / "VOC2012" / "validation"
    for folder in ("image", "mask", "xml"):
        (split / folder).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for image_id, objects in IMAGES.items():
        image = rng.integers(90, 140, (HEIGHT, WIDTH, 3)).astype(np.uint8)
        mask = np.zeros((HEIGHT, WIDTH), np.uint8)
        for name, x0, y0, x1, y1 in objects:
            image[y0:y1 + 1, x0:x1 + 1] = rng.integers(0, 256, 3)
            mask[y0:y1 + 1, x0:x1 + 1] = info.class_dict[name]
            mask[y0, x0:x1 + 1] = 255  # a void border, as in VOC
        Image.fromarray(image).save(split / "image" / f"{image_id}.jpg", quality=95)
        save_mask(split / "mask" / f"{image_id}.png", mask, info.palette)
        write_xml(split / "xml" / f"{image_id}.xml", objects)
    torch.manual_seed(0)
    save_weights(RSEPM("resnet50", num_classes=21), tmp_path / "experiments" / "models" / SINGLE_TAG / "last.pth")
    save_weights(DeepLabV3Plus("resnet101", num_classes=21, output_stride=8),
                 tmp_path / "experiments" / "models" / MULTI_TAG / "last.pth")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_readme(command, root_dir):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="2")
    proc = subprocess.run(readme_argv(command, root_dir), env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{command}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return proc


def read_pickle(path):
    with open(path, "rb") as f:
        return pickle.load(f)  # written by this test's own run


def direct_miou(pred_dir, gt_dir, num_classes=21):
    """mIoU (%) over classes with a defined IoU, pixels with ground truth 255 ignored."""
    confusion = np.zeros((num_classes, num_classes), np.int64)
    for image_id in IMAGES:
        pred = np.array(Image.open(pred_dir / f"{image_id}.png"))
        gt = np.array(Image.open(gt_dir / f"{image_id}.png"))
        valid = gt != 255
        confusion += np.bincount(gt[valid].astype(np.int64) * num_classes + pred[valid],
                                 minlength=num_classes ** 2).reshape(num_classes, num_classes)
    tp = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - tp
    return 100.0 * np.mean(tp[union > 0] / union[union > 0])


def test_readme_commands_run_unchanged(voc):
    root = voc / "VOC2012"
    experiments = voc / "experiments"

    run_readme(README[0], root)
    seeds = experiments / "predictions" / SINGLE_TAG / "validation"
    assert sorted(os.listdir(seeds)) == [f"{i}.pkl" for i in IMAGES]
    for image_id in IMAGES:
        stored = read_pickle(seeds / f"{image_id}.pkl")
        assert stored["dialect"] == "rsepm" and stored["keys"][0] == 0
        assert stored["seed"].shape == (len(stored["keys"]) - 1, HEIGHT, WIDTH)

    run_readme(README[1], root)
    masks = experiments / "pseudo-labels" / SINGLE_TAG / "validation"
    assert sorted(os.listdir(masks)) == [f"{i}.png" for i in IMAGES]
    for image_id in IMAGES:
        mask = Image.open(masks / f"{image_id}.png")
        assert mask.mode == "P" and mask.size == (WIDTH, HEIGHT)
        keys = read_pickle(seeds / f"{image_id}.pkl")["keys"]
        assert set(np.unique(np.array(mask)).tolist()) <= set(keys.tolist())

    proc = run_readme(README[2], root)
    result_path = experiments / "pseudo-labels" / SINGLE_TAG / "validation.eval.json"
    result = json.loads(result_path.read_text())
    assert result["tag"] == SINGLE_TAG and result["num_images"] == 2 and result["mode"] == "mask"
    assert result["mIoU"] == pytest.approx(direct_miou(masks, root / "validation" / "mask"), abs=1e-6)
    assert SINGLE_TAG in proc.stdout and "mIoU" in proc.stdout

    run_readme(README[3], root)
    seg = experiments / "predictions" / MULTI_TAG / "validation"
    assert sorted(os.listdir(seg)) == [f"{i}.pkl" for i in IMAGES]
    for image_id in IMAGES:
        stored = read_pickle(seg / f"{image_id}.pkl")
        assert stored["dialect"] == "seg"
        keys, planes = stored["keys"], stored["seed"]
        assert planes.shape == (len(keys), HEIGHT, WIDTH) and list(keys) == sorted(set(keys.tolist()))
        assert (planes.reshape(len(keys), -1).max(axis=1) >= 0.05).all()
        assert (planes.sum(axis=0) <= 1 + 1e-4).all()
