"""tools/pretrain_toy.py (the toy stand-in for ImageNet weights) and the --seeds summary of
tools/toy_pipeline.py."""
import math

import pytest
import torch
import torchvision

from core.resnet import build_resnet
from tools import pretrain_toy
from tools.make_toy_dataset import make_toy_dataset
from tools.toy_pipeline import seeds_summary


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain") / "TOY"
    make_toy_dataset(str(root), seed=7, num_train=0, num_train_aug=8, num_validation=0, num_test=0,
                     min_size=48, max_size=56)
    return root


def run_pretrain(root, out):
    pretrain_toy.main(["--root_dir", str(root), "--out", str(out), "--epochs", "1", "--batch_size", "4",
                       "--crop_size", "48", "--min_image_size", "48", "--max_image_size", "56",
                       "--num_workers", "0", "--seed", "3"])
    return torch.load(out, map_location="cpu", weights_only=True)


def test_pretrained_file_is_torchvision_layout_loads_and_is_deterministic(tiny_set, tmp_path):
    state = run_pretrain(tiny_set, tmp_path / "a.pth")
    expected = {k for k in torchvision.models.resnet18().state_dict() if not k.startswith("fc.")}
    assert set(state) == expected
    # Trained: the weights moved away from a fresh initialisation of the same seed.
    torch.manual_seed(3)
    fresh = build_resnet("resnet18").state_dict()
    assert not torch.equal(fresh["conv1.weight"], state["conv1.weight"])
    # The training scripts' --pretrained PATH path loads it unchanged.
    loaded = build_resnet("resnet18", pretrained=str(tmp_path / "a.pth")).state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    # Same command, same seed, same thread count: bit-identical weights.
    again = run_pretrain(tiny_set, tmp_path / "b.pth")
    assert all(torch.equal(again[k], state[k]) for k in state)


def test_seeds_summary_mean_std_min_max():
    def summary(seed, values):
        return {"seed": seed, "threads": 2,
                "stages": [{"stage": f"row{i}", "num_images": 40, "mIoU": v} for i, v in enumerate(values)]}

    result, table = seeds_summary([summary(0, [70.0, 50.0]), summary(1, [72.0, 50.0]), summary(2, [77.0, 50.0])])
    first, second = result["stages"]
    # Hand-worked: mean 73, deviations -3, -1, 4 -> sample variance (9 + 1 + 16) / 2 = 13.
    assert first["mean"] == pytest.approx(73.0)
    assert first["std"] == pytest.approx(math.sqrt(13.0))
    assert (first["min"], first["max"]) == (70.0, 77.0)
    assert second["std"] == 0.0
    assert result["seeds"] == [0, 1, 2]
    assert "73.00 +- 3.61" in table[2] and "70.00-77.00" in table[2]
