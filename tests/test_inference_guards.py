"""infer_rsepm.py when inputs or outputs go wrong: per-image problems are counted skips (an image
too small for a scale, too many pixels in its header, a decompression bomb, more memory than
--max_memory_gib), a write that fails is one line naming the path and the cause, and the settings
record of its output folder (and of the conversion's after it) refuses other settings unless
--overwrite.

Every test here failed on the code before these checks (see each docstring for how). They use a
tiny dataset of three 40x48 images and a random ResNet-18 RS+EPM.
"""

import errno
import json
import os

import numpy as np
import pytest
import torch
from helpers import run_main
from PIL import Image

import convert_seed_to_pseudo_masks as convert
import infer_rsepm
from core.errors import ProjectError
from core.io import settings_path
from core.networks import RSEPM
from core.weights import save_weights
from tools.args import cli

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
    argv = [
        "--root_dir",
        str(data / "data"),
        "--dataset",
        "TOY",
        "--domain",
        "validation",
        "--tag",
        TAG,
        "--pred_dir",
        str(data / "exp"),
        "--backbone",
        "resnet18",
        "--num_workers",
        "0",
        "--weights",
        str(weights),
        "--conf_th",
        "0.5",
        "--scales",
        "1.0,0.5",
        *extra,
    ]
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
# Per-image problems are counted skips; size guards before the memory is spent
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


# ---------------------------------------------------------------------------------------------
# Full disk, read-only folder, permission: one line naming the path and the cause
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
# The settings of an output folder
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
    argv = [
        "--root_dir",
        str(data / "data"),
        "--dataset",
        "TOY",
        "--domain",
        "validation",
        "--tag",
        TAG,
        "--pred_dir",
        str(data / "exp"),
        "--num_workers",
        "0",
    ]
    assert run_main(convert, argv)["written"] == 3
    assert run_main(convert, argv)["skipped_existing"] == 3
    err = failure(capsys, lambda: run_main(convert, argv + ["--bg_gamma", "3"]))
    assert "bg_gamma: 2.0 -> 3.0" in err
    assert run_main(convert, argv + ["--bg_gamma", "3", "--overwrite", "true"])["written"] == 3
    # new seeds (other inference settings) make the masks stale as well
    infer(data, weights, "--scales", "1.0", "--overwrite", "true")
    err = failure(capsys, lambda: run_main(convert, argv + ["--bg_gamma", "3"]))
    assert "seed_settings.scales" in err
