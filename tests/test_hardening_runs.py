"""Long runs keep going past one bad file, size guards, one-line I/O errors, clear messages and
settings records of output folders (issue 14, items 4, 6, 8 and 10).

Every test here failed on the code before these changes (see each docstring for how).
The inference tests use a tiny dataset of 40x48 images and a random ResNet-18 RS+EPM.
"""
import argparse
import errno
import json
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

import convert_seed_to_pseudo_masks as convert
import infer_rsepm
from core.weights import describe_mismatch, save_weights
from core.dataset_layout import DatasetInfo, parse_xml_tags
from core.errors import DatasetError, FormatError, ProjectError
from core.io import load_seed, settings_path
from core.networks import RSEPM
from tools import metrics
from tools.args import cli, int_list
from tools.builders.build_steps import PrepareError, read_id_list
from tools.builders.prepare_voc import build_split
from helpers import run_main

TAG = "R18@TOY@runs"
IDS = ["a", "b", "c"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("w") / "last.pth"
    save_weights(RSEPM(backbone="resnet18", num_classes=6, output_stride=16), path)
    return path


@pytest.fixture()
def data(tmp_path):
    """TOY-layout split with three 40x48 RGB images, no xml (so --conf_th picks the classes)."""
    folder = tmp_path / "data" / "validation" / "image"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for image_id in IDS:
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / f"{image_id}.jpg")
    return tmp_path


def infer(data, weights, *extra, through_cli=False):
    argv = ["--root_dir", str(data / "data"), "--dataset", "TOY", "--domain", "validation", "--tag", TAG,
            "--pred_dir", str(data / "exp"), "--backbone", "resnet18", "--num_workers", "0",
            "--weights", str(weights), "--conf_th", "0.5", "--scales", "1.0,0.5", *extra]
    if through_cli:  # what a user sees: cli turns a failed write into one line
        return cli(infer_rsepm.main, infer_rsepm.get_args_parser(), argv)
    return run_main(infer_rsepm, argv)


def seeds(data):
    folder = data / "exp" / "predictions" / TAG / "validation"
    return sorted(os.listdir(folder)) if folder.is_dir() else []


def failure(capsys, call):
    """Run `call`, expect a ProjectError or a result listing skipped items (cli: exit 1); return
    stderr + the error's message."""
    try:
        result = call()
    except ProjectError as e:
        return capsys.readouterr().err + str(e)
    except SystemExit as e:
        assert e.code not in (0, None)
        return capsys.readouterr().err + str(e.code)
    assert result["failed"], result
    return capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Item 4: per-image problems are counted skips; size guards before the memory is spent
# ---------------------------------------------------------------------------------------------
def test_image_too_small_for_a_scale_is_skipped_and_listed(data, weights, capsys):
    """Before: a 1-pixel-high image at scale 0.5 stopped the run with a traceback from interpolate."""
    small = data / "data" / "validation" / "image" / "b.jpg"
    Image.fromarray(np.zeros((1, 48, 3), np.uint8)).save(small)
    err = failure(capsys, lambda: infer(data, weights))
    assert "1 image(s) skipped:" in err and str(small) in err and "too small for scale 0.5" in err
    assert seeds(data) == ["a.pkl", "c.pkl"]


def test_header_pixel_limit_and_memory_estimate_skip_images(data, weights, capsys):
    """Before: neither --max_image_pixels nor --max_memory_gib existed (argparse exit 2, no seed)."""
    err = failure(capsys, lambda: infer(data, weights, "--max_image_pixels", "1000"))
    assert "3 image(s) skipped:" in err and "48x40 = 1,920 pixels" in err and seeds(data) == []
    # 40x48 at scale 1.0: 1920 * 1024 bytes + 3 * 4 * 6 * 1920 = 2,104,320 bytes ~ 0.002 GiB
    err = failure(capsys, lambda: infer(data, weights, "--max_memory_gib", "0.001"))
    assert "about 0.0 GiB at scale 1" in err and "--max_memory_gib 0.001" in err
    assert infer(data, weights, "--max_memory_gib", "0.003")["written"] == 3


def test_decompression_bomb_is_a_counted_skip(data, weights, capsys, monkeypatch):
    """Before: PIL's DecompressionBombError (not an OSError) stopped inference with a traceback."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 40x48 > 2 * 100: PIL raises at open
    err = failure(capsys, lambda: infer(data, weights))
    assert "3 image(s) skipped:" in err and "too large to decode safely" in err


def test_xml_with_inf_or_overflowing_number_names_the_file(tmp_path):
    """Before: int(float('inf')) raised OverflowError, a traceback naming no file."""
    info = DatasetInfo("TOY")
    for text in ("inf", "1e400", "nan"):
        path = tmp_path / f"{text}.xml"
        path.write_text(f"<annotation><size><width>{text}</width><height>10</height></size>"
                        "<object><name>disc</name></object></annotation>")
        with pytest.raises(DatasetError, match="not a finite pixel coordinate") as error:
            parse_xml_tags(str(path), info.class_dict)
        assert str(path) in str(error.value)


def repeated_seed(path, copies, side=64):
    """A seed pickle of one (side, side) plane referenced `copies` times: ~16 KiB on disk,
    copies * side * side * 4 bytes once np.asarray builds the (copies, side, side) array."""
    plane = np.zeros((side, side), np.float32)
    with open(path, "wb") as f:
        pickle.dump({"keys": np.arange(copies + 1), "seed": [plane] * copies, "dialect": "rsepm"}, f)


def test_small_seed_pickle_that_expands_is_refused_before_decoding(tmp_path):
    """Before: load_seed had no limit and built the whole array (here 64 MiB, in real attacks GBs)."""
    path = tmp_path / "x.pkl"
    repeated_seed(path, 4096)
    assert os.path.getsize(path) < 100_000
    with pytest.raises(FormatError, match="more than 1,000,000 bytes") as error:
        load_seed(str(path), max_bytes=1_000_000)
    assert str(path) in str(error.value)
    repeated_seed(path, 8)  # 8 * 64 * 64 * 4 = 131,072 bytes: within the limit, read as before
    assert load_seed(str(path), max_bytes=1_000_000)["seed"].shape == (8, 64, 64)
    with pytest.raises(FormatError, match="exceeds the limit"):  # the file itself is too large
        load_seed(str(path), max_bytes=1_000)


def test_th_interval_gives_at_most_1000_thresholds():
    """Before: --th_interval 1e-7 built 7 million thresholds (and matrices) without a word."""
    with pytest.raises(ValueError, match="7,000,001 thresholds .* more than 1,000"):
        metrics.sweep_thresholds(0.1, 0.8, 1e-7)
    assert len(metrics.sweep_thresholds(0.0, 0.999, 0.001)) == 1000


def test_int_list_refuses_an_empty_list():
    """Before: `--pamr_dilations ,` parsed as an empty tuple."""
    with pytest.raises(argparse.ArgumentTypeError, match="at least one integer"):
        int_list(",")
    assert int_list("1,2, 4") == (1, 2, 4)


# ---------------------------------------------------------------------------------------------
# Builders: list files, COCO numbers, counted skips
# ---------------------------------------------------------------------------------------------
def test_list_file_bom_non_utf8_and_invisible_characters(tmp_path):
    """Before: the BOM stayed in the first id, a non-UTF-8 byte raised UnicodeDecodeError."""
    path = tmp_path / "train.txt"
    path.write_bytes("\ufeff2007_000032\n2007_000039\n".encode("utf-8"))
    assert read_id_list(str(path), "train") == ["2007_000032", "2007_000039"]
    path.write_bytes(b"2007_000032\n2007_0\xff0039\n")
    with pytest.raises(PrepareError, match="line 2: not UTF-8 text .*0xff") as error:
        read_id_list(str(path), "train")
    assert str(path) in str(error.value)
    path.write_text("2007_000032\n2007\u200b_000039\n", encoding="utf-8")
    with pytest.raises(PrepareError, match="line 2: invisible character U\\+200B"):
        read_id_list(str(path), "train")


def coco_json(tmp_path, width=48, height=40, bbox=(1.0, 2.0, 10.0, 5.0)):
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(images / "x.jpg")
    data = {"images": [{"id": 1, "file_name": "x.jpg", "width": width, "height": height}],
            "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": list(bbox),
                             "segmentation": [[1, 2, 11, 2, 11, 7]]}]}
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))  # json.dumps writes NaN as NaN, which json.load reads back
    return str(path), str(images)


@pytest.mark.parametrize("field, value, message", [("bbox", (1.0, float("nan"), 3.0, 4.0), "bbox"),
                                                   ("height", "abc", "height 'abc'"),
                                                   ("width", float("inf"), "width inf")])
def test_coco_nan_box_or_non_numeric_size_names_the_file(tmp_path, field, value, message):
    """Before: ValueError/OverflowError tracebacks from int() or from the box rounding."""
    from tools.builders.prepare_coco import load_split
    path, images = coco_json(tmp_path, **{field: value})
    with pytest.raises(PrepareError, match=message) as error:
        load_split(path, images, {1: 1}, "keep")
    assert path in str(error.value) and "image id 1" in str(error.value)
    good, _ = coco_json(tmp_path)
    assert load_split(good, images, {1: 1}, "keep")[0][0]["height"] == 40


def test_builder_skips_bad_items_lists_them_and_writes_the_others(tmp_path):
    """Before: the first bad image stopped the build; the later good images were never written."""
    src = tmp_path / "src"
    src.mkdir()
    items = []
    for image_id in ("i1", "i2", "i3", "i4"):
        path = src / f"{image_id}.jpg"
        if image_id in ("i1", "i3"):
            Image.fromarray(np.full((8, 8), 300, np.uint16)).save(path, format="PNG")  # 16-bit
        else:
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
        items.append({"id": image_id, "image": str(path), "xml": None, "mask": None})
    with pytest.raises(PrepareError, match="2 of 4 item\\(s\\) skipped") as error:
        build_split(str(tmp_path / "out"), "test", items, "copy", DatasetInfo("VOC"), 0)
    assert "i1.jpg" in str(error.value) and "i3.jpg" in str(error.value)
    assert sorted(os.listdir(tmp_path / "out" / "test" / "image")) == ["i2.jpg", "i4.jpg"]


# ---------------------------------------------------------------------------------------------
# Item 6: full disk, read-only folder, permission: one line naming the path and the cause
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("code, words", [(errno.ENOSPC, "disk full"), (errno.EROFS, "read-only file system")])
def test_write_errors_name_path_and_cause(data, weights, capsys, monkeypatch, code, words):
    """Before: 'cannot write ([Errno 28] No space left on device)', no plain cause."""
    real = os.replace

    def failing(src, dst):
        if str(dst).endswith(".pkl"):
            raise OSError(code, os.strerror(code))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    err = failure(capsys, lambda: infer(data, weights))
    assert f"a.pkl: cannot write ({words}" in err and "Traceback" not in err
    assert seeds(data) == []  # nothing half-written, no temporary left


def test_unwritable_output_folder_is_one_line(data, weights, capsys, monkeypatch):
    """Before: os.makedirs' PermissionError ended inference with a traceback."""
    real = os.makedirs

    def failing(path, *args, **kwargs):
        if "predictions" in str(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "makedirs", failing)
    err = failure(capsys, lambda: infer(data, weights, through_cli=True))
    assert "error: " in err and "predictions" in err and "permission denied" in err


# ---------------------------------------------------------------------------------------------
# Item 8: a checkpoint of another backbone
# ---------------------------------------------------------------------------------------------
def resnet_keys(blocks):
    return {f"model.layer{i + 1}.{b}.conv3.weight": torch.zeros(1) for i, n in enumerate(blocks) for b in range(n)}


def test_mismatch_summary_names_both_backbones_and_few_keys():
    """Before: the counts came with ten keys of each kind and no hint at the backbone."""
    message = describe_mismatch(resnet_keys((3, 4, 6, 3)), resnet_keys((3, 4, 23, 3)))
    assert message.startswith("17 unexpected key(s) (is it a ResNet-101 checkpoint for a ResNet-50 model?")
    assert "model.layer3.8." in message and "model.layer3.9." not in message and "(14 more)" in message


# ---------------------------------------------------------------------------------------------
# Item 10: the settings of an output folder
# ---------------------------------------------------------------------------------------------
def test_inference_refuses_other_settings_unless_overwrite(data, weights, capsys):
    """Before: a second run with other scales kept the old seeds and exited 0."""
    assert infer(data, weights)["written"] == 3
    record = json.loads(open(settings_path(str(data / "exp" / "predictions" / TAG / "validation"))).read())
    assert record["scales"] == [1.0, 0.5] and len(record["weights"]["sha256"]) == 64
    assert infer(data, weights)["skipped_existing"] == 3  # same settings: resume as before
    err = failure(capsys, lambda: infer(data, weights, "--scales", "1.0"))
    assert "scales: [1.0, 0.5] -> [1.0]" in err and "--overwrite true" in err
    before = open(data / "exp" / "predictions" / TAG / "validation" / "a.pkl", "rb").read()
    summary = infer(data, weights, "--scales", "1.0", "--overwrite", "true")
    assert summary["written"] == 3 and summary["skipped_existing"] == 0
    assert open(data / "exp" / "predictions" / TAG / "validation" / "a.pkl", "rb").read() != before


def test_conversion_refuses_other_settings_unless_overwrite(data, weights, capsys):
    """Before: converting again with another --bg_gamma kept the old masks and exited 0."""
    infer(data, weights)
    argv = ["--root_dir", str(data / "data"), "--dataset", "TOY", "--domain", "validation", "--tag", TAG,
            "--pred_dir", str(data / "exp"), "--num_workers", "0"]
    assert run_main(convert, argv)["written"] == 3
    assert run_main(convert, argv)["skipped_existing"] == 3
    err = failure(capsys, lambda: run_main(convert, argv + ["--bg_gamma", "3"]))
    assert "bg_gamma: 2.0 -> 3.0" in err
    assert run_main(convert, argv + ["--bg_gamma", "3", "--overwrite", "true"])["written"] == 3
    # new seeds (other inference settings) make the masks stale as well
    infer(data, weights, "--scales", "1.0", "--overwrite", "true")
    err = failure(capsys, lambda: run_main(convert, argv + ["--bg_gamma", "3"]))
    assert "seed_settings.scales" in err


# ---------------------------------------------------------------------------------------------
# Evaluation: every bad prediction is skipped and listed, and recorded in the result
# ---------------------------------------------------------------------------------------------
def test_evaluation_lists_every_bad_prediction_and_writes_no_partial_result(tmp_path, capsys):
    """Before: the first bad file stopped the evaluation; the others stayed unknown."""
    from test_evaluate import INFO, SHAPE, TAG as EVAL_TAG, make_split, run, write_masks
    from core.io import save_mask
    from tools.paths import evaluation_path, output_dir

    rng = np.random.default_rng(0)
    root = str(tmp_path / "TOY")
    data = {"root": root, "pred_dir": str(tmp_path / "experiments") + "/", "rng": rng,
            "split": make_split(root, "validation", rng)}
    write_masks(data["pred_dir"], "validation", data["split"], data["rng"])
    folder = output_dir(data["pred_dir"], "pseudo-labels", EVAL_TAG, "validation")
    bad = sorted(os.listdir(folder))[:2]
    for name in bad:
        save_mask(os.path.join(folder, name), np.zeros((SHAPE[0], SHAPE[1] + 1), np.uint8), INFO.palette)
    result = run(data)
    assert sorted(f["id"] + ".png" for f in result["failed"]) == bad
    assert result["num_images"] == len(os.listdir(folder)) - 2
    out, err = capsys.readouterr()
    assert "2 image(s) skipped:" in err and all(name[:-4] in err for name in bad)
    # no result file: a score over the other images would pass for the whole split's
    assert not os.path.exists(evaluation_path(data["pred_dir"], "pseudo-labels", EVAL_TAG, "validation"))
    assert "no result file is written" in out + err


def test_mask_decompression_bomb_names_the_file(tmp_path, monkeypatch):
    """Before: PIL's DecompressionBombError escaped read_mask (evaluation, builders) as a traceback."""
    from core.io import read_mask, save_mask
    path = str(tmp_path / "m.png")
    save_mask(path, np.zeros((40, 48), np.uint8), DatasetInfo("TOY").palette)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(FormatError, match="too large to decode safely") as error:
        read_mask(path)
    assert path in str(error.value)
