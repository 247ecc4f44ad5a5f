"""train_seg.py end to end on the TOY set: each decoder's outputs feed infer_seg/evaluate, the
mask sources (pseudo masks, ground truth), learning, the derived tag, exact resume, missing and
mismatched masks, argument errors.

Pseudo masks are made here from the ground truth (copied or perturbed) instead of running the
RS+EPM stage, which keeps the file fast.
"""

import json
import math
import os
import runpy
import shutil
import sys

import numpy as np
import pytest
import torch
from helpers import kill_at, read_run_log, run_main
from PIL import Image

import evaluate
import infer_seg
import train_seg
from core.dataset_layout import load_dataset_info
from core.errors import CheckpointError, UsageError
from core.io import load_seed, read_json, read_mask, save_mask, seed_dialect_from_tag
from core.networks import build_network
from tools.args import cli
from tools.engine import resume_state
from tools.paths import model_dir, predictions_dir, pseudo_labels_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 6
LABEL_TAG = "ResNet18@TOY@RS+EPM@toy"
INFO = load_dataset_info("TOY")


@pytest.fixture(scope="module")
def toy(toy_dataset):
    return toy_dataset(num_validation=3)


def gt_mask_dir(root):
    return os.path.join(root, "train_aug", "mask")


def train_ids(root):
    return sorted(f[:-4] for f in os.listdir(gt_mask_dir(root)))


def write_pseudo_masks(root, pred_dir, label_tag=LABEL_TAG, how="perturbed", ids=None):
    """pseudo-labels/{label_tag}/train/ID.png from the ground truth of train_aug.

    how: "copy" (byte copies), "perturbed" (the 255 border band relabelled background, as a
    mask without an ignore band would be) or an int (every pixel that class).
    """
    out = pseudo_labels_dir(str(pred_dir), label_tag, "train_aug")
    os.makedirs(out, exist_ok=True)
    for image_id in train_ids(root) if ids is None else ids:
        source = os.path.join(gt_mask_dir(root), image_id + ".png")
        target = os.path.join(out, image_id + ".png")
        if how == "copy":
            shutil.copyfile(source, target)
            continue
        mask = read_mask(source)
        if how == "perturbed":
            mask = np.where(mask == 255, 0, mask).astype(np.uint8)
        else:
            mask = np.full_like(mask, int(how))
        save_mask(target, mask, INFO.palette)
    return out


def train_argv(root, pred_dir, *extra, epochs=1, decoder="deeplabv3+", output_stride=16, label_tag=LABEL_TAG):
    """Fast settings: 8 train_aug images, batch 4 -> 2 iterations per epoch."""
    return [
        "--root_dir",
        root,
        "--dataset",
        "TOY",
        "--domain",
        "train_aug",
        "--gpus",
        "cpu",
        "--decoder",
        decoder,
        "--output_stride",
        str(output_stride),
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
        "--label_tag",
        label_tag,
        "--pred_dir",
        str(pred_dir),
        "--log_interval",
        "1",
        *extra,
    ]


def read_config(pred_dir, tag):
    with open(os.path.join(model_dir(str(pred_dir), tag), "config.json")) as f:
        return json.load(f)


def flat_state(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def run_script(monkeypatch, argv):
    """train_seg.py as `python train_seg.py ...`: returns its exit status (0 = success)."""
    monkeypatch.setattr(sys, "argv", ["train_seg.py", *argv])
    try:
        runpy.run_path(os.path.join(ROOT, "train_seg.py"), run_name="__main__")
    except SystemExit as e:
        return e.code
    return 0


def infer_argv(root, pred_dir, tag, decoder, output_stride):
    return [
        "--root_dir",
        root,
        "--dataset",
        "TOY",
        "--domain",
        "validation",
        "--tag",
        tag,
        "--pred_dir",
        str(pred_dir),
        "--decoder",
        decoder,
        "--backbone",
        "resnet18",
        "--output_stride",
        str(output_stride),
        "--scales",
        "1.0",
        "--num_workers",
        "0",
        "--gpus",
        "cpu",
    ]


# --- each decoder: outputs, and they feed infer_seg and evaluate ------------------------------
@pytest.mark.parametrize("decoder, output_stride", [("deeplabv3+", 8), ("deeplabv3+", 16), ("deeplabv2", 8)])
def test_training_writes_released_format_and_feeds_inference(toy, tmp_path, decoder, output_stride):
    pred_dir = tmp_path / "exp"
    mask_dir = write_pseudo_masks(toy, pred_dir)
    argv = train_argv(
        toy, pred_dir, "--val_every", "1", "--val_images", "3", decoder=decoder, output_stride=output_stride
    )
    result = train_seg.main(train_seg.get_args_parser().parse_args(argv))
    tag = result["tag"]
    assert result["iterations"] == 2
    directory = pred_dir / "models" / tag
    assert result["weights"] == str(directory / "last.pth")
    assert sorted(os.listdir(directory)) == ["config.json", "last.pth", "logs", "resume.pth"]

    # last.pth: a flat state_dict with exactly the keys (in order) of the network, as trained
    weights = flat_state(directory / "last.pth")
    expected = build_network(decoder, "resnet18", NUM_CLASSES, output_stride=output_stride).state_dict()
    assert list(weights) == list(expected)
    assert all(weights[k].shape == expected[k].shape for k in expected)
    trained = result["network"].state_dict()
    assert all(torch.equal(weights[k], trained[k]) for k in weights)
    assert any(k.endswith("num_batches_tracked") for k in weights)

    config = read_config(pred_dir, tag)
    assert config["args"] == json.loads(
        json.dumps(vars(train_seg.prepare_args(train_seg.get_args_parser().parse_args(argv))))
    )
    assert config["args"]["label_tag"] == LABEL_TAG and config["seed"] == 0
    assert config["mask_dir"] == mask_dir and config["train_images"] == 8
    assert config["iterations_per_epoch"] == 2 and config["max_iterations"] == 2
    state = resume_state.load_resume(
        str(directory / "resume.pth"), build_network(decoder, "resnet18", NUM_CLASSES, output_stride=output_stride)
    )
    assert (state["epoch"], state["step"], state["iteration"]) == (1, 0, 2)

    records = read_run_log(pred_dir, tag, timings=True)
    train_records, val_records = records[:-1], records[-1:]
    assert [(r["iteration"], r["epoch"]) for r in records] == [(1, 1), (2, 1), (2, 1)]  # epochs count from 1
    for r in train_records:
        assert r["lr"] == pytest.approx(1e-3 * (1 - r["iteration"] / 2) ** 0.9, abs=1e-12)
        assert 0.0 < r["seg"] < 20.0 and 0.0 <= r["ignored"] < 1.0
        assert all(math.isfinite(v) for v in r.values())
    assert set(val_records[0]) == {"iteration", "epoch", "val_mIoU"}

    # seeds from the weights (strict load), seg dialect, then scored by their argmax
    summary = run_main(infer_seg, infer_argv(toy, pred_dir, tag, decoder, output_stride))
    assert summary["written"] == 3 and not summary["failed"]
    seed_dir = predictions_dir(str(pred_dir), tag, "validation")
    for name in sorted(os.listdir(seed_dir)):
        seed = load_seed(os.path.join(seed_dir, name))
        height, width = np.asarray(Image.open(os.path.join(toy, "validation", "image", name[:-4] + ".jpg"))).shape[:2]
        assert seed["dialect"] == "seg"
        assert seed["seed"].shape[1:] == (height, width)
        keys = seed["keys"].tolist()
        assert keys == sorted(keys) and set(keys) <= set(range(NUM_CLASSES))
        assert seed["seed"].max(axis=(1, 2)).min() >= 0.05 and seed["seed"].sum(0).max() <= 1 + 1e-4
    scores = run_main(
        evaluate,
        [
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
            "--folder",
            "predictions",
            "--num_workers",
            "0",
        ],
    )
    assert scores["mode"] == "seed" and scores["dialects"] == {"seg": 3} and scores["threshold"] is None
    # the validation during training scored the same network on the same 3 images, single scale
    # + flip: the argmax over all classes equals the argmax over the stored ones (the winner of a
    # pixel has probability >= 1/6 > 0.05), so both numbers must agree
    assert val_records[0]["val_mIoU"] == pytest.approx(scores["mIoU"], abs=1e-6)


def test_weights_of_one_decoder_are_refused_by_the_other(toy, tmp_path):
    pred_dir = tmp_path / "exp"
    write_pseudo_masks(toy, pred_dir)
    tag = train_seg.main(train_seg.get_args_parser().parse_args(train_argv(toy, pred_dir, "--tag", "v3")))["tag"]
    # the training record names the decoder: the contradicting flag is refused before any load
    with pytest.raises(UsageError, match="--decoder deeplabv2 contradicts the training record .*deeplabv3"):
        run_main(infer_seg, infer_argv(toy, pred_dir, tag, "deeplabv2", 16))
    # without the record (foreign weights) the flags are used, and the load itself refuses them
    os.remove(os.path.join(model_dir(str(pred_dir), tag), "config.json"))
    with pytest.raises(CheckpointError, match="last.pth: does not fit DeepLabV2"):
        run_main(infer_seg, infer_argv(toy, pred_dir, tag, "deeplabv2", 16))
    assert not os.path.exists(predictions_dir(str(pred_dir), tag, "validation"))


def test_inference_reads_the_network_from_the_training_record(toy, tmp_path):
    """train_seg --output_stride 16, then infer_seg with no network flag: stride 16, backbone and
    decoder from config.json (the seeds equal those of the explicit flags); a contradicting flag
    is refused with exit 2 naming both values."""
    from tools.args import cli

    pred_dir = tmp_path / "exp"
    write_pseudo_masks(toy, pred_dir)
    tag = train_seg.main(train_seg.get_args_parser().parse_args(train_argv(toy, pred_dir, "--tag", "os16")))["tag"]
    bare = [
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
        "--scales",
        "1.0",
        "--num_workers",
        "0",
        "--gpus",
        "cpu",
    ]
    assert run_main(infer_seg, bare)["written"] == 3
    recorded = read_json(predictions_dir(str(pred_dir), tag, "validation") + ".settings.json")
    assert (recorded["output_stride"], recorded["backbone"], recorded["decoder"]) == (16, "resnet18", "deeplabv3+")
    explicit = tmp_path / "explicit"
    shutil.copytree(pred_dir / "models", explicit / "models")
    os.remove(explicit / "models" / tag / "config.json")  # no record: the flags alone
    argv = infer_argv(toy, explicit, tag, "deeplabv3+", 16)
    assert run_main(infer_seg, argv)["written"] == 3
    for name in os.listdir(predictions_dir(str(pred_dir), tag, "validation")):
        with (
            open(os.path.join(predictions_dir(str(pred_dir), tag, "validation"), name), "rb") as a,
            open(os.path.join(predictions_dir(str(explicit), tag, "validation"), name), "rb") as b,
        ):
            assert a.read() == b.read()
    with pytest.raises(SystemExit) as error:
        cli(infer_seg.main, infer_seg.get_args_parser(), [*bare, "--output_stride", "8", "--overwrite", "true"])
    assert error.value.code == 2


# --- where the masks come from, and that they are what is learnt ------------------------------
def test_gt_label_tag_trains_on_the_ground_truth_masks(toy, tmp_path):
    """--label_tag gt gives bit for bit the run on byte copies of the ground truth as pseudo
    masks; a decoy pseudo-labels/gt/ folder is not read; perturbed masks give other weights."""
    pred_dir = tmp_path / "exp"
    write_pseudo_masks(toy, pred_dir, label_tag="gt", how=3)  # decoy: must not be used
    write_pseudo_masks(toy, pred_dir, label_tag="copy", how="copy")
    write_pseudo_masks(toy, pred_dir, label_tag="perturbed", how="perturbed")
    runs = {
        name: train_seg.main(train_seg.get_args_parser().parse_args(train_argv(toy, pred_dir, label_tag=name)))
        for name in ("gt", "copy", "perturbed")
    }
    assert len({r["tag"] for r in runs.values()}) == 3
    weights = {name: flat_state(r["weights"]) for name, r in runs.items()}
    assert all(torch.equal(weights["gt"][k], weights["copy"][k]) for k in weights["gt"])
    assert not all(torch.equal(weights["gt"][k], weights["perturbed"][k]) for k in weights["gt"])
    losses = {name: [r["seg"] for r in read_run_log(pred_dir, run["tag"], timings=True)] for name, run in runs.items()}
    assert losses["gt"] == losses["copy"] != losses["perturbed"]

    config = read_config(pred_dir, runs["gt"]["tag"])
    assert config["mask_dir"] is None and config["args"]["label_tag"] == "gt"
    assert config["dataset_summary"].startswith("8 of 8 images of " + os.path.join(toy, "train_aug"))


def test_loss_learns_the_masks(toy, tmp_path):
    """Masks that say "square" everywhere: the loss falls from about log(6) to near zero within
    a few iterations and the network then predicts square on every validation pixel."""
    pred_dir = tmp_path / "exp"
    square = INFO.class_names.index("square")
    write_pseudo_masks(toy, pred_dir, label_tag="square", how=square)
    tag = train_seg.main(
        train_seg.get_args_parser().parse_args(
            train_argv(toy, pred_dir, "--tag", "square", epochs=3, label_tag="square")
        )
    )["tag"]
    losses = [r["seg"] for r in read_run_log(pred_dir, tag, timings=True)]
    assert len(losses) == 6
    assert losses[0] > 1.0 and max(losses[-2:]) < 0.2 * losses[0], losses

    run_main(infer_seg, infer_argv(toy, pred_dir, tag, "deeplabv3+", 16))
    seed_dir = predictions_dir(str(pred_dir), tag, "validation")
    for name in os.listdir(seed_dir):
        seed = load_seed(os.path.join(seed_dir, name))
        prediction = seed["keys"][seed["seed"].argmax(0)]
        assert (prediction == square).mean() > 0.99, name


def test_derived_tag_marks_a_multi_stage_model():
    base = [
        "--dataset",
        "TOY",
        "--backbone",
        "resnet18",
        "--label_tag",
        LABEL_TAG,
        "--max_epoch",
        "3",
        "--batch_size",
        "4",
        "--crop_size",
        "32",
    ]
    v3 = train_seg.prepare_args(train_seg.get_args_parser().parse_args(base)).tag
    assert v3.startswith("ResNet18@TOY@DeepLabV3+(os8)@MS@labels=" + LABEL_TAG), v3
    assert v3.endswith("@e3-b4-c32-s0")  # ImageNet initialisation: no suffix
    # the original's rule for seed files without a recorded dialect: "MS" in the tag = seg
    assert seed_dialect_from_tag(v3) == "seg" and seed_dialect_from_tag(LABEL_TAG) == "rsepm"
    v2 = train_seg.prepare_args(
        train_seg.get_args_parser().parse_args(base + ["--decoder", "deeplabv2", "--output_stride", "16"])
    ).tag
    assert "@DeepLabV2(os16)@MS@" in v2 and seed_dialect_from_tag(v2) == "seg"
    gt = train_seg.prepare_args(
        train_seg.get_args_parser().parse_args(base + ["--label_tag", "gt", "--pretrained", "none"])
    ).tag
    assert "@MS@labels=gt@" in gt and gt.endswith("-scratch")
    assert train_seg.prepare_args(train_seg.get_args_parser().parse_args(base + ["--seed", "1"])).tag != v3
    assert train_seg.prepare_args(train_seg.get_args_parser().parse_args(base + ["--tag", "mine"])).tag == "mine"


# --- exact resumption --------------------------------------------------------------------------


def test_resume_mid_epoch_gives_identical_weights_and_log(toy, tmp_path, monkeypatch):
    """2 epochs x 4 iterations (batch 2), resume checkpoints every 2 iterations: a run killed in
    its 8th iteration restarts from iteration 6 (epoch 1, step 2), redoes the logged iteration 7,
    and ends with the weights of an uninterrupted run."""
    write_pseudo_masks(toy, tmp_path / "a")
    write_pseudo_masks(toy, tmp_path / "b")
    extra = ["--tag", "resume", "--batch_size", "2", "--save_interval", "2"]
    whole = train_seg.main(train_seg.get_args_parser().parse_args(train_argv(toy, tmp_path / "a", *extra, epochs=2)))
    assert whole["iterations"] == 8

    with monkeypatch.context() as patch:
        kill_at(patch, 7)
        with pytest.raises(KeyboardInterrupt):
            train_seg.main(train_seg.get_args_parser().parse_args(train_argv(toy, tmp_path / "b", *extra, epochs=2)))
    directory_b = model_dir(str(tmp_path / "b"), "resume")
    assert not os.path.exists(os.path.join(directory_b, "last.pth"))
    assert [r["iteration"] for r in read_run_log(tmp_path / "b", "resume", timings=True)] == list(range(1, 8))
    network = build_network("deeplabv3+", "resnet18", NUM_CLASSES, output_stride=16)
    saved = resume_state.load_resume(os.path.join(directory_b, "resume.pth"), network)
    assert (saved["epoch"], saved["step"], saved["iteration"]) == (1, 2, 6)

    resumed = train_seg.main(
        train_seg.get_args_parser().parse_args(train_argv(toy, tmp_path / "b", *extra, "--resume", "true", epochs=2))
    )
    assert resumed["iterations"] == 8
    a = flat_state(os.path.join(model_dir(str(tmp_path / "a"), "resume"), "last.pth"))
    b = flat_state(os.path.join(directory_b, "last.pth"))
    assert list(a) == list(b)
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"

    log_a, log_b = (
        read_run_log(tmp_path / "a", "resume", timings=True),
        read_run_log(tmp_path / "b", "resume", timings=True),
    )
    assert [r["iteration"] for r in log_b] == list(range(1, 9))  # iteration 7 once
    for ra, rb in zip(log_a, log_b):
        assert {k: v for k, v in ra.items() if k != "images_per_s"} == {
            k: v for k, v in rb.items() if k != "images_per_s"
        }


# --- missing and mismatched masks --------------------------------------------------------------
def test_missing_pseudo_mask_folder_is_an_error_naming_it(toy, tmp_path, monkeypatch):
    pred_dir = tmp_path / "exp"
    code = run_script(monkeypatch, train_argv(toy, pred_dir))
    folder = pseudo_labels_dir(str(pred_dir), LABEL_TAG, "train_aug")
    assert isinstance(code, str) and code.startswith(f"error: {folder}: pseudo-mask folder not found"), code
    assert not (pred_dir / "models").exists()


def test_partly_missing_masks_stop_the_run_unless_allowed(toy, tmp_path, monkeypatch):
    pred_dir = tmp_path / "exp"
    ids = train_ids(toy)
    missing = [ids[1], ids[4], ids[6]]
    mask_dir = write_pseudo_masks(toy, pred_dir, ids=[i for i in ids if i not in missing])

    code = run_script(monkeypatch, train_argv(toy, pred_dir))
    assert isinstance(code, str) and code.startswith(f"error: {mask_dir}: 3 of 8 images"), code
    assert f"({', '.join(missing)})" in code
    assert not (pred_dir / "models").exists()

    # allowed: 5 images left, batch 4 -> 1 iteration an epoch; the skip is counted and listed
    code = run_script(monkeypatch, train_argv(toy, pred_dir, "--tag", "allowed", "--allow_missing", "true"))
    assert code == 0
    config = read_config(pred_dir, "allowed")
    assert config["train_images"] == 5 and config["iterations_per_epoch"] == 1
    expected = f"5 of 8 images of {os.path.join(toy, 'train_aug')}; skipped 3 without a mask ({', '.join(missing)})"
    assert config["dataset_summary"] == expected
    with open(os.path.join(model_dir(str(pred_dir), "allowed"), "logs", "log.txt")) as f:
        assert expected in f.read()
    assert [r["iteration"] for r in read_run_log(pred_dir, "allowed", timings=True)] == [1]

    # too few images left for one batch: an error, not an endless empty loop
    os.remove(os.path.join(mask_dir, ids[0] + ".png"))
    os.remove(os.path.join(mask_dir, ids[2] + ".png"))
    code = run_script(monkeypatch, train_argv(toy, pred_dir, "--tag", "few", "--allow_missing", "true"))
    assert isinstance(code, str) and "3 usable images give no full batch of 4" in code, code


def test_mask_of_another_size_is_named_skipped_and_counted(toy, tmp_path):
    pred_dir = tmp_path / "exp"
    mask_dir = write_pseudo_masks(toy, pred_dir)
    bad = train_ids(toy)[3]
    mask = read_mask(os.path.join(mask_dir, bad + ".png"))
    save_mask(os.path.join(mask_dir, bad + ".png"), mask[:, :-2], INFO.palette)  # 2 columns short
    height, width = mask.shape

    result = train_seg.main(train_seg.get_args_parser().parse_args(train_argv(toy, pred_dir, "--tag", "mismatch")))
    assert result["iterations"] == 1  # 7 images, batch 4, the last partial batch dropped
    config = read_config(pred_dir, "mismatch")
    assert config["train_images"] == 7
    listed = (
        f"skipped 1 whose mask size differs from the image ({bad} (image {width}x{height}, mask {width - 2}x{height}))"
    )
    assert config["dataset_summary"].startswith("7 of 8 images") and config["dataset_summary"].endswith(listed)
    with open(os.path.join(model_dir(str(pred_dir), "mismatch"), "logs", "log.txt")) as f:
        assert listed in f.read()


# --- argument errors ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "extra, message",
    [
        (["--crop_size", "100"], "--crop_size 100: use a multiple of 16"),
        (["--crop_size", "16"], "'16' is outside --crop_size's range [32, 2048]"),
        (["--backbone", "resnet7"], "argument --backbone: invalid choice: 'resnet7'"),
        (["--decoder", "deeplabv4"], "argument --decoder: invalid choice: 'deeplabv4'"),
        (["--output_stride", "32"], "argument --output_stride: invalid choice: 32"),
        (["--max_epoch", "0"], "argument --max_epoch: '0' is outside --max_epoch's range [1, 100000]"),
        (["--min_image_size", "400", "--max_image_size", "300"], "need --min_image_size <= --max_image_size"),
        (["--allow_missing", "maybe"], "expected a boolean"),
        (["--batch_size", "0"], "argument --batch_size: '0' is outside --batch_size's range [1, 65536]"),
        (["--save_interval", "0"], "argument --save_interval: '0' is outside --save_interval's range [1, "),
        (["--log_interval", "0"], "argument --log_interval: '0' is outside --log_interval's range [1, "),
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
        "--label_tag",
        LABEL_TAG,
        *extra,
    ]
    with pytest.raises(SystemExit) as exit_info:
        cli(train_seg.main, train_seg.get_args_parser(), argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "exp").exists()


def test_label_tag_is_required(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_seg.get_args_parser().parse_args(["--root_dir", str(tmp_path), "--dataset", "TOY"])
    assert exit_info.value.code == 2
    assert "the following arguments are required: --label_tag" in capsys.readouterr().err
