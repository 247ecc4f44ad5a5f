"""Checkpoint reader/writer: round trip, accepted layouts, and error messages naming keys; no
torch.load in the repository unpickles more than tensors."""

import os

import pytest
import torch
from torch import nn

from core.errors import CheckpointError
from core.weights import describe_mismatch, load_checkpoint, read_state_dict, save_weights, unwrap


class Tiny(nn.Module):
    def __init__(self, classes=3):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Conv2d(4, classes, 1)


def randomised(model):
    """Fill every parameter and buffer with random numbers so equality means something."""
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.dtype.is_floating_point:
                t.copy_(torch.randn_like(t))
            else:
                t.fill_(7)
    return model


def assert_same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_round_trip_is_a_plain_flat_state_dict(tmp_path):
    source = randomised(Tiny())
    path = tmp_path / "w.pth"
    save_weights(nn.DataParallel(source), path)
    raw = torch.load(path, weights_only=True)
    assert list(raw) == list(source.state_dict())  # no module. prefix, no wrapper
    assert [p.name for p in tmp_path.iterdir()] == ["w.pth"]  # no temporary file left
    target = Tiny()
    assert load_checkpoint(target, path) is target
    assert_same(source, target)


def test_loads_into_a_dataparallel_target(tmp_path):
    source = randomised(Tiny())
    save_weights(source, tmp_path / "w.pth")
    target = nn.DataParallel(Tiny())
    load_checkpoint(target, tmp_path / "w.pth")
    assert_same(source, unwrap(target))


@pytest.mark.parametrize("layout", ["module", "model", "state_dict", "model+module"])
def test_accepted_layouts(tmp_path, layout):
    source = randomised(Tiny())
    state = source.state_dict()
    if "module" in layout:
        state = {"module." + k: v for k, v in state.items()}
    if layout.startswith("model"):
        state = {"model": state, "epoch": 3}
    elif layout == "state_dict":
        state = {"state_dict": state, "optimizer": {"lr": 0.1}}
    torch.save(state, tmp_path / "w.pth")
    target = Tiny()
    load_checkpoint(target, tmp_path / "w.pth")
    assert_same(source, target)


def test_mismatch_names_missing_unexpected_and_misshaped_keys(tmp_path):
    state = Tiny(classes=5).state_dict()
    del state["bn.running_var"]
    state["extra.weight"] = torch.zeros(2)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(Tiny(classes=3), path)
    message = str(info.value)
    assert str(path) in message
    assert "1 missing" in message and "bn.running_var" in message
    assert "1 unexpected" in message and "extra.weight" in message
    assert "2 mis-shaped" in message
    assert "head.weight (file (5, 4, 1, 1), model (3, 4, 1, 1))" in message
    assert "head.bias (file (5,), model (3,))" in message


def test_long_key_lists_are_truncated(tmp_path):
    torch.save({f"k{i}": torch.zeros(1) for i in range(25)}, tmp_path / "w.pth")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(Tiny(), tmp_path / "w.pth")
    message = str(info.value)
    assert "25 unexpected" in message and "(22 more)" in message and "k2" in message
    assert "k3," not in message


def resnet_keys(blocks):
    return {f"model.layer{i + 1}.{b}.conv3.weight": torch.zeros(1) for i, n in enumerate(blocks) for b in range(n)}


def test_mismatch_summary_names_both_backbones_and_few_keys():
    """Before: the counts came with ten keys of each kind and no hint at the backbone."""
    message = describe_mismatch(resnet_keys((3, 4, 6, 3)), resnet_keys((3, 4, 23, 3)))
    assert message.startswith("17 unexpected key(s) (is it a ResNet-101 checkpoint for a ResNet-50 model?")
    assert "model.layer3.8." in message and "model.layer3.9." not in message and "(14 more)" in message


def test_non_strict_ignores_missing_but_not_misshaped(tmp_path):
    source = randomised(Tiny())
    state = source.state_dict()
    del state["head.bias"]
    torch.save(state, tmp_path / "partial.pth")
    target = Tiny()
    load_checkpoint(target, tmp_path / "partial.pth", strict=False)
    assert torch.equal(target.conv.weight, source.conv.weight)
    torch.save(Tiny(classes=5).state_dict(), tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="head.weight"):
        load_checkpoint(Tiny(), tmp_path / "other.pth", strict=False)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all\n", b"PK\x03\x04garbage"])
def test_non_checkpoint_file_is_rejected(tmp_path, content):
    path = tmp_path / "image.png"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="image.png: not a torch checkpoint"):
        load_checkpoint(Tiny(), path)


def test_checkpoint_without_tensors_is_rejected(tmp_path):
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "meta.pth")
    with pytest.raises(CheckpointError, match="meta.pth: not a state_dict"):
        read_state_dict(tmp_path / "meta.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="list.pth"):
        read_state_dict(tmp_path / "list.pth")


def test_missing_file_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="nothere.pth: checkpoint file not found"):
        load_checkpoint(Tiny(), tmp_path / "nothere.pth")


def test_unwrap_nested_wrappers():
    inner = Tiny()
    assert unwrap(nn.DataParallel(nn.DataParallel(inner))) is inner
    assert unwrap(inner) is inner


def test_no_torch_load_in_the_repository_without_weights_only():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    offenders = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("experiments", "toy_data")]
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                for number, line in enumerate(open(path, encoding="utf-8"), 1):
                    if "torch.load(" in line and "weights_only=True" not in line and "torch.load(" + '"' not in line:
                        offenders.append(f"{path}:{number}")
    assert offenders == [], offenders
