"""train_affinity.py on a tiny TOY set: the relation-label cache, training, the saved key layout,
resume, then `convert --mode rw` and evaluate.py on its masks (the multi-stage path end to end).

Seeds are made here from the ground truth (blurred class planes) instead of running RS+EPM,
which keeps the file fast.
"""

import json
import os

import numpy as np
import pytest
import torch
from helpers import count_syncs, kill_at, run_main
from scipy.ndimage import uniform_filter

import convert_seed_to_pseudo_masks as convert
import evaluate
import train_affinity
from core.affinity import AffinityNet
from core.dataset_layout import SeedLayout, load_dataset_info
from core.errors import UsageError
from core.io import read_json, read_mask, save_seed, settings_path, write_json
from core.relations import ir_label_from_seed
from tools.args import cli
from tools.paths import model_dir, predictions_dir, pseudo_labels_dir
from tools.seeds import relation_cache, seed_jobs

SEED_TAG = "ResNet18@TOY@RS+EPM@gt-seeds"
INFO = load_dataset_info("TOY")


@pytest.fixture(scope="module")
def toy(tmp_path_factory, toy_dataset):
    """8 train_aug images (4 of them also in train) and their seeds of the ground-truth tags."""
    root, pred = toy_dataset(), str(tmp_path_factory.mktemp("affinity") / "exp")
    layout = SeedLayout(root, "train_aug", INFO)
    for image_id in layout.ids:
        gt = layout.read_mask(image_id)
        classes = sorted(int(c) for c in np.unique(gt) if 0 < c < 255)
        planes = (
            np.stack([uniform_filter((gt == c).astype(np.float32), 5) for c in classes])
            if classes
            else np.zeros((0,) + gt.shape, np.float32)
        )
        save_seed(
            os.path.join(predictions_dir(pred, SEED_TAG, "train_aug"), image_id + ".pkl"),
            [0] + classes,
            planes,
            "rsepm",
        )
    return root, pred


def train_argv(root, pred, *extra, epochs=1):
    """Fast settings: ResNet-18 from scratch, crops of 64 (16x16 grid), radius 5, batch 2."""
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
        "64",
        "--rw_radius",
        "5",
        "--batch_size",
        "2",
        "--num_workers",
        "0",
        "--max_epoch",
        str(epochs),
        "--seed_tag",
        SEED_TAG,
        "--pred_dir",
        pred,
        "--log_interval",
        "1",
        "--ir_crf",
        "false",
        *extra,
    ]


def test_train_convert_evaluate_end_to_end(toy):
    root, pred = toy
    result = train_affinity.main(prepared(train_argv(root, pred, "--tag", "aff", "--lr", "0.5")))
    assert result["tag"] == "aff" and result["iterations"] == 4  # 8 images / batch 2

    # the saved weights: the authors' AffinityNet layout (backbone, named edge modules, the same
    # modules again under edge_layers), loaded strictly; only the edge branch moved
    weights = torch.load(result["weights"], map_location="cpu", weights_only=True)
    fresh = AffinityNet("resnet18").state_dict()
    assert list(weights) == list(fresh)
    edge_keys = [k for k in weights if not k.startswith("model.")]
    assert len(edge_keys) == 34 and "fc_edge6.weight" in edge_keys and "edge_layers.5.bias" in edge_keys
    assert all(torch.equal(weights[f"fc_edge{i + 1}.0.weight"], weights[f"edge_layers.{i}.0.weight"]) for i in range(5))
    assert not any("dp" in k for k in weights)
    torch.manual_seed(0)  # the run's seed: the same initialisation as its network before training
    start = AffinityNet("resnet18")
    assert all(torch.equal(weights[k], v) for k, v in start.state_dict().items() if k.startswith("model."))
    assert not torch.equal(weights["fc_edge6.weight"], start.state_dict()["fc_edge6.weight"])

    with open(os.path.join(model_dir(pred, "aff"), "logs", "log.jsonl")) as f:
        records = [json.loads(line) for line in f]
    assert [r["iteration"] for r in records] == [1, 2, 3, 4]
    for r in records:
        assert r["total"] == pytest.approx((r["bg_pos"] / 2 + r["fg_pos"] / 2 + r["neg"]) / 2, rel=1e-5)
        assert r["lr"] == pytest.approx(0.5 * (1 - r["iteration"] / 4) ** 0.9, abs=1e-9)
        assert r["pairs_bg"] > 0 and r["pairs_fg"] > 0 and r["pairs_neg"] > 0

    # random-walk masks of train_aug beside the CRF ones, then scored on train
    base = [
        "--root_dir",
        root,
        "--dataset",
        "TOY",
        "--domain",
        "train_aug",
        "--folder",
        "predictions",
        "--tag",
        SEED_TAG,
        "--pred_dir",
        pred,
        "--gpus",
        "cpu",
    ]
    summary = run_main(convert, base + ["--mode", "rw", "--affinity_tag", "aff", "--num_workers", "1"])
    mask_dir = pseudo_labels_dir(pred, SEED_TAG + "@rw", "train_aug")
    assert summary["written"] == 8 and not summary["failed"] and summary["output_dir"] == mask_dir
    layout = SeedLayout(root, "train_aug", INFO)
    for image_id in layout.ids:
        mask = read_mask(os.path.join(mask_dir, image_id + ".png"))
        gt = layout.read_mask(image_id)
        assert mask.shape == gt.shape
        assert set(np.unique(mask).tolist()) <= set(np.unique(gt).tolist()) - {255}  # only the seeds' classes
    again = run_main(convert, base + ["--mode", "rw", "--affinity_tag", "aff", "--num_workers", "1"])
    assert again["written"] == 0 and again["skipped_existing"] == 8
    scores = run_main(
        evaluate,
        [
            "--root_dir",
            root,
            "--dataset",
            "TOY",
            "--domain",
            "train",
            "--folder",
            "pseudo-labels",
            "--tag",
            SEED_TAG + "@rw",
            "--pred_dir",
            pred,
            "--num_workers",
            "0",
        ],
    )
    assert scores["mode"] == "mask" and 0 <= scores["mIoU"] <= 100


def test_ir_label_cache_is_atomic_and_skips_finished_maps(toy, tmp_path, monkeypatch):
    root, pred = toy
    layout = SeedLayout(root, "train_aug", INFO)
    seed_dir = predictions_dir(pred, SEED_TAG, "train_aug")
    out = str(tmp_path / "ir")
    # a write that fails half way leaves no file behind, and the run reports it by raising
    calls = []
    original = seed_jobs.save_mask

    def failing_save(path, mask, palette):
        calls.append(path)
        if len(calls) == 3:
            raise OSError("disk full")
        return original(path, mask, palette)

    monkeypatch.setattr(seed_jobs, "save_mask", failing_save)
    with pytest.raises(OSError):
        relation_cache.make_ir_labels(layout, seed_dir, out, SEED_TAG, INFO.palette, crf=False, progress=False)
    assert sorted(os.listdir(out)) == [layout.ids[0] + ".png", layout.ids[1] + ".png"]
    monkeypatch.setattr(seed_jobs, "save_mask", original)

    # a second run makes only the missing maps; the finished ones are not touched
    stamp = os.stat(os.path.join(out, layout.ids[0] + ".png")).st_mtime_ns
    summary = relation_cache.make_ir_labels(layout, seed_dir, out, SEED_TAG, INFO.palette, crf=False, progress=False)
    assert summary == {"written": 6, "existing": 2, "failed": []}
    assert os.stat(os.path.join(out, layout.ids[0] + ".png")).st_mtime_ns == stamp
    # every map equals ir_label_from_seed of its seed, computed here independently
    for image_id in layout.ids:
        gt = layout.read_mask(image_id)
        classes = sorted(int(c) for c in np.unique(gt) if 0 < c < 255)
        planes = np.stack([uniform_filter((gt == c).astype(np.float32), 5) for c in classes])
        expected = ir_label_from_seed(planes, classes, layout.read_image(image_id), crf=False)
        np.testing.assert_array_equal(read_mask(os.path.join(out, image_id + ".png")), expected)

    # a corrupt seed file is reported with its name, the others still made
    os.remove(os.path.join(out, layout.ids[4] + ".png"))
    bad = tmp_path / "seeds"
    bad.mkdir()
    for image_id in layout.ids:
        os.symlink(os.path.join(seed_dir, image_id + ".pkl"), bad / (image_id + ".pkl"))
    os.remove(bad / (layout.ids[4] + ".pkl"))
    (bad / (layout.ids[4] + ".pkl")).write_bytes(b"not a pickle")
    summary = relation_cache.make_ir_labels(layout, str(bad), out, SEED_TAG, INFO.palette, crf=False, progress=False)
    assert summary["written"] == 0 and summary["existing"] == 7
    assert len(summary["failed"]) == 1 and layout.ids[4] + ".pkl" in summary["failed"][0]["problem"]


def test_relation_labels_refuse_other_settings_unless_overwrite(toy, tmp_path):
    """Before: ir-labels/{label_tag}/ had no record, and other thresholds reused the old maps."""
    root, pred = toy
    layout = SeedLayout(root, "train_aug", INFO)
    seed_dir = predictions_dir(pred, SEED_TAG, "train_aug")
    out = str(tmp_path / "ir")

    def make(**kw):
        return relation_cache.make_ir_labels(
            layout, seed_dir, out, SEED_TAG, INFO.palette, crf=False, progress=False, **kw
        )

    assert make()["written"] == 8
    with pytest.raises(UsageError, match=r"fg_th: 0.3 -> 0.5.*--overwrite true"):
        make(fg_th=0.5)
    assert sorted(os.listdir(out)) == sorted(i + ".png" for i in layout.ids)  # nothing deleted
    assert make(fg_th=0.5, overwrite=True) == {"written": 8, "existing": 0, "failed": []}
    assert read_json(settings_path(out))["fg_th"] == 0.5
    # new seeds in the same folder (their record changed) count as other settings too
    record = settings_path(seed_dir)
    old = read_json(record) if os.path.isfile(record) else None
    try:
        write_json(record, {"kind": "other seeds"})
        with pytest.raises(UsageError, match="seed_settings"):
            make(fg_th=0.5)
    finally:
        write_json(record, old) if old is not None else os.remove(record)


def test_resume_continues_to_the_same_weights(toy, tmp_path, monkeypatch):
    root, _ = toy
    pred = str(tmp_path / "exp")
    os.makedirs(pred)
    os.symlink(os.path.join(toy[1], "predictions"), os.path.join(pred, "predictions"))
    argv = train_argv(root, pred, "--tag", "whole", epochs=2)
    whole = torch.load(train_affinity.main(prepared(argv))["weights"], weights_only=True)
    cut = train_argv(root, pred, "--tag", "cut", "--save_interval", "5", epochs=2)
    kill_at(monkeypatch, 6)  # the 7th step never happens; resume.pth holds step 1 of epoch 2
    with pytest.raises(KeyboardInterrupt):
        train_affinity.main(train_affinity.get_args_parser().parse_args(cut))
    monkeypatch.undo()
    resumed = train_affinity.main(train_affinity.get_args_parser().parse_args(cut + ["--resume", "true"]))
    assert resumed["iterations"] == 8
    final = torch.load(resumed["weights"], weights_only=True)
    assert all(torch.equal(whole[k], final[k]) for k in whole)


def prepared(argv):
    return train_affinity.prepare_args(train_affinity.get_args_parser().parse_args(argv))


def run_cli(argv):
    """The script as the shell runs it: (exit status, stderr is read by the caller)."""
    with pytest.raises(SystemExit) as exit_info:
        cli(train_affinity.main, train_affinity.get_args_parser(), argv)
    return exit_info.value.code


def test_bad_arguments_are_refused(toy, capsys):
    root, pred = toy
    with pytest.raises(UsageError, match="--rw_radius 9"):
        prepared(train_argv(root, pred, "--rw_radius", "9"))  # crop 64: at most 8
    with pytest.raises(UsageError, match="--ir_bg_th <= --ir_fg_th"):
        prepared(train_argv(root, pred, "--ir_bg_th", "0.5", "--ir_fg_th", "0.3"))
    assert run_cli(train_argv(root, pred, "--rw_radius", "9")) == 2  # usage: argparse's status
    assert "error: --rw_radius 9: at most 8 for --crop_size 64" in capsys.readouterr().err
    args = prepared(train_argv(root, pred))
    assert args.tag == f"ResNet18@TOY@AffinityNet@labels={SEED_TAG}@r5@e1-b2-c64-s0-scratch"
    assert (
        run_cli(train_argv(root, pred + "/elsewhere"))
        == "error: " + os.path.join(pred + "/elsewhere", "predictions", SEED_TAG, "train")
        + ": seed folder not found (run infer_rsepm.py "
        f"--domain train_aug --conf_th -1 --tag {SEED_TAG} first)"
    )


@pytest.mark.parametrize(
    "flag", ["--min_image_size", "--max_image_size", "--sync_bn", "--color_jitter", "--channels_last", "--head_lr_mult"]
)
def test_flags_that_do_not_apply_are_refused(toy, capsys, flag):
    root, pred = toy
    with pytest.raises(SystemExit) as exit_info:
        train_affinity.get_args_parser().parse_args(train_argv(root, pred, flag, "1"))
    assert exit_info.value.code == 2 and f"unrecognized arguments: {flag} 1" in capsys.readouterr().err


def test_help_is_the_affinity_network_s_own(capsys):
    with pytest.raises(SystemExit):
        train_affinity.get_args_parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shared in ("head: x10", "not on biases/BN", "momentum (0.9)", "--min_image_size", "--sync_bn"):
        assert shared not in text, shared
    assert "learning rate of the edge branch (the backbone is frozen) (default: 0.1)" in text
    assert "--rw_radius RW_RADIUS pairs of stride-4 cells closer than this are trained (default: 10)" in text


def test_old_flag_names_still_work_for_one_release(toy, capsys):
    root, pred = toy
    new = prepared(train_argv(root, pred, "--rw_radius", "6", "--ir_fg_th", "0.4", "--ir_bg_th", "0.1"))
    argv = [a for a in train_argv(root, pred) if a not in ("--rw_radius", "5", "--seed_tag", SEED_TAG)]
    old = prepared(argv + ["--label_tag", SEED_TAG, "--radius", "6", "--fg_th", "0.4", "--bg_th", "0.1"])
    assert vars(old) == vars(new)
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"warning: --{o} is deprecated, use --{n}; it will be removed in the next release"
        for o, n in (("label_tag", "seed_tag"), ("radius", "rw_radius"), ("fg_th", "ir_fg_th"), ("bg_th", "ir_bg_th"))
    ]
    with pytest.raises(SystemExit):  # the old name goes through the new one's type
        train_affinity.get_args_parser().parse_args(argv + ["--seed_tag", SEED_TAG, "--radius", "six"])


def test_no_host_sync_per_iteration(toy, tmp_path, monkeypatch):
    """One epoch of 8 images as 4 or 2 iterations, one log line at its end: the same host-sync
    calls, so none is per iteration (the statistics are summed on the device)."""
    root, _ = toy
    pred = str(tmp_path / "exp")
    os.makedirs(pred)
    os.symlink(os.path.join(toy[1], "predictions"), os.path.join(pred, "predictions"))
    # the relation-label cache first, so that both runs find it made
    relation_cache.make_ir_labels(
        SeedLayout(root, "train_aug", INFO),
        predictions_dir(pred, SEED_TAG, "train_aug"),
        relation_cache.ir_labels_dir(pred, SEED_TAG, "train_aug"),
        SEED_TAG,
        INFO.palette,
        crf=False,
        num_workers=0,
        progress=False,
    )

    def run(batch_size):
        argv = train_argv(
            root,
            pred,
            "--tag",
            f"b{batch_size}",
            "--batch_size",
            str(batch_size),
            "--log_interval",
            "100",
            "--save_interval",
            "100",
        )
        return count_syncs(monkeypatch, lambda: train_affinity.main(train_affinity.get_args_parser().parse_args(argv)))

    four, two = run(2), run(4)
    assert four == two, {k: (four[k], two[k]) for k in set(four) | set(two) if four[k] != two[k]}
    assert sum(v for (_, where, _), v in four.items() if where in ("train_affinity.py", "relations.py")) == 0, four


def test_a_bad_seed_file_stops_the_run_or_is_skipped(toy, tmp_path):
    root, pred = toy
    other = str(tmp_path / "exp")
    seeds = predictions_dir(other, SEED_TAG, "train_aug")
    os.makedirs(seeds)
    source = predictions_dir(pred, SEED_TAG, "train_aug")
    names = sorted(os.listdir(source))
    for name in names[1:]:
        os.symlink(os.path.join(source, name), os.path.join(seeds, name))
    with open(os.path.join(seeds, names[0]), "wb") as f:
        f.write(b"garbage")
    with pytest.raises(SystemExit, match=r"1 of 8 images have no relation-label map \(toy_000000\)"):
        cli(train_affinity.main, train_affinity.get_args_parser(), train_argv(root, other))
    result = train_affinity.main(prepared(train_argv(root, other, "--allow_missing", "true", "--batch_size", "7")))
    assert result["iterations"] == 1  # 7 usable images, one batch of 7


def test_backbone_from_a_checkpoint_of_this_project(tmp_path):
    """--pretrained PATH with an RS+EPM last.pth: the frozen backbone is its `model.*` part."""
    from core.networks import RSEPM
    from core.weights import save_weights

    rsepm = RSEPM("resnet18", num_classes=6)
    save_weights(rsepm, str(tmp_path / "last.pth"))
    net = train_affinity.build_affinity_net("resnet18", str(tmp_path / "last.pth"))
    source = rsepm.model.state_dict()
    assert all(torch.equal(v, source[k]) for k, v in net.model.state_dict().items())
    with pytest.raises(Exception, match="not a matching ResNet state_dict"):
        train_affinity.build_affinity_net("resnet34", str(tmp_path / "last.pth"))
