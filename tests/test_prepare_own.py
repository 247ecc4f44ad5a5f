"""tools/builders/prepare_own.py (own images + a tag table -> seed layout + description) and
`--dataset path/to/description.json` across the scripts: the layout against the generated inputs,
the split rules, each bad input (one message naming the file and row, nothing written), and the
whole pipeline from the builder to evaluate.py on a few generated images."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from mini_data import CAT, OWN_SIZE, make_own_inputs
from PIL import Image

import convert_seed_to_pseudo_masks
import evaluate
import infer_rsepm
import infer_seg
import train_rsepm
import train_seg
from core.dataset_layout import DatasetInfo, SeedLayout, dataset_name, load_dataset_info
from core.errors import DatasetError, UsageError
from core.io import read_json
from tools.builders import prepare_own
from tools.builders.build_steps import PrepareError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H, W = OWN_SIZE


def build(tmp_path, *extra, out="Mine"):
    argv = [
        "--images",
        str(tmp_path / "images"),
        "--tags",
        str(tmp_path / "tags.csv"),
        "--out",
        str(tmp_path / out),
        "--num_workers",
        "0",
        *extra,
    ]
    return prepare_own.main(prepare_own.get_args_parser().parse_args(argv))


def only_inputs_left(tmp_path):
    """Nothing written: neither OUT nor a temporary folder (hidden) beside it."""
    return not [n for n in os.listdir(tmp_path) if n == "Mine" or n.startswith(".")]


@pytest.fixture
def inputs(tmp_path):
    return make_own_inputs(tmp_path)


# --- the layout ---------------------------------------------------------------------------------
def test_layout_holds_the_inputs(tmp_path, inputs, capsys):
    masks, tags = inputs
    result = build(tmp_path, "--masks", str(tmp_path / "masks"))
    root = tmp_path / "Mine"
    assert "classes (2, sorted" in capsys.readouterr().out and result["classes"] == ["cat", "dog"]
    assert result["description"] == str(root / "Mine.json") and result["masks"] == ["train", "validation"]
    assert result["splits"] == {"train": 8, "validation": 2}
    assert sorted(os.listdir(root)) == ["Mine.json", "train", "train_aug", "validation"]

    info = load_dataset_info(str(root / "Mine.json"))
    assert info.class_names == ["background", "cat", "dog"] and info.name == "Mine"
    voc = read_json(os.path.join(ROOT, "data", "VOC.json"))  # the same colour of each index as VOC's
    assert info.colors == [voc["color_dict"][n] for n in voc["class_names"][:3]]

    ids = {}
    for split in ("train", "validation"):
        layout = SeedLayout(str(root), split, info, require_masks=True, require_xml=True)
        ids[split] = layout.ids
        for image_id in layout.ids:
            assert [info.class_names[t] for t in layout.read_tags(image_id)] == tags[image_id]
            assert np.array_equal(layout.read_mask(image_id), masks[image_id])
            assert Image.open(layout.mask_path(image_id)).mode == "P"
    assert sorted(ids["train"] + ids["validation"]) == sorted(masks) and not set(ids["train"]) & set(ids["validation"])
    assert SeedLayout(str(root), "train_aug", info).ids == ids["train"]

    # JPEG bytes are kept; the PNG is re-encoded as a JPEG close to its pixels
    split_of = {i: s for s, group in ids.items() for i in group}
    assert (root / split_of["im1"] / "image" / "im1.jpg").read_bytes() == (tmp_path / "images" / "im1.jpg").read_bytes()
    reencoded = Image.open(root / split_of["im0"] / "image" / "im0.jpg")
    assert reencoded.format == "JPEG"
    assert reencoded.size == (W, H)
    inside = np.asarray(reencoded, np.int64)[8:16, 8:16]  # flat cat colour: JPEG keeps it closely
    assert np.abs(inside - CAT).max() <= 8


def test_fraction_split_is_seeded_and_lists_are_followed(tmp_path, inputs):
    first = build(tmp_path, "--val_fraction", "0.3", "--seed", "1", out="a")
    build(tmp_path, "--val_fraction", "0.3", "--seed", "1", out="b")  # the same seed again
    val = lambda out: sorted(os.listdir(tmp_path / out / "validation" / "image"))  # noqa: E731
    assert first["splits"] == {"train": 7, "validation": 3} and val("a") == val("b")
    assert (
        len(
            {tuple(val("a"))}
            | {
                tuple(val(o))
                for o in ("c", "d", "e")
                if build(tmp_path, "--val_fraction", "0.3", "--seed", str(ord(o)), out=o)
            }
        )
        > 1
    )  # other seeds, other draws

    (tmp_path / "train.txt").write_text("im0\nim1\nim2\nim3\n")
    (tmp_path / "val.txt").write_text("im8\nim9\n")
    result = build(
        tmp_path,
        "--train_list",
        str(tmp_path / "train.txt"),
        "--val_list",
        str(tmp_path / "val.txt"),
        "--classes",
        "dog,cat",
        out="lists",
    )
    assert result["splits"] == {"train": 4, "validation": 2} and val("lists") == ["im8.jpg", "im9.jpg"]
    assert DatasetInfo(result["description"]).class_names == ["background", "dog", "cat"]  # --classes order

    none = build(tmp_path, "--val_fraction", "0", out="all")
    assert none["splits"] == {"train": 10} and not (tmp_path / "all" / "validation").exists()


def test_json_tags_and_a_class_file(tmp_path, inputs):
    _, tags = inputs
    (tmp_path / "tags.json").write_text(
        json.dumps({i: ";".join(t) if n % 2 else t for n, (i, t) in enumerate(tags.items())})
    )
    (tmp_path / "classes.txt").write_text("dog\ncat\n")
    result = build(tmp_path, "--tags", str(tmp_path / "tags.json"), "--classes", str(tmp_path / "classes.txt"))
    info = DatasetInfo(result["description"])
    layout = SeedLayout(str(tmp_path / "Mine"), "train", info)
    assert info.class_names == ["background", "dog", "cat"]
    assert all([info.class_names[t] for t in layout.read_tags(i)] == tags[i] for i in layout.ids)


# --- bad input: one message naming the file and row; nothing written ----------------------------
def rewrite_row(tmp_path, number, text):
    lines = (tmp_path / "tags.csv").read_text().splitlines()
    lines[number - 1] = text
    (tmp_path / "tags.csv").write_text("\n".join(lines) + "\n")


def refused(tmp_path, *extra, error=PrepareError):
    with pytest.raises(error) as caught:
        build(tmp_path, *extra)
    assert only_inputs_left(tmp_path), os.listdir(tmp_path)
    return str(caught.value)


def test_tag_outside_the_class_list(tmp_path, inputs):
    message = refused(tmp_path, "--classes", "cat")
    assert message.startswith(f"{tmp_path / 'tags.csv'} row 2: tag 'dog' is not in the class list")
    assert refused(tmp_path, "--classes", "classes.txt") == "--classes classes.txt: class list file not found"
    assert "listed twice" in refused(tmp_path, "--classes", "cat,dog,cat")
    assert "'background' is class 0" in refused(tmp_path, "--classes", "background,cat,dog")


def test_duplicate_id(tmp_path, inputs):
    rewrite_row(tmp_path, 5, "im1,cat")  # im1.jpg is row 3 already
    message = refused(tmp_path)
    assert message == f"{tmp_path / 'tags.csv'} row 5: duplicate id 'im1' (first at {tmp_path / 'tags.csv'} row 3)"
    (tmp_path / "tags.json").write_text('{"im1.jpg": ["cat"], "im2.jpg": ["cat"], "im1.jpg": ["dog"]}')
    assert "entry 'im1.jpg': duplicate id" in refused(tmp_path, "--tags", str(tmp_path / "tags.json"))
    os.remove(tmp_path / "tags.json")
    rewrite_row(tmp_path, 5, "im3.jpg,")
    (tmp_path / "images" / "im3.png").write_bytes((tmp_path / "images" / "im0.png").read_bytes())
    rewrite_row(tmp_path, 5, "im3,")  # im3.jpg and im3.png: the stem names two files
    assert "row 5: id 'im3' is ambiguous: im3.jpg, im3.png" in refused(tmp_path)


def test_unreadable_or_16_bit_image(tmp_path, inputs):
    path = tmp_path / "images" / "im4.jpg"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # header intact, pixels cut
    assert refused(tmp_path).startswith(f"{path}: ")
    path.write_bytes(b"not an image")
    assert refused(tmp_path).startswith(f"{path}: corrupt or truncated image")
    os.remove(path)
    rewrite_row(tmp_path, 6, "im4,cat;dog")
    path = tmp_path / "images" / "im4.png"
    Image.fromarray(np.full((H, W), 40000, np.uint16)).save(path)
    assert Image.open(path).mode.startswith("I")
    message = refused(tmp_path)
    assert message.startswith(f"{path}: image mode") and "not 8 bits" in message


def test_mask_size_differs_from_its_image(tmp_path, inputs):
    path = tmp_path / "masks" / "im6.png"
    Image.fromarray(np.zeros((H, W + 2), np.uint8)).save(path)
    message = refused(tmp_path, "--masks", str(tmp_path / "masks"))
    assert message.startswith(f"{path}: mask size {W + 2}x{H} differs from its image")
    os.remove(path)
    assert "no mask for image 'im6'" in refused(tmp_path, "--masks", str(tmp_path / "masks"))


def test_mask_classes_outside_the_tags_are_warned_about(tmp_path, inputs, capsys):
    build(tmp_path, "--masks", str(tmp_path / "masks"), "--classes", "dog,cat")  # masks say 1 = cat
    warning = capsys.readouterr().err
    # the images with one square: cat only im3, im5, im9 (index 1 reads dog), dog only im4 (2 reads cat)
    assert "warning: 4 mask(s) hold a class their image is not tagged with: " in warning
    assert "Mask index i is the i-th class of: 1 dog, 2 cat (--classes)" in warning


def test_empty_class(tmp_path, inputs):
    message = refused(tmp_path, "--classes", "cat,dog,bird")
    assert "class 'bird' has no tagged image in train" in message and "tags.csv" in message
    (tmp_path / "train.txt").write_text("im1\nim3\n")  # untagged, cat: no dog
    (tmp_path / "val.txt").write_text("im0\n")
    message = refused(tmp_path, "--train_list", str(tmp_path / "train.txt"), "--val_list", str(tmp_path / "val.txt"))
    assert "class 'dog' has no tagged image in train (2 images" in message


def test_usage_errors(tmp_path, inputs):
    assert "--train_list and --val_list go together" in refused(tmp_path, "--train_list", "x", error=UsageError)
    (tmp_path / "Mine").mkdir()
    with pytest.raises(UsageError, match="exists; choose a new folder or pass --overwrite true"):
        build(tmp_path)
    build(tmp_path, "--overwrite", "true")
    assert (tmp_path / "Mine" / "Mine.json").is_file()


def test_command_line_prints_one_error_line(tmp_path, inputs):
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "tools", "builders", "prepare_own.py"),
            "--images",
            str(tmp_path / "images"),
            "--tags",
            str(tmp_path / "tags.csv"),
            "--classes",
            "cat",
            "--out",
            str(tmp_path / "Mine"),
            "--num_workers",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and only_inputs_left(tmp_path)
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'tags.csv'} row 2: tag 'dog' is not in the class list --classes (1 classes: cat)"
    )


# --- --dataset accepts a description's path -----------------------------------------------------
def test_dataset_argument_takes_a_path_or_a_name(tmp_path):
    assert dataset_name("VOC") == "VOC" and dataset_name("some/where/Mine.json") == "Mine"
    with pytest.raises(DatasetError, match=r"unknown dataset 'PASCAL'.*known: COCO, TOY, VOC"):
        load_dataset_info("PASCAL")
    with pytest.raises(DatasetError, match="dataset description not found"):
        load_dataset_info(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            {
                "class_names": ["background", "a"],
                "class_dict": {"background": 0, "a": 2},
                "color_dict": {"background": [0, 0, 0], "a": [1, 2, 3]},
                "num_classes": 2,
            }
        )
    )
    with pytest.raises(DatasetError, match="class_dict does not map"):
        load_dataset_info(str(bad))
    bad.write_text(json.dumps({"class_names": ["background", "a"], "num_classes": 2}))
    with pytest.raises(DatasetError, match="missing 'class_dict'"):
        load_dataset_info(str(bad))
    copy = tmp_path / "voc.json"
    copy.write_text((open(os.path.join(ROOT, "data", "VOC.json")).read()))
    assert load_dataset_info(str(copy)).palette == load_dataset_info("VOC").palette


# --- the whole pipeline -----------------------------------------------------------------------
def run(module, argv):
    """A script's work on argv, under the entry convention of main(args) or the one before it
    (main(argv), or run(argv) below cli)."""
    if hasattr(module, "get_args_parser"):
        return module.main(module.get_args_parser().parse_args(argv))
    return module.run(argv) if hasattr(module, "run") else module.main(argv)


def direct_miou(pred_dir, gt_dir, ids, num_classes=3):
    confusion = np.zeros((num_classes, num_classes), np.int64)
    for image_id in ids:
        pred = np.array(Image.open(pred_dir / f"{image_id}.png")).astype(np.int64)
        gt = np.array(Image.open(gt_dir / f"{image_id}.png")).astype(np.int64)
        valid = gt != 255
        confusion += np.bincount(gt[valid] * num_classes + pred[valid], minlength=num_classes**2).reshape(
            num_classes, num_classes
        )
    tp = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - tp
    return 100.0 * np.mean(tp[union > 0] / union[union > 0])


def test_pipeline_from_the_builder_to_evaluation(tmp_path, inputs, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    built = build(tmp_path, "--masks", str(tmp_path / "masks"), "--val_fraction", "0.2")
    root, dataset, exp = str(tmp_path / "Mine"), built["description"], str(tmp_path / "exp")
    common = ["--root_dir", root, "--dataset", dataset, "--pred_dir", exp, "--gpus", "cpu", "--num_workers", "0"]
    tiny = [
        "--backbone",
        "resnet18",
        "--pretrained",
        "none",
        "--crop_size",
        "32",
        "--min_image_size",
        "32",
        "--max_image_size",
        "48",
        "--batch_size",
        "4",
        "--max_epoch",
        "2",
    ]

    trained = run(
        train_rsepm,
        common + tiny + ["--rs_start", "1", "--mix_start", "2", "--pamr_iterations", "1", "--pamr_dilations", "1"],
    )
    tag = trained["tag"]
    train_ids = SeedLayout(root, "train", DatasetInfo(dataset)).ids
    tagged = sum(1 for i in train_ids if inputs[1][i])  # untagged images are skipped by the training
    assert "@Mine@" in tag and trained["iterations"] == 2 * (tagged // 4)  # train_aug = train, batch 4

    for domain in ("train_aug", "validation"):
        run(infer_rsepm, common + ["--domain", domain, "--tag", tag, "--backbone", "resnet18", "--scales", "1.0"])
        run(convert_seed_to_pseudo_masks, common + ["--domain", domain, "--tag", tag])
    masks = tmp_path / "exp" / "pseudo-labels" / tag
    assert len(os.listdir(masks / "train")) == 8 and len(os.listdir(masks / "validation")) == 2

    val_ids = SeedLayout(root, "validation", DatasetInfo(dataset)).ids
    result = run(evaluate, common + ["--domain", "validation", "--tag", tag, "--folder", "pseudo-labels"])
    assert result["num_images"] == 2
    assert result["mIoU"] == pytest.approx(
        direct_miou(masks / "validation", tmp_path / "Mine" / "validation" / "mask", val_ids), abs=1e-6
    )

    seg = run(train_seg, common + tiny + ["--label_tag", tag, "--max_epoch", "1"])
    assert "@Mine@" in seg["tag"]
    run(
        infer_seg, common + ["--domain", "validation", "--tag", seg["tag"], "--backbone", "resnet18", "--scales", "1.0"]
    )
    scored = run(evaluate, common + ["--domain", "validation", "--tag", seg["tag"], "--folder", "predictions"])
    assert scored["num_images"] == 2 and 0.0 <= scored["mIoU"] <= 100.0
