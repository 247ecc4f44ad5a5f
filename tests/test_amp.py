"""Every autocast path on the CPU: training (train_rsepm.py, train_seg.py) and inference
(infer_rsepm.py, infer_seg.py) with --amp bf16, against the same runs in float32."""

import json
import os

import numpy as np
import pytest
import torch
from helpers import read_run_log, run_main

import infer_rsepm
import infer_seg
import train_rsepm
import train_seg
from core.io import load_seed
from core.networks import RSEPM, build_network
from core.weights import save_weights
from tools.paths import predictions_dir
from tools.seeds.infer_loop import AutocastForward, with_amp

NUM_CLASSES = 6  # TOY: background + 5 shapes
# bf16 keeps 8 bits of mantissa (relative step 2^-8 = 0.4%): a first-iteration loss may move by a
# few of those steps through the network, a seed probability (in [0, 1]) by a few hundredths.
LOSS_RTOL = 0.05
# RecurSeed's targets are thresholded (SCG, certain filter), so a CAM value near a threshold flips
# pixels between certain and ignored; on these untrained, near-flat CAMs that moves the target
# losses further than the network's own bf16 error.
TARGET_LOSS_RTOL = 0.3
SEED_ATOL = 0.05


@pytest.fixture(scope="module")
def toy(toy_dataset):
    return toy_dataset(num_train=2, num_train_aug=4, num_validation=2, num_test=0)


def test_with_amp_wraps_only_when_asked_and_refuses_fp16_on_cpu():
    net = torch.nn.Conv2d(3, 2, 3)
    assert with_amp(net, torch.device("cpu"), "off") is net
    wrapped = with_amp(net, torch.device("cpu"), "bf16")
    x = torch.randn(1, 3, 8, 8)
    out = wrapped(x)
    # the forward ran in bf16 (it differs from float32) but hands float32 on
    assert isinstance(wrapped, AutocastForward) and out.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = net(x).float()
    assert torch.equal(out, expected) and not torch.equal(out, net(x))
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        with_amp(net, torch.device("cpu"), "fp16")


def test_dict_outputs_come_back_as_float32():
    net = RSEPM("resnet18", NUM_CLASSES).eval()
    with torch.no_grad():
        out = AutocastForward(net, "cpu", torch.bfloat16)(torch.randn(2, 3, 32, 32))
    assert {k: v.dtype for k, v in out.items()} == {k: torch.float32 for k in ("logits", "cam", "seg")}


def common_train(root, pred_dir, amp, tag):
    return [
        "--root_dir",
        root,
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
        "48",
        "--batch_size",
        "4",
        "--num_workers",
        "0",
        "--max_epoch",
        "1",
        "--log_interval",
        "1",
        "--pred_dir",
        str(pred_dir),
        "--tag",
        tag,
        "--amp",
        amp,
    ]


@pytest.mark.parametrize("script", ["rsepm", "deeplabv3+"])
def test_training_in_bf16_on_cpu_is_finite_and_close_to_float32(toy, tmp_path, script):
    """One iteration of 4 images (RS and EPM active for train_rsepm): the losses come from
    identical weights and data, so bf16 must be near float32 but not equal. (bf16 on a CPU without
    bf16 instructions is slow, hence one iteration.)"""
    records = {}
    for amp in ("off", "bf16"):
        argv = common_train(toy, tmp_path, amp, f"{script}-{amp}")
        if script == "rsepm":
            result = train_rsepm.main(
                train_rsepm.get_args_parser().parse_args(
                    argv + ["--rs_start", "1", "--mix_start", "1", "--pamr_iterations", "2", "--pamr_dilations", "1,2"]
                )
            )
            terms = ("cls", "rec", "seg", "rec_mix", "seg_mix")
        else:
            result = train_seg.main(
                train_seg.get_args_parser().parse_args(
                    argv + ["--decoder", script, "--label_tag", "gt", "--output_stride", "16"]
                )
            )
            terms = ("seg",)
        assert result["iterations"] == 1
        config = json.loads((tmp_path / "models" / result["tag"] / "config.json").read_text())
        assert config["amp_dtype"] == ("torch.bfloat16" if amp == "bf16" else "None")
        records[amp] = read_run_log(tmp_path, result["tag"], timings=True)
        weights = torch.load(result["weights"], map_location="cpu", weights_only=True)
        assert all(torch.isfinite(v.float()).all() for v in weights.values())
    for amp in ("off", "bf16"):
        assert all(np.isfinite(v) for r in records[amp] for v in r.values())
        assert set(terms) <= set(records[amp][0])
    first_off, first_bf16 = records["off"][0], records["bf16"][0]
    assert any(first_off[k] != first_bf16[k] for k in terms)  # bf16 did run
    for k in terms:
        rtol = LOSS_RTOL if k in ("cls", "seg") and script != "rsepm" or k == "cls" else TARGET_LOSS_RTOL
        assert first_bf16[k] == pytest.approx(first_off[k], rel=rtol, abs=1e-3), k


@pytest.mark.parametrize("kind", ["rsepm", "seg"])
def test_inference_in_bf16_on_cpu_stays_near_float32(toy, tmp_path, kind):
    torch.manual_seed(0)
    if kind == "rsepm":
        network, module = RSEPM("resnet18", NUM_CLASSES), infer_rsepm
        extra = ["--backbone", "resnet18", "--conf_th", "-1"]
    else:
        network, module = build_network("deeplabv3+", "resnet18", NUM_CLASSES, output_stride=16), infer_seg
        extra = ["--backbone", "resnet18", "--decoder", "deeplabv3+", "--output_stride", "16"]
    network.eval()
    weights = str(tmp_path / "weights.pth")
    save_weights(network, weights)
    seeds = {}
    for amp in ("off", "bf16"):
        pred_dir = tmp_path / amp
        run_main(
            module,
            [
                "--root_dir",
                toy,
                "--dataset",
                "TOY",
                "--domain",
                "validation",
                "--gpus",
                "cpu",
                "--num_workers",
                "0",
                "--weights",
                weights,
                "--tag",
                "t",
                "--pred_dir",
                str(pred_dir),
                "--scales",
                "1.0,0.5",
                "--amp",
                amp,
                *extra,
            ],
        )
        folder = predictions_dir(str(pred_dir), "t", "validation")
        seeds[amp] = {name: load_seed(os.path.join(folder, name)) for name in sorted(os.listdir(folder))}
    assert list(seeds["off"]) == list(seeds["bf16"]) and len(seeds["off"]) == 2
    worst = 0.0
    for name, fp32 in seeds["off"].items():
        bf16 = seeds["bf16"][name]
        assert bf16["seed"].dtype == np.float32 and np.isfinite(bf16["seed"]).all()
        if kind == "rsepm":  # the classes come from the tags, so they cannot differ
            assert np.array_equal(fp32["keys"], bf16["keys"])
        if np.array_equal(fp32["keys"], bf16["keys"]):
            worst = max(worst, float(np.abs(fp32["seed"] - bf16["seed"]).max()))
    assert 0.0 < worst < SEED_ATOL


def test_inference_refuses_fp16_on_cpu_before_writing(toy, tmp_path):
    network = RSEPM("resnet18", NUM_CLASSES)
    weights = str(tmp_path / "w.pth")
    save_weights(network, weights)
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        run_main(
            infer_rsepm,
            [
                "--root_dir",
                toy,
                "--dataset",
                "TOY",
                "--domain",
                "validation",
                "--gpus",
                "cpu",
                "--num_workers",
                "0",
                "--weights",
                weights,
                "--tag",
                "t",
                "--pred_dir",
                str(tmp_path),
                "--backbone",
                "resnet18",
                "--amp",
                "fp16",
            ],
        )
    assert not os.path.exists(predictions_dir(str(tmp_path), "t", "validation"))
