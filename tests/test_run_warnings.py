"""A run that says when it has collapsed (train_rsepm.py collapse_check, TrainingRun.warn) and a
validation before --rs_start that is not taken for the run's best: the checks on hand-made epoch
means, then a tiny from-scratch run whose certain filter keeps no foreground."""

import json
import os

import pytest
import torch
from helpers import run_main
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import train_rsepm
from core.rsepm import RSEPMConfig
from core.targets import IGNORE_INDEX
from tools.engine.resume_state import config_path
from tools.paths import model_dir

HEALTHY = {"cls": 0.3, "seg": 0.4, "no_fg": 0.1, "pasted_pixels": 900.0}


@pytest.mark.parametrize(
    "change, expected",
    [
        ({}, []),
        ({"no_fg": 0.75}, ["no certain foreground on 75% of the images"]),
        ({"no_fg": 0.5}, []),  # half is not most
        ({"seg": 0.0}, ["segmentation loss was exactly 0"]),
        ({"pasted_pixels": 0.0}, ["pasted nothing"]),
        ({"no_fg": 1.0, "seg": 0.0, "pasted_pixels": 0.0}, ["no certain foreground", "exactly 0", "pasted nothing"]),
    ],
)
def test_collapse_check_on_epoch_means(change, expected):
    check = train_rsepm.collapse_check(RSEPMConfig())  # RecurSeed from epoch 5, the mix from 15 by default
    lines = check(20, {**HEALTHY, **change})
    assert len(lines) == len(expected) and all(e in line for e, line in zip(expected, lines))
    assert check(3, {"cls": 0.3}) == []  # before --rs_start the step has no target to check
    # before --mix_start nothing is pasted, and that is no collapse
    assert check(10, {**HEALTHY, "pasted_pixels": 0.0}) == []
    assert train_rsepm.collapse_check(RSEPMConfig(mix="none"))(20, {**HEALTHY, "pasted_pixels": 0.0}) == []


@pytest.fixture(scope="module")
def toy(toy_dataset):
    return toy_dataset(num_validation=3)


def test_a_collapsed_run_warns_and_an_untrained_decoder_is_not_the_best(toy, tmp_path, monkeypatch):
    """The collapse the issue saw (from scratch on 24 photos): targets with no certain pixel, so the
    segmentation loss is exactly 0, and a decoder whose labels hold no foreground, so the mix pastes
    nothing. Made here by the two label functions of the step returning that state."""
    import core.rsepm

    def all_ignored(probs, tags, *args, **kwargs):
        return torch.full((probs.shape[0], *probs.shape[-2:]), IGNORE_INDEX, dtype=torch.long, device=probs.device)

    def all_background(probs, *args, **kwargs):
        return torch.zeros((probs.shape[0], *probs.shape[-2:]), dtype=torch.long, device=probs.device)

    monkeypatch.setattr(core.rsepm, "certain_filter", all_ignored)
    monkeypatch.setattr(core.rsepm, "edge_predict", all_background)
    pred = tmp_path / "exp"
    run_main(
        train_rsepm,
        [
            "--root_dir",
            toy,
            "--dataset",
            "TOY",
            "--domain",
            "train_aug",
            "--gpus",
            "cpu",
            "--backbone",
            "resnet18",
            "--pretrained",
            "none",
            "--crop_size",
            "32",
            "--min_image_size",
            "32",
            "--max_image_size",
            "64",
            "--batch_size",
            "4",
            "--num_workers",
            "0",
            "--max_epoch",
            "3",
            "--rs_start",
            "2",
            "--mix_start",
            "3",
            "--pamr_iterations",
            "2",
            "--pamr_dilations",
            "1,2",
            "--val_every",
            "1",
            "--val_images",
            "3",
            "--vis_images",
            "0",
            "--log_interval",
            "1",
            "--pred_dir",
            str(pred),
            "--tag",
            "c",
        ],
    )
    folder = model_dir(str(pred), "c")
    with open(os.path.join(folder, "logs", "log.txt")) as f:
        log = f.read()
    for epoch in (2, 3):
        assert f"warning: epoch {epoch}: the RecurSeed target kept no certain foreground on 100% of the images" in log
        assert f"warning: epoch {epoch}: the segmentation loss was exactly 0 all epoch" in log
    assert "warning: epoch 3: EdgePredictMix pasted nothing all epoch" in log
    assert "warning: epoch 2: EdgePredictMix" not in log and "warning: epoch 1:" not in log  # not started yet
    assert "from an untrained decoder (RecurSeed starts at epoch 2)" in log
    with open(config_path(str(pred), "c")) as f:
        config = json.load(f)
    assert len(config["warnings"]) == 5
    records = [json.loads(line) for line in open(os.path.join(folder, "logs", "log.jsonl"))]
    assert [r["pasted_pixels"] for r in records if "pasted_pixels" in r] == [0.0, 0.0]  # epoch 3's 2 iterations
    before = [r for r in records if "val_seed_mIoU_untrained_decoder" in r]
    after = [r for r in records if "val_seed_mIoU" in r]
    assert [r["epoch"] for r in before] == [1] and [r["epoch"] for r in after] == [2, 3]
    best = max(after, key=lambda r: r["val_seed_mIoU"])
    assert config["best"]["val_seed_mIoU"] == {
        "value": pytest.approx(best["val_seed_mIoU"]),
        "epoch": best["epoch"],
        "threshold": pytest.approx(best["val_seed_threshold"]),
    }
    acc = EventAccumulator(os.path.join(folder, "logs"), size_guidance={"tensors": 0}).Reload()
    texts = [t.tensor_proto.string_val[0].decode() for t in acc.Tensors("warnings/run/text_summary")]
    assert texts == config["warnings"]
    assert "train/pasted_pixels" in acc.Tags()["scalars"]
