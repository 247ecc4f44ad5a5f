"""The four commands of the original README (docs/formats.md#command-line) run unchanged but for --root_dir.

A two-image VOC dataset in the seed layout is built in tmp_path, randomly initialised networks
sit where the official weights would (./experiments/models/{tag}/last.pth, relative to the working
directory), and each command runs as a subprocess with the repository's python. The networks are
random, so only the files, their formats and the exit statuses are checked, plus the evaluation
JSON against a direct computation from the written masks.
"""

import json
import os
import runpy
import shlex
import subprocess
import sys

import numpy as np
import pytest
import torch
from mini_data import make_own_inputs, make_split
from PIL import Image

from core.dataset_layout import load_dataset_info
from core.networks import RSEPM, DeepLabV3Plus
from core.weights import save_weights

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SINGLE_TAG = "ResNet50@VOC@RS+EPM@Official"
MULTI_TAG = "ResNet101@VOC@RS+EPM@MS@Official"
# Verbatim from the original README (docs/formats.md#command-line).
README = [
    r"""python3 infer_rsepm.py --gpus 2 --root_dir ../VOC2012/ --dataset VOC --domain validation \
  --backbone resnet50 --tag "ResNet50@VOC@RS+EPM@Official" --conf_th 0.34""",
    r'''python3 convert_seed_to_pseudo_masks.py --gpus 0 --root_dir ../VOC2012/ --dataset VOC \
  --domain validation --folder predictions --tag "ResNet50@VOC@RS+EPM@Official"''',
    r'''python3 evaluate.py --root_dir ../VOC2012/ --domain validation --folder pseudo-labels \
  --tag "ResNet50@VOC@RS+EPM@Official"''',
    r'''python3 infer_seg.py --gpus 3 --root_dir ../VOC2012/ --dataset VOC --domain validation \
  --backbone resnet101 --decoder deeplabv3+ --tag "ResNet101@VOC@RS+EPM@MS@Official"''',
]
HEIGHT, WIDTH = 48, 64
# id -> list of (class name, box x0, y0, x1, y1 inclusive, 0-based)
IMAGES = {"2007_000001": [("person", 8, 6, 27, 41)], "2007_000002": [("dog", 30, 20, 59, 44), ("person", 4, 2, 19, 30)]}


def readme_argv(command, root_dir):
    """The README command as an argv list: our python, the script from the repo root, --root_dir
    replaced; every other token untouched."""
    tokens = shlex.split(command.replace("\\\n", " "))
    assert tokens[0] == "python3" and tokens.count("--root_dir") == 1
    tokens[tokens.index("--root_dir") + 1] = str(root_dir) + os.sep
    return [sys.executable, os.path.join(ROOT, tokens[1])] + tokens[2:]


def boxes(info, rng, objects_of, void_border=False):
    """make_split's images: grey noise with a box of one colour per object, the mask of the boxes
    (their top row void when `void_border`, as in VOC) and their xml. objects_of(k, image_id) ->
    [(class name, x0, y0, x1, y1 inclusive, 0-based)]."""

    def draw(k, image_id):
        objects = objects_of(k, image_id)
        image = rng.integers(90, 140, (HEIGHT, WIDTH, 3)).astype(np.uint8)
        mask = np.zeros((HEIGHT, WIDTH), np.uint8)
        for name, x0, y0, x1, y1 in objects:
            image[y0 : y1 + 1, x0 : x1 + 1] = rng.integers(0, 256, 3)
            mask[y0 : y1 + 1, x0 : x1 + 1] = info.class_dict[name]
            if void_border:
                mask[y0, x0 : x1 + 1] = 255
        # VOC boxes are 1-based
        return image, mask, [(name, (x0 + 1, y0 + 1, x1 + 1, y1 + 1), 0) for name, x0, y0, x1, y1 in objects]

    return draw


@pytest.fixture
def voc(tmp_path, monkeypatch):
    """tmp_path/VOC2012 in the seed layout (validation only) and tmp_path/experiments/models with
    random weights under the two official tags; the working directory is tmp_path."""
    info = load_dataset_info("VOC")
    make_split(
        str(tmp_path / "VOC2012"),
        "validation",
        list(IMAGES),
        info=info,
        draw=boxes(info, np.random.default_rng(0), lambda k, image_id: IMAGES[image_id], void_border=True),
    )
    torch.manual_seed(0)
    save_weights(RSEPM("resnet50", num_classes=21), tmp_path / "experiments" / "models" / SINGLE_TAG / "last.pth")
    save_weights(
        DeepLabV3Plus("resnet101", num_classes=21, output_stride=8),
        tmp_path / "experiments" / "models" / MULTI_TAG / "last.pth",
    )
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_readme(command, root_dir):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="2")
    proc = subprocess.run(readme_argv(command, root_dir), env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{command}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return proc


def read_pickle(path):
    """A seed file of this test's own run, in the format the README's command wrote (uint8 by
    default: core.io.load_seed rebuilds the float32 planes)."""
    from core.io import load_seed

    return load_seed(path)


def direct_miou(pred_dir, gt_dir, num_classes=21):
    """mIoU (%) over classes with a defined IoU, pixels with ground truth 255 ignored."""
    confusion = np.zeros((num_classes, num_classes), np.int64)
    for image_id in IMAGES:
        pred = np.array(Image.open(pred_dir / f"{image_id}.png"))
        gt = np.array(Image.open(gt_dir / f"{image_id}.png"))
        valid = gt != 255
        confusion += np.bincount(
            gt[valid].astype(np.int64) * num_classes + pred[valid], minlength=num_classes**2
        ).reshape(num_classes, num_classes)
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


# --- every command block of README.md, on miniature VOC- and COCO-named data -------------------
# Small settings appended after the README's flags (argparse keeps the last value), so the real
# command lines run with their own flags on CPU in seconds.
SMALL = {
    "train_rsepm.py": [
        "--max_epoch",
        "1",
        "--rs_start",
        "1",
        "--mix_start",
        "1",
        "--pamr_iterations",
        "2",
        "--pamr_dilations",
        "1,2",
        "--min_image_size",
        "32",
        "--max_image_size",
        "64",
    ],
    "train_seg.py": ["--max_epoch", "1", "--min_image_size", "32", "--max_image_size", "64"],
    "train_affinity.py": ["--max_epoch", "1", "--rw_radius", "3"],
}
INFERENCE_SMALL = {"infer_rsepm.py": ["--scales", "1.0,0.5"], "infer_seg.py": ["--scales", "1.0,0.5"]}
TRAINING_SMALL = ["--pretrained", "none", "--batch_size", "2", "--crop_size", "32", "--num_workers", "0"]
BUILDERS = {"tools/builders/prepare_voc.py", "tools/builders/prepare_coco.py"}
OWN = "tools/builders/prepare_own.py"  # runs for real, on the folder of images the fixture writes
SHELL = {"bash tools/quickstart.sh", "bash tools/run_tests.sh"}  # the toy pipeline and this suite


def readme_blocks(text):
    """(heading, [command]) of each ```bash block: continuation lines joined, comments dropped."""
    blocks, heading, lines, fenced = [], "", [], False
    for line in text.splitlines():
        if line.startswith("#") and not fenced:  # a heading
            heading = line.lstrip("#").strip()
        elif line.startswith("```"):
            if fenced:
                joined = "\n".join(lines).replace("\\\n", " ")
                commands = [c.split(" #")[0].strip() for c in joined.splitlines()]
                blocks.append((heading, [c for c in commands if c and not c.startswith("#")]))
            fenced, lines = line.strip() == "```bash", []
        elif fenced:
            lines.append(line)
    return blocks


def script_argv(command, roots, variables=None):
    """The script path and its arguments: shell variables ($D) expanded, torchrun and python
    dropped, --root_dir pointed at the miniature dataset of the same name."""
    for name, value in (variables or {}).items():
        command = command.replace("$" + name, value)
    tokens = shlex.split(command)
    if tokens[0] == "torchrun":
        tokens = tokens[tokens.index("--nproc_per_node") + 2 :]
    elif tokens[0] in ("python", "python3"):
        tokens = tokens[1:]
    if "--root_dir" in tokens:
        i = tokens.index("--root_dir") + 1
        tokens[i] = str(roots[tokens[i].rstrip("/").split("/")[-1]]) + os.sep
    return tokens[0], tokens[1:]


def assignment(command):
    """(name, value) of a shell variable assignment such as D="--root_dir ...", else None."""
    name, sep, value = command.partition("=")
    if sep and name.isidentifier() and " " not in name:
        return name, shlex.split(value)[0] if value.strip() else ""
    return None


def run_script(script, argv):
    """Run a script as `python script argv` would, in this process (the imports are paid once):
    its own `__main__` block, so the test does not depend on how main and cli are called."""
    saved = sys.argv
    sys.argv = [script] + argv
    try:
        runpy.run_path(os.path.join(ROOT, script), run_name="__main__")
    except SystemExit as e:
        assert e.code in (None, 0), f"{script} {' '.join(argv)}: exit status {e.code}"
    finally:
        sys.argv = saved


def miniature_split(folder, info, count, seed, masks=True):
    """`count` images named {seed:04d}_{k:06d}, each with one or two boxes of the dataset's classes."""
    names = info.class_names[1:]

    def objects_of(k, image_id):
        return [(names[(k + j) % len(names)], 4 + 30 * j, 6, 25 + 30 * j, 40) for j in range(1 + k % 2)]

    make_split(
        str(folder.parent),
        folder.name,
        [f"{seed:04d}_{k:06d}" for k in range(count)],
        masks,
        masks,
        info=info,
        draw=boxes(info, np.random.default_rng(seed), objects_of),
    )


@pytest.fixture
def miniature(tmp_path, monkeypatch):
    """VOC2012 (train, train_aug, validation, test) and COCO2014 (train, validation) in the seed
    layout, random weights under the official tags, the working directory tmp_path."""
    splits = {
        "VOC2012": ("VOC", ["train", "train_aug", "validation", "test"]),
        "COCO2014": ("COCO", ["train", "validation"]),
    }
    for seed, (name, (dataset, domains)) in enumerate(splits.items()):
        info = load_dataset_info(dataset)
        for k, domain in enumerate(domains):
            # VOC's train is a subset of train_aug (both write into the train folders): same ids
            miniature_split(
                tmp_path / name / domain,
                info,
                4,
                10 * seed + (k if domain != "train_aug" else 0),
                masks=domain != "test",
            )
    # the working directory tmp_path/work holds the own-data block's folder of images, tag CSV
    # and masks (its ../MyData/ is tmp_path/MyData) and ./experiments/
    work = tmp_path / "work"
    make_own_inputs(work, count=10)
    os.rename(work / "images", work / "photos")
    torch.manual_seed(0)
    save_weights(RSEPM("resnet50", num_classes=21), work / "experiments" / "models" / SINGLE_TAG / "last.pth")
    save_weights(
        DeepLabV3Plus("resnet101", num_classes=21, output_stride=8),
        work / "experiments" / "models" / MULTI_TAG / "last.pth",
    )
    monkeypatch.chdir(work)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    return {**{name: tmp_path / name for name in splits}, "MyData": tmp_path / "MyData"}


def test_readme_blocks_are_all_known():
    """A new block in README.md must be run below (or be one of the two shell entry points)."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        blocks = readme_blocks(f.read())
    assert len(blocks) >= 8
    for heading, commands in blocks:
        for command in commands:
            if command in SHELL or assignment(command):
                continue
            script = script_argv(command, {"VOC2012": "", "COCO2014": "", "MyData": ""})[0]
            assert script in BUILDERS or os.path.isfile(os.path.join(ROOT, script)), command


def test_readme_command_blocks_run_on_miniature_data(miniature):
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        blocks = readme_blocks(f.read())
    ran, variables = [], {}
    for heading, commands in blocks:
        for command in commands:
            if command in SHELL:
                continue
            if assignment(command):
                name, value = assignment(command)
                variables[name] = value
                continue
            script, argv = script_argv(command, miniature, variables)
            if script == OWN:
                run_script(script, argv + ["--num_workers", "0"])
                continue
            if script in BUILDERS:
                # the builders need the official downloads; test_prepare_voc/coco run them on
                # fakes, here the README's flags must parse
                module = runpy.run_path(os.path.join(ROOT, script))
                module["parse_args"](argv) if "parse_args" in module else module["get_args_parser"]().parse_args(argv)
                continue
            argv = argv + (
                SMALL[script] + TRAINING_SMALL
                if script in SMALL
                else ["--num_workers", "1"] + INFERENCE_SMALL.get(script, [])
            )
            run_script(script, argv)
            ran.append((heading, script))
    headings = {h for h, _ in ran}
    assert {
        "Released weights, VOC val",
        "VOC single stage",
        "VOC multi stage",
        "COCO single stage",
        "COCO multi stage",
        "Your own data",
    } <= headings
    experiments = miniature["VOC2012"].parent / "work" / "experiments"
    for folder, tag, domain in [
        ("pseudo-labels", "ResNet101@VOC@RS+EPM@MS@rw@ours", "validation.eval.json"),
        ("pseudo-labels", "ResNet50@VOC@RS+EPM@ours@rw", "train.eval.json"),
        ("pseudo-labels", "ResNet101@COCO@RS+EPM@MS@rw@ours", "validation.eval.json"),
        ("pseudo-labels", "ResNet50@COCO@RS+EPM@ours", "validation.eval.json"),
    ]:
        result = json.loads((experiments / folder / tag / domain).read_text())
        assert result["tag"] == tag and result["num_images"] == 4
    own = json.loads((experiments / "predictions" / "MySeg" / "validation.eval.json").read_text())
    assert own["tag"] == "MySeg" and own["num_images"] == 2 and sorted(own["iou"]) == ["background", "cat", "dog"]
