"""tools/toy/pretrain_toy.py (the toy stand-in for ImageNet weights) and the --seeds summary of
tools/toy/toy_pipeline.py."""

import json
import math

import pytest
import torch
import torchvision

from core.resnet import build_resnet
from tools.toy import pretrain_toy, toy_pipeline
from tools.toy.toy_pipeline import seeds_summary


@pytest.fixture(scope="module")
def tiny_set(toy_dataset):
    return toy_dataset(seed=7, num_train=0, num_validation=4, num_test=0, max_size=56)


def run_pretrain(root, out):
    pretrain_toy.main(
        pretrain_toy.get_args_parser().parse_args(
            [
                "--root_dir",
                str(root),
                "--out",
                str(out),
                "--max_epoch",
                "1",
                "--batch_size",
                "4",
                "--crop_size",
                "48",
                "--min_image_size",
                "48",
                "--max_image_size",
                "56",
                "--num_workers",
                "0",
                "--seed",
                "3",
            ]
        )
    )
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
        return {
            "seed": seed,
            "threads": 2,
            "stages": [{"stage": f"row{i}", "num_images": 40, "mIoU": v} for i, v in enumerate(values)],
        }

    result, table = seeds_summary([summary(0, [70.0, 50.0]), summary(1, [72.0, 50.0]), summary(2, [77.0, 50.0])])
    first, second = result["stages"]
    # Hand-worked: mean 73, deviations -3, -1, 4 -> sample variance (9 + 1 + 16) / 2 = 13.
    assert first["mean"] == pytest.approx(73.0)
    assert first["std"] == pytest.approx(math.sqrt(13.0))
    assert (first["min"], first["max"]) == (70.0, 77.0)
    assert second["std"] == 0.0
    assert result["seeds"] == [0, 1, 2]
    assert "73.00 +- 3.61" in table[2] and "70.00-77.00" in table[2]


def test_record_beside_the_weights_scores_the_held_out_split(tiny_set, tmp_path):
    run_pretrain(tiny_set, tmp_path / "w.pth")
    record = json.loads((tmp_path / "w.json").read_text())
    assert record["settings"]["max_epoch"] == 1 and record["settings"]["seed"] == 3
    assert len(record["loss_per_epoch"]) == 1
    validation = record["validation"]
    assert validation["domain"] == "validation" and validation["num_images"] == 4
    # The mAP is the mean of the classes' AP that are defined (a class absent from the 4 images has none).
    defined = [v for v in validation["AP"].values() if not math.isnan(v)]
    assert defined and validation["mAP"] == pytest.approx(sum(defined) / len(defined))
    assert all(0.0 <= v <= 100.0 for v in defined)


def test_scores_are_the_classifiers_sigmoid_at_full_size(tiny_set):
    from core.dataset_layout import SeedLayout, load_dataset_info

    torch.manual_seed(0)
    model = pretrain_toy.Classifier("resnet18", 5)
    layout = SeedLayout(str(tiny_set), "validation", load_dataset_info("TOY"))
    scores, labels = pretrain_toy.tag_scores(model, layout)
    assert scores.shape == labels.shape == (4, 5)
    # Independent: backbone, global mean, linear layer, sigmoid written out for one image.
    from core.dataset_layout import normalize_image

    image = normalize_image(layout.read_image(layout.ids[2]))[None]
    with torch.no_grad():
        features = model.backbone(image)[-1].mean(dim=(2, 3))
        expected = torch.sigmoid(features @ model.fc.weight.T + model.fc.bias)[0]
    assert torch.allclose(torch.from_numpy(scores[2]), expected, atol=1e-5)
    assert labels[2].tolist() == layout.multi_hot(layout.read_tags(layout.ids[2])).tolist()


def test_pipeline_remakes_a_backbone_cached_with_other_settings(tmp_path, monkeypatch):
    weights = tmp_path / "pretrained" / "resnet18_toy.pth"
    monkeypatch.setattr(toy_pipeline, "PRETRAINED", str(weights))
    workers = ["--num_workers", "2"]
    assert toy_pipeline.cached_pretraining_problem(workers) == "not made yet"
    weights.parent.mkdir()
    weights.write_bytes(b"weights")
    assert "no usable record" in toy_pipeline.cached_pretraining_problem(workers)  # an older release's file
    settings = pretrain_toy.record_settings(
        pretrain_toy.get_args_parser().parse_args(toy_pipeline.pretrain_command(["--num_workers", "0"])[1:])
    )
    code = pretrain_toy.source_digests()
    assert {
        "tools/toy/pretrain_toy.py",
        "core/resnet.py",
        "core/transforms.py",
        "tools/builders/make_toy_dataset.py",
    } <= set(code)
    record = tmp_path / "pretrained" / "resnet18_toy.json"
    record.write_text(json.dumps({"settings": settings}))  # the release before: no code record
    assert "no usable record" in toy_pipeline.cached_pretraining_problem(workers)
    record.write_text(json.dumps({"settings": settings, "code": code}))
    assert toy_pipeline.cached_pretraining_problem(workers) is None  # the worker count does not matter
    old = {("epochs" if k == "max_epoch" else k): v for k, v in settings.items()}  # the release before's name
    record.write_text(json.dumps({"settings": old, "code": code}))
    assert toy_pipeline.cached_pretraining_problem(workers) is None
    # the same settings run by other code (an augmentation that changed): made again
    changed = dict(code, **{"core/transforms.py": "0" * 64})
    record.write_text(json.dumps({"settings": settings, "code": changed}))
    assert toy_pipeline.cached_pretraining_problem(workers) == "made by other code (core/transforms.py)"
    settings["max_epoch"] = 6
    record.write_text(json.dumps({"settings": settings, "code": code}))
    assert toy_pipeline.cached_pretraining_problem(workers) == "made with other settings (max_epoch)"
