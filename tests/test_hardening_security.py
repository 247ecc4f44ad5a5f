"""Hostile files: the ImageNet cache cannot run code, ids from annotation files cannot write outside
the output folder (core/safety.py, core/resnet.py, the dataset builders)."""
import hashlib
import io
import json
import os
import pickle
import types

import numpy as np
import pytest
import torch
from PIL import Image

from core import resnet
from core.safety import UnsafePathError, check_output_id, safe_output_path
from core.errors import CheckpointError
from core.errors import PrepareError
from tools.args import cli
from tools.builders.build_steps import read_id_list
from tools.builders.prepare_coco import get_args_parser as prepare_coco_parser, main as prepare_coco_main

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


class _MakesMarker:
    """Unpickling this object calls open(marker, 'w'): a file appears if the loader runs code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def sha256_prefix(data, length=8):
    return hashlib.sha256(data).hexdigest()[:length]


def tiny_state_bytes():
    buffer = io.BytesIO()
    torch.save({"conv1.weight": torch.arange(6.0).view(1, 1, 2, 3), "bn1.bias": torch.tensor([0.5, -2.0])},
               buffer)
    return buffer.getvalue()


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch hub cache under tmp_path; returns its checkpoints folder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    return folder


def fake_weights(monkeypatch, filename):
    """Point the ImageNet weights of every backbone at `filename`; a download would fail loudly."""
    def no_download(*args, **kwargs):
        raise AssertionError("nothing may be downloaded when the file is in the cache")

    weights = types.SimpleNamespace(url=f"https://download.pytorch.org/models/{filename}",
                                    get_state_dict=no_download)
    monkeypatch.setattr(resnet, "imagenet_weights", lambda name: weights)


# --- 1. the ImageNet cache ----------------------------------------------------------------------
def test_crafted_pickle_under_the_official_name_is_refused_without_running(hub, tmp_path):
    marker = tmp_path / "code_ran"
    path = hub / "resnet18-f37072fd.pth"  # torchvision's real file name for ResNet-18
    data = pickle.dumps(_MakesMarker(str(marker)))
    path.write_bytes(data)
    assert resnet.imagenet_cache_path("resnet18") == str(path)
    with pytest.raises(CheckpointError) as info:
        resnet.build_resnet("resnet18", pretrained="imagenet")
    message = str(info.value)
    assert str(path) in message
    assert "f37072fd" in message and sha256_prefix(data) in message
    assert "Delete it" in message and "download.pytorch.org" in message
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_crafted_pickle_with_a_matching_hash_is_still_not_unpickled(hub, tmp_path, monkeypatch):
    """The hash check alone is not the guard: the file is read with weights_only=True."""
    marker = tmp_path / "code_ran"
    data = pickle.dumps(_MakesMarker(str(marker)))
    filename = f"resnet18-{sha256_prefix(data)}.pth"
    (hub / filename).write_bytes(data)
    fake_weights(monkeypatch, filename)
    with pytest.raises(CheckpointError) as info:
        resnet.imagenet_state_dict("resnet18")
    assert str(hub / filename) in str(info.value)
    assert not marker.exists()


def test_file_named_with_its_own_hash_loads(hub, monkeypatch):
    data = tiny_state_bytes()
    filename = f"resnet18-{sha256_prefix(data)}.pth"
    (hub / filename).write_bytes(data)
    fake_weights(monkeypatch, filename)
    state = resnet.imagenet_state_dict("resnet18")
    assert sorted(state) == ["bn1.bias", "conv1.weight"]
    assert state["conv1.weight"].flatten().tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert state["bn1.bias"].tolist() == [0.5, -2.0]


def test_valid_weights_with_a_wrong_hash_are_refused_with_what_to_do(hub, monkeypatch):
    data = tiny_state_bytes()
    wrong = "0" * 8 if sha256_prefix(data) != "0" * 8 else "1" * 8
    filename = f"resnet18-{wrong}.pth"
    (hub / filename).write_bytes(data)
    fake_weights(monkeypatch, filename)
    with pytest.raises(CheckpointError) as info:
        resnet.imagenet_state_dict("resnet18")
    message = str(info.value)
    assert f"sha256 starts with {sha256_prefix(data)}, expected {wrong}" in message
    assert str(hub / filename) in message and "Delete it" in message


def test_offline_without_the_file_says_where_to_put_it(hub, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    weights = types.SimpleNamespace(url="https://download.pytorch.org/models/resnet18-f37072fd.pth",
                                    get_state_dict=offline)
    monkeypatch.setattr(resnet, "imagenet_weights", lambda name: weights)
    with pytest.raises(RuntimeError) as info:
        resnet.imagenet_state_dict("resnet18")
    assert str(hub / "resnet18-f37072fd.pth") in str(info.value)


def test_no_torch_load_in_the_repository_without_weights_only():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    offenders = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("experiments", "toy_data")]
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                for number, line in enumerate(open(path, encoding="utf-8"), 1):
                    if "torch.load(" in line and "weights_only=True" not in line \
                            and "torch.load(" + '"' not in line:
                        offenders.append(f"{path}:{number}")
    assert offenders == [], offenders


# --- 2. output ids and paths ----------------------------------------------------------------------
@pytest.mark.parametrize("value", ["../../../x.jpg", "/etc/x.jpg", "a/b.jpg", "a\\b.jpg", "", "  ", ".", "..",
                                   ".hidden", "x\n.jpg", 5])
def test_bad_output_ids_are_refused_naming_the_source(value):
    with pytest.raises(UnsafePathError) as info:
        check_output_id(value, "list.txt: line 3")
    assert str(info.value).startswith("list.txt: line 3: refusing the name")


@pytest.mark.parametrize("value", ["2007_000032", "COCO_val2014_000000000042.jpg", "a..b", "x-y z"])
def test_plain_names_pass(value):
    assert check_output_id(value, "list.txt") == value


def test_safe_output_path(tmp_path):
    root = str(tmp_path / "out")
    assert safe_output_path(root, os.path.join("image", "a.jpg")) == os.path.join(root, "image", "a.jpg")
    for relative in ("../x.png", os.path.join("image", "..", "..", "x.png"), str(tmp_path / "x.png"), ".", ""):
        with pytest.raises(UnsafePathError) as info:
            safe_output_path(root, relative)
        assert "outside the output folder" in str(info.value)


def files_under(folder):
    """Every file under `folder` but the writer locks (hidden `.NAME.lock` files, not outputs)."""
    return sorted(os.path.relpath(os.path.join(d, n), folder) for d, _, names in os.walk(folder) for n in names
                  if not (n.startswith(".") and n.endswith(".lock")))


def write_jpeg(path, seed=0):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.mark.parametrize("file_name", ["../../../x.jpg", "sub/x.jpg"])
def test_coco_file_name_outside_the_output_is_refused(tmp_path, capsys, file_name):
    coco = tmp_path / "a" / "b" / "coco"
    write_jpeg(str(coco / "val2014" / "good.jpg"))
    write_jpeg(str(coco / "val2014" / file_name), seed=1)  # the file exists: only the name is wrong
    images = [{"id": 1, "file_name": "good.jpg", "width": 24, "height": 20},
              {"id": 2, "file_name": file_name, "width": 24, "height": 20}]
    annotations = [{"id": 10 + i, "image_id": i, "category_id": 1, "iscrowd": 0, "bbox": [2, 2, 5, 5],
                    "segmentation": [[2, 2, 7, 2, 7, 7, 2, 7]], "area": 25.0} for i in (1, 2)]
    json_path = coco / "annotations" / "instances_val2014.json"
    json_path.parent.mkdir(parents=True)
    json_path.write_text(json.dumps({"images": images, "annotations": annotations}))
    before = files_under(str(tmp_path))
    with pytest.raises(SystemExit) as info:
        cli(prepare_coco_main, prepare_coco_parser(), ["--coco_root", str(coco), "--splits", "validation",
                                                       "--out", str(tmp_path / "out"), "--num_workers", "0"])
    message = str(info.value.code)
    assert info.value.code not in (0, None)
    assert str(json_path) in message and repr(file_name) in message
    assert files_under(str(tmp_path)) == before  # nothing written anywhere, inside --out or outside


def test_voc_list_with_a_dot_dot_id_is_refused(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("2007_000032\n..\n")
    with pytest.raises(PrepareError) as info:
        read_id_list(str(path), "VOC train")
    assert str(path) in str(info.value) and "'..'" in str(info.value)
    path.write_text("2007_000032\n/JPEGImages/2007_000033.jpg x.png\n")
    assert read_id_list(str(path), "VOC train") == ["2007_000032", "2007_000033"]
