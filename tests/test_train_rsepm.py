"""train_rsepm.py end to end on the TOY set: outputs, the single-stage path, exact resume, NaN stop,
argument errors, untagged images, the EMA teacher and torchrun (2 CPU processes)."""

import dataclasses
import glob
import json
import math
import os
import re
import runpy
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest
import torch
from helpers import kill_at, read_run_log, run_main

import convert_seed_to_pseudo_masks
import core.rsepm
import evaluate
import infer_rsepm
import train_rsepm
from core.networks import RSEPM
from core.weights import load_checkpoint
from tools.args import cli
from tools.engine import distributed, optim, resume_state
from tools.paths import model_dir, predictions_dir, pseudo_labels_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 6
UNTAGGED_ID = "toy_000005"  # in train_aug only (train is the first 4 ids)


@pytest.fixture(scope="module")
def toy(toy_dataset):
    return toy_dataset(num_validation=3)


def train_argv(root, pred_dir, *extra, epochs=3, rs_start=2, mix_start=3):
    """Fast settings: 8 train_aug images, batch 4 -> 2 iterations per epoch. Starts count from 1."""
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
        "64",
        "--batch_size",
        "4",
        "--num_workers",
        "0",
        "--max_epoch",
        str(epochs),
        "--rs_start",
        str(rs_start),
        "--mix_start",
        str(mix_start),
        "--pamr_iterations",
        "2",
        "--pamr_dilations",
        "1,2",
        "--pred_dir",
        str(pred_dir),
        "--log_interval",
        "1",
        *extra,
    ]


def flat_state(path):
    return torch.load(path, map_location="cpu", weights_only=True)


# --- the single-stage path ---------------------------------------------------------------------
def test_training_writes_weights_config_logs_and_feeds_inference(toy, tmp_path):
    pred_dir = tmp_path / "exp"
    argv = train_argv(toy, pred_dir)
    result = train_rsepm.main(train_rsepm.get_args_parser().parse_args(argv))
    tag = result["tag"]
    assert result["iterations"] == 6
    # the derived tag states the settings and names the folder
    for part in ("ResNet18", "@TOY@", "RS(ep=2, ", "EPM(ep=3, ", "CF(c=0.55, u=0.10)", "e3-b4-c32-s0", "scratch"):
        assert part in tag, (part, tag)
    directory = pred_dir / "models" / tag
    assert result["weights"] == str(directory / "last.pth")
    assert sorted(os.listdir(directory)) == ["config.json", "last.pth", "logs", "resume.pth"]

    # last.pth: a flat state_dict with the network's keys, equal to the trained weights
    weights = flat_state(directory / "last.pth")
    assert list(weights) == list(RSEPM("resnet18", NUM_CLASSES).state_dict())
    trained = result["network"].state_dict()
    assert all(torch.equal(weights[k], trained[k]) for k in weights)

    config = json.loads((directory / "config.json").read_text())
    expected_args = json.loads(
        json.dumps(vars(train_rsepm.prepare_args(train_rsepm.get_args_parser().parse_args(argv))))
    )
    assert config["args"] == expected_args
    assert config["args"]["rs_start"] == 2 and config["args"]["mix"] == "epm" and config["seed"] == 0
    assert config["weight_decay_in_momentum_slot"] is False
    assert config["iterations_per_epoch"] == 2 and config["max_iterations"] == 6
    assert config["loss_weights"]["cls_mix"] == 1.0 and config["method"]["pamr_dilations"] == [1, 2]
    assert config["method"]["scg_features"] == ["C4", "C5"] and config["args"]["scg_grid"] == "cam"
    assert config["saved_weights"] == "online"

    state = resume_state.load_resume(str(directory / "resume.pth"), RSEPM("resnet18", NUM_CLASSES))
    assert (state["epoch"], state["step"], state["iteration"]) == (3, 0, 6)

    # the log: one record per iteration, the terms of each phase, poly lr, label fractions
    records = read_run_log(pred_dir, tag, timings=True)
    # epochs count from 1 as --rs_start 2 / --mix_start 3 do: RecurSeed from epoch 2, the mix from 3
    assert [(r["iteration"], r["epoch"]) for r in records] == [(1, 1), (2, 1), (3, 2), (4, 2), (5, 3), (6, 3)]
    for r in records:
        terms = {k for k in r if k in core.rsepm.LOSS_TERMS}
        expected_terms = (
            {"cls"}
            | ({"rec", "seg"} if r["epoch"] >= 2 else set())
            | ({"rec_mix", "seg_mix", "cls_mix"} if r["epoch"] >= 3 else set())
        )
        assert terms == expected_terms, r
        assert r["total"] == pytest.approx(sum(r[k] for k in terms), rel=1e-6)
        assert r["lr"] == pytest.approx(0.01 * (1 - r["iteration"] / 6) ** 0.9, abs=1e-12)
        if r["epoch"] >= 2:
            assert r["certain"] + r["ignored"] == pytest.approx(1.0, abs=1e-6)
        else:
            assert "certain" not in r
        assert all(math.isfinite(v) for v in r.values())
    assert len(glob.glob(str(directory / "logs" / "events.out.tfevents.*"))) == 1
    lines = [line for line in (directory / "logs" / "log.txt").read_text().splitlines() if line.startswith("[ep")]
    assert [line.split("]")[0] for line in lines] == [
        f"[ep {e} it {i}" for i, e in ((1, 1), (2, 1), (3, 2), (4, 2), (5, 3), (6, 3))
    ]
    assert [" rec " in line for line in lines] == [False, False, True, True, True, True]  # RecurSeed on "ep 2"

    # seeds from the trained weights (strict load), then CRF masks, then the evaluation
    common = [
        "--root_dir",
        toy,
        "--dataset",
        "TOY",
        "--domain",
        "validation",
        "--tag",
        tag,
        "--pred_dir",
        str(pred_dir),
        "--num_workers",
        "0",
    ]
    summary = run_main(infer_rsepm, common + ["--backbone", "resnet18", "--scales", "1.0", "--gpus", "cpu"])
    assert summary["written"] == 3 and not summary["failed"]
    assert len(os.listdir(predictions_dir(str(pred_dir), tag, "validation"))) == 3
    converted = run_main(convert_seed_to_pseudo_masks, common + ["--folder", "predictions"])
    assert converted["written"] == 3 and not converted["failed"]
    assert len(os.listdir(pseudo_labels_dir(str(pred_dir), tag, "validation"))) == 3
    scores = run_main(evaluate, common + ["--folder", "pseudo-labels"])
    assert 0.0 <= scores["mIoU"] <= 100.0


def test_derived_tag_reads_like_the_authors_tag():
    base = ["--dataset", "TOY", "--backbone", "resnet18", "--max_epoch", "3", "--rs_start", "2"]
    epm = train_rsepm.prepare_args(train_rsepm.get_args_parser().parse_args(base + ["--mix_start", "3"])).tag
    assert epm == (
        "ResNet18@TOY@RS(ep=2, cam=1.0, seg=1.0)+CF(c=0.55, u=0.10)+EPM(ep=3, cls=1.0, cam=1.0, seg=1.0)@e3-b16-c512-s0"
    )
    cm = train_rsepm.prepare_args(
        train_rsepm.get_args_parser().parse_args(
            base + ["--mix", "certainmix", "--mix_start", "3", "--w_cls_mix", "0.5"]
        )
    ).tag
    assert "+CM(ep=3, cls=0.5, cam=1.0, seg=1.0)@" in cm
    plain = train_rsepm.prepare_args(
        train_rsepm.get_args_parser().parse_args(base + ["--mix", "none", "--teacher", "ema"])
    ).tag
    assert "EPM" not in plain and "CM(" not in plain and plain.endswith("+EMA(0.999)@e3-b16-c512-s0")
    assert (
        train_rsepm.prepare_args(
            train_rsepm.get_args_parser().parse_args(base + ["--mix_start", "3", "--w_seg", "0.5"])
        ).tag
        != epm
    )
    assert (
        train_rsepm.prepare_args(
            train_rsepm.get_args_parser().parse_args(base + ["--mix_start", "3", "--tag", "mine"])
        ).tag
        == "mine"
    )
    # SCG settings appear only when they differ from the defaults
    scg = train_rsepm.prepare_args(
        train_rsepm.get_args_parser().parse_args(
            base + ["--mix_start", "3", "--scg_features", "c1,C2,C3,C4,C5", "--scg_grid", "c3"]
        )
    )
    assert scg.scg_features == ("C1", "C2", "C3", "C4", "C5")
    assert scg.tag == epm.replace("seg=1.0)@", "seg=1.0)+SCG(C1-C5, c3)@")
    assert (
        "+SCG(C5, cam)@"
        in train_rsepm.prepare_args(
            train_rsepm.get_args_parser().parse_args(base + ["--mix_start", "3", "--scg_features", "C5"])
        ).tag
    )
    assert train_rsepm.method_config(scg).feature_names() == ("C1", "C2", "C3", "C4", "C5")


@pytest.mark.parametrize(
    "flags, max_epoch, rs_epochs, mix_epochs",
    [
        ([], 30, range(5, 31), range(15, 31)),  # the defaults: RS(ep=5), EPM(ep=15)
        (["--rs_start", "1", "--mix_start", "3"], 4, [1, 2, 3, 4], [3, 4]),
        (["--rs_start", "4", "--mix", "none"], 4, [4], []),
        (["--rs_start", "5", "--mix", "none"], 4, [], []),  # after the last epoch: CAM only
    ],
)
def test_active_terms_and_weights_follow_the_parsed_flags(flags, max_epoch, rs_epochs, mix_epochs):
    """Which terms are on in epochs 1..max_epoch (counted from 1, as the authors' trainers do),
    and with which weights: the expected sets are written out by hand above."""
    args = train_rsepm.prepare_args(
        train_rsepm.get_args_parser().parse_args(["--dataset", "TOY", "--max_epoch", str(max_epoch), *flags])
    )
    config = train_rsepm.method_config(args)
    for epoch in range(1, max_epoch + 1):
        use_rs, use_mix = config.active_terms(epoch)
        assert (use_rs, use_mix) == (epoch in rs_epochs, epoch in mix_epochs), epoch
    assert config.weights() == {"cls": 1.0, "rec": 1.0, "seg": 1.0, "rec_mix": 1.0, "seg_mix": 1.0, "cls_mix": 1.0}
    weighted = train_rsepm.method_config(
        train_rsepm.prepare_args(
            train_rsepm.get_args_parser().parse_args(
                ["--dataset", "TOY", "--max_epoch", "30", "--w_cls_mix", "0.25", "--w_cam", "2"]
            )
        )
    ).weights()
    assert weighted["cls_mix"] == 0.25 and weighted["rec"] == 2.0 and weighted["seg"] == 1.0


def test_help_lists_each_method_flag_with_its_default_and_source(capsys):
    with pytest.raises(SystemExit):
        train_rsepm.get_args_parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    expected = {
        "rs_start": ("5", "default tag"),
        "mix_start": ("15", "default tag"),
        "mix": ("epm", "paper"),
        "w_cls_mix": ("1.0", "default tag"),
        "w_cam": ("1.0", "default tag"),
        "scg_fg_th": ("0.5", "released code"),
        "scg_features": ("C4,C5", "inferred"),
        "scg_grid": ("cam", "inferred"),
        "pamr_dilations": ("1,2,4,8,12,24", "inferred"),
        "cf_fg_th": ("0.55", "default tag"),
        "ep_delta": ("0.3", "inferred"),
        "teacher": ("online", "inferred"),
        "ema_decay": ("0.999", "released code"),
    }
    names = [f.name for f in dataclasses.fields(core.rsepm.RSEPMConfig)]
    assert set(expected) <= set(names)
    group = text.index("RS+EPM method")  # after the usage line
    for name in names:
        # the flag's own entry: the flag followed by its metavar or its choices
        start = re.compile(rf"--{name} ({name.upper()}|{{)").search(text, group).start()
        entry = text[start : text.index("(default: ", start) + 40]
        assert "[source: " in entry, entry
        if name in expected:
            default, source = expected[name]
            assert f"[source: {source}" in entry and f"(default: {default})" in entry, entry
    assert "counted from 1" in text


# --- exact resumption --------------------------------------------------------------------------


def test_resume_mid_epoch_gives_identical_weights(toy, tmp_path, monkeypatch):
    """2 epochs x 2 iterations, RS from epoch 0, EdgePredictMix from epoch 1, EMA teacher:
    one run vs a run killed in iteration 4 (mid-epoch 1, with mix) and resumed."""
    extra = ["--tag", "resume", "--teacher", "ema", "--save_interval", "1", "--log_interval", "3"]
    kwargs = dict(epochs=2, rs_start=1, mix_start=2)
    whole = train_rsepm.main(
        train_rsepm.get_args_parser().parse_args(train_argv(toy, tmp_path / "a", *extra, **kwargs))
    )
    assert whole["iterations"] == 4

    with monkeypatch.context() as patch:
        kill_at(patch, 3)
        with pytest.raises(KeyboardInterrupt):
            train_rsepm.main(
                train_rsepm.get_args_parser().parse_args(train_argv(toy, tmp_path / "b", *extra, **kwargs))
            )
    directory_b = model_dir(str(tmp_path / "b"), "resume")
    assert not os.path.exists(os.path.join(directory_b, "last.pth"))
    saved = resume_state.load_resume(os.path.join(directory_b, "resume.pth"), RSEPM("resnet18", NUM_CLASSES))
    assert (saved["epoch"], saved["step"], saved["iteration"]) == (1, 1, 3)
    resumed = train_rsepm.main(
        train_rsepm.get_args_parser().parse_args(train_argv(toy, tmp_path / "b", *extra, "--resume", "true", **kwargs))
    )
    assert resumed["iterations"] == 4

    for name in ("last.pth", "online.pth"):
        a = flat_state(os.path.join(model_dir(str(tmp_path / "a"), "resume"), name))
        b = flat_state(os.path.join(directory_b, name))
        assert list(a) == list(b)
        different = [k for k in a if not torch.equal(a[k], b[k])]
        assert not different, f"{name}: {len(different)} tensors differ, e.g. {different[:3]}"
    # last.pth holds the EMA weights (the resumed EMA state), online.pth the online network
    config = json.load(open(os.path.join(directory_b, "config.json")))
    assert config["saved_weights"] == "ema"
    last = load_checkpoint(RSEPM("resnet18", NUM_CLASSES), os.path.join(directory_b, "last.pth")).state_dict()
    online = flat_state(os.path.join(directory_b, "online.pth"))
    ema_state = resume_state.load_resume(
        os.path.join(directory_b, "resume.pth"),
        RSEPM("resnet18", NUM_CLASSES),
        ema=(ema := optim.ModelEMA(RSEPM("resnet18", NUM_CLASSES))),
    )
    assert ema_state["iteration"] == 4 and ema.updates == 4
    assert all(torch.equal(last[k], v) for k, v in ema.module.state_dict().items())
    assert not torch.equal(last["classifier.weight"], online["classifier.weight"])
    assert all(torch.equal(online[k], v) for k, v in resumed["network"].state_dict().items())

    # logs: every 3rd iteration and each epoch's end, once each, with identical loss values
    log_a, log_b = (
        read_run_log(tmp_path / "a", "resume", timings=True),
        read_run_log(tmp_path / "b", "resume", timings=True),
    )
    assert [r["iteration"] for r in log_a] == [r["iteration"] for r in log_b] == [2, 3, 4]
    for ra, rb in zip(log_a, log_b):
        assert {k: v for k, v in ra.items() if k != "images_per_s"} == {
            k: v for k, v in rb.items() if k != "images_per_s"
        }
    assert {"rec_mix", "seg_mix"} <= set(log_b[-1])


# --- failures ----------------------------------------------------------------------------------
def test_nan_loss_stops_with_the_iteration_and_term_and_keeps_the_last_resume(toy, tmp_path, monkeypatch):
    original = core.rsepm.classification_loss
    calls = []

    def poisoned(logits, tags):
        calls.append(1)
        loss = original(logits, tags)
        return loss * float("nan") if len(calls) == 2 else loss

    monkeypatch.setattr(core.rsepm, "classification_loss", poisoned)
    argv = train_argv(toy, tmp_path, "--tag", "nan", "--save_interval", "1", "--mix", "none", epochs=2)
    monkeypatch.setattr(sys, "argv", ["train_rsepm.py", *argv])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(os.path.join(ROOT, "train_rsepm.py"), run_name="__main__")
    message = str(exit_info.value.code)
    assert message.startswith("error: iteration 1: non-finite loss cls=nan"), message
    directory = model_dir(str(tmp_path), "nan")
    assert not os.path.exists(os.path.join(directory, "last.pth"))
    network = RSEPM("resnet18", NUM_CLASSES)
    state = resume_state.load_resume(os.path.join(directory, "resume.pth"), network)
    assert state["iteration"] == 1
    assert all(torch.isfinite(v).all() for v in network.state_dict().values() if v.is_floating_point())


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--max_epoch", "3", "--rs_start", "4"], "--rs_start 4 is after --max_epoch 3 (epochs are counted 1..3)"),
        (["--max_epoch", "3", "--rs_start", "0"], "argument --rs_start: '0' is outside --rs_start's range [1, "),
        (["--max_epoch", "3", "--rs_start", "1", "--mix_start", "4"], "--mix_start 4 is after --max_epoch 3"),
        (["--scg_features", "C4,C6"], "expected a comma list of C1,C2,C3,C4,C5"),
        (["--scg_grid", "c2"], "argument --scg_grid: invalid choice: 'c2'"),
        (["--max_epoch", "3", "--rs_start", "2", "--mix_start", "1"], "--mix_start 1 is before --rs_start 2"),
        (["--crop_size", "4096"], "'4096' is outside --crop_size's range [32, 2048]"),
        (["--crop_size", "100"], "--crop_size 100: use a multiple of 16"),
        (["--backbone", "resnet7"], "argument --backbone: invalid choice: 'resnet7'"),
        (["--batch_size", "1"], "--batch_size 1: the mix (--mix epm) pairs images"),
        (["--max_epoch", "0"], "argument --max_epoch: '0' is outside --max_epoch's range [1, 100000]"),
        (["--pamr_dilations", "1,x"], "expected comma-separated integers"),
    ],
)
def test_bad_arguments_exit_before_any_work(tmp_path, capsys, extra, message):
    argv = [
        "--root_dir",
        str(tmp_path / "missing"),
        "--dataset",
        "TOY",
        "--pred_dir",
        str(tmp_path / "exp"),
        "--max_epoch",
        "30",
        "--rs_start",
        "5",
        "--mix_start",
        "15",
        *extra,
    ]
    with pytest.raises(SystemExit) as exit_info:
        cli(train_rsepm.main, train_rsepm.get_args_parser(), argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "exp").exists()


@pytest.mark.parametrize(
    "ctx",
    [distributed.DistContext(world_size=2, distributed=True), distributed.DistContext(device_ids=[0, 1])],
    ids=["ddp", "dataparallel"],
)
def test_mix_needs_two_images_per_device(tmp_path, monkeypatch, ctx):
    """--batch_size 2 over 2 processes (or 2 DataParallel GPUs) would mix each image with itself."""
    monkeypatch.setattr(distributed, "setup_distributed", lambda gpus: ctx)
    argv = [
        "--root_dir",
        str(tmp_path / "missing"),
        "--dataset",
        "TOY",
        "--pred_dir",
        str(tmp_path / "exp"),
        "--batch_size",
        "2",
    ]
    with pytest.raises(ValueError, match="--batch_size 2 over 2 devices leaves fewer than 2 images"):
        train_rsepm.main(train_rsepm.get_args_parser().parse_args(argv))
    with pytest.raises(Exception) as other:  # with --mix none it goes on (to the missing data)
        train_rsepm.main(train_rsepm.get_args_parser().parse_args(argv + ["--mix", "none"]))
    assert "missing" in str(other.value)
    assert not (tmp_path / "exp").exists()


def test_image_without_tags_is_skipped_and_counted(toy, tmp_path):
    root = str(tmp_path / "TOY")
    shutil.copytree(toy, root)
    path = os.path.join(root, "train_aug", "xml", UNTAGGED_ID + ".xml")
    tree = ET.parse(path)
    for obj in tree.getroot().findall("object"):
        tree.getroot().remove(obj)
    tree.write(path)
    result = train_rsepm.main(
        train_rsepm.get_args_parser().parse_args(
            train_argv(root, tmp_path / "exp", "--tag", "untagged", "--mix", "none", epochs=1, rs_start=1)
        )
    )
    assert result["iterations"] == 1  # 7 images, batch 4, the last partial batch dropped
    directory = model_dir(str(tmp_path / "exp"), "untagged")
    config = json.load(open(os.path.join(directory, "config.json")))
    assert config["skipped_untagged"] == 1 and config["train_images"] == 7
    log = open(os.path.join(directory, "logs", "log.txt")).read()
    assert "7 of 8 images" in log and f"skipped 1 without tags ({UNTAGGED_ID})" in log


# --- torchrun ----------------------------------------------------------------------------------
def test_torchrun_two_processes_train_in_step_and_only_rank0_writes(toy, tmp_path):
    """2 CPU processes (gloo), global batch 4 = 2 per rank, RS from epoch 0 and the mix from
    epoch 1: the parameters stay identical on both ranks. BatchNorm running statistics are
    rank-local after the last forward (DDP broadcasts rank 0's buffers at the start of each
    forward, and the mix runs a second forward), so only parameters are compared."""
    out = tmp_path / "out"
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    argv = train_argv(toy, tmp_path / "exp", "--tag", "ddp", epochs=2, rs_start=1, mix_start=2)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        os.path.join(ROOT, "tests", "ddp_train_rsepm.py"),
        "--out",
        str(out),
        *argv,
    ]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    rank0, rank1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    names = [n for n, _ in RSEPM("resnet18", NUM_CLASSES).named_parameters()]
    different = [n for n in names if not torch.equal(rank0[n], rank1[n])]
    assert not different, different[:5]
    directory = model_dir(str(tmp_path / "exp"), "ddp")
    final = flat_state(os.path.join(directory, "last.pth"))
    assert all(torch.equal(final[n], rank0[n]) for n in names)
    config = json.load(open(os.path.join(directory, "config.json")))
    assert config["world_size"] == 2 and config["iterations_per_epoch"] == 2
    records = read_run_log(tmp_path / "exp", "ddp", timings=True)
    assert [r["iteration"] for r in records] == [1, 2, 3, 4]
    assert {"rec_mix", "seg_mix"} <= set(records[-1]) and math.isfinite(records[-1]["seg_mix"])
    assert len(glob.glob(os.path.join(directory, "logs", "events.out.tfevents.*"))) == 1
    text = open(os.path.join(directory, "logs", "log.txt")).read()
    assert text.splitlines().count("tag ddp") == 1 and text.count("it 4]") == 1
    assert len(torch.load(os.path.join(directory, "resume.pth"), weights_only=True)["rng"]) == 2


def test_rs_start_after_max_epoch_without_mix_is_the_cam_baseline():
    args = train_rsepm.prepare_args(
        train_rsepm.get_args_parser().parse_args(
            ["--dataset", "TOY", "--backbone", "resnet18", "--max_epoch", "3", "--rs_start", "4", "--mix", "none"]
        )
    )
    assert "@CAM@" in args.tag and "RS(" not in args.tag
    # at max_epoch, RS runs in the last epoch
    last = train_rsepm.prepare_args(
        train_rsepm.get_args_parser().parse_args(
            ["--dataset", "TOY", "--max_epoch", "3", "--rs_start", "3", "--mix", "none"]
        )
    )
    assert "RS(ep=3, " in last.tag
