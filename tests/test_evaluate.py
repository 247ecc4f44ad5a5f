"""evaluate.py end to end on a tiny TOY dataset in the seed layout, built in tmp_path."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import run_main
from mini_data import make_split

import evaluate
from core.dataset_layout import load_dataset_info
from core.errors import EvaluationError, ProjectError
from core.io import save_mask, save_seed, write_json
from tools.paths import evaluation_path, output_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INFO = load_dataset_info("TOY")  # background, disc, square, triangle, ring, cross
C = INFO.num_classes
TAG = "Toy@Test"
IDS = ["img_a", "img_b", "img_c", "img_d"]
SHAPE = (12, 16)  # H, W
THRESHOLDS = [round(0.10 + 0.05 * i, 2) for i in range(15)]


# ---------------------------------------------------------------------------------------------
# Reference (independent of tools/metrics.py): loops over pixels and classes
# ---------------------------------------------------------------------------------------------
def reference_scores(pairs, keeps=None):
    """pairs: [(pred, gt)], keeps: per image bool list or None. Returns (iou % list, mIoU, FP, FN)."""
    P, T, TP = [0] * C, [0] * C, [0] * C
    for index, (pred, gt) in enumerate(pairs):
        keep = keeps[index] if keeps else [True] * C
        for p, g in zip(pred.ravel().tolist(), gt.ravel().tolist()):
            if g == 255:
                continue
            if keep[g]:
                T[g] += 1
                TP[g] += p == g
            if 0 <= p < C and keep[p]:
                P[p] += 1
    ious, fps, fns = [], [], []
    for c in range(C):
        union = T[c] + P[c] - TP[c]
        ious.append(None if union == 0 else 100 * TP[c] / union)
        if union and c:
            fps.append((P[c] - TP[c]) / union)
            fns.append((T[c] - TP[c]) / union)
    defined = [v for v in ious if v is not None]
    return ious, sum(defined) / len(defined), sum(fps) / len(fps), sum(fns) / len(fns)


def reference_seed_prediction(keys, seed, threshold):
    stacked = np.zeros((C,) + seed.shape[1:], dtype=np.float32)
    stacked[0] = threshold
    for plane, key in zip(seed, keys[1:]):
        stacked[key] = plane
    return stacked.argmax(axis=0)


# ---------------------------------------------------------------------------------------------
# Tiny dataset
# ---------------------------------------------------------------------------------------------
def blocky_classes(rng):
    """scored_split's images: random pixels, a mask of blocky classes with a 255 top row, and an xml
    naming one or two of them (the last image's mask also holds a class missing from its xml, which
    matters for the tag rule)."""

    def draw(n, image_id):
        pixels = rng.integers(0, 255, SHAPE + (3,), dtype=np.uint8)
        tags = sorted(rng.choice(np.arange(1, C), size=1 + n % 2, replace=False).tolist())
        values = [0] + tags + ([c for c in range(1, C) if c not in tags][0:1] if n == 3 else [])
        gt = np.kron(rng.choice(values, size=(SHAPE[0] // 4, SHAPE[1] // 4)), np.ones((4, 4), dtype=np.int64)).astype(
            np.uint8
        )
        gt[0, :] = 255
        return pixels, gt, [(INFO.class_names[t], (1, 1, 6, 6), 0) for t in tags]

    return draw


def scored_split(root, domain, rng, masks=True, xml=True):
    """Images, masks and xml of IDS (blocky_classes); returns {id: (gt, tags)}."""
    return make_split(root, domain, IDS, masks, xml, info=INFO, draw=blocky_classes(rng), quality=75)


def write_masks(pred_dir, domain, split, rng):
    """Pseudo masks: the ground truth with noise, some out-of-range 7s; ring (absent from the
    fixture's ground truth) is never predicted, so its IoU is undefined. Returns {id: pred}."""
    preds = {}
    folder = output_dir(pred_dir, "pseudo-labels", TAG, domain)
    for image_id, (gt, _) in split.items():
        pred = np.where(gt == 255, 0, gt).astype(np.uint8)
        noise = rng.random(SHAPE) < 0.3
        pred[noise] = rng.choice([0, 1, 2, 3, 5, 7], size=noise.sum())  # ring never predicted
        save_mask(os.path.join(folder, image_id + ".png"), pred, INFO.palette)
        preds[image_id] = pred
    return preds


def write_seeds(pred_dir, domain, split, rng):
    """rsepm seeds over the tagged classes plus one untagged class. Returns {id: (keys, seed)}."""
    seeds = {}
    folder = output_dir(pred_dir, "predictions", TAG, domain)
    for n, (image_id, (gt, tags)) in enumerate(split.items()):
        extra = [c for c in range(1, C) if c not in tags][-1:] if n % 2 else []
        keys = np.array([0] + sorted(tags + extra))
        seed = np.zeros((len(keys) - 1,) + SHAPE, dtype=np.float32)
        for plane, key in enumerate(keys[1:]):
            seed[plane] = (gt == key) * rng.uniform(0.2, 1.0) + rng.random(SHAPE).astype(np.float32) * 0.5
        seed = (np.round(seed * 20) / 20).astype(np.float32)  # ties with the thresholds happen
        save_seed(os.path.join(folder, image_id + ".pkl"), keys, seed, "rsepm")
        seeds[image_id] = (keys, seed)
    return seeds


@pytest.fixture()
def dataset(tmp_path):
    rng = np.random.default_rng(0)
    root = str(tmp_path / "TOY")
    pred_dir = str(tmp_path / "experiments") + "/"
    return {"root": root, "pred_dir": pred_dir, "rng": rng, "split": scored_split(root, "validation", rng)}


def run(dataset, *extra, folder="pseudo-labels", domain="validation", workers=1):
    return run_main(
        evaluate,
        [
            "--root_dir",
            dataset["root"],
            "--dataset",
            "TOY",
            "--domain",
            domain,
            "--tag",
            TAG,
            "--pred_dir",
            dataset["pred_dir"],
            "--folder",
            folder,
            "--num_workers",
            str(workers),
            *extra,
        ],
    )


def check_against_reference(result, ious, miou, fp, fn):
    assert result["mIoU"] == pytest.approx(miou, rel=1e-9)
    assert result["FP"] == pytest.approx(fp, rel=1e-9)
    assert result["FN"] == pytest.approx(fn, rel=1e-9)
    for name, expected in zip(INFO.class_names, ious):
        assert result["iou"][name] == (None if expected is None else pytest.approx(expected, rel=1e-9))


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------
def test_pseudo_label_mode_end_to_end(dataset, capsys):
    preds = write_masks(dataset["pred_dir"], "validation", dataset["split"], dataset["rng"])
    result = run(dataset)
    reference = reference_scores([(preds[i], dataset["split"][i][0]) for i in IDS])
    check_against_reference(result, *reference)
    assert result["iou"]["ring"] is None  # absent from prediction and ground truth
    assert result["mode"] == "mask" and result["num_images"] == 4 and result["threshold"] is None
    assert result["sweep"] == [] and result["tag"] == TAG and result["domain"] == "validation"
    with open(evaluation_path(dataset["pred_dir"], "pseudo-labels", TAG, "validation")) as f:
        assert json.load(f) == json.loads(json.dumps(result))
    out = capsys.readouterr().out
    for name, value in zip(INFO.class_names, reference[0]):
        line = next(row for row in out.splitlines() if row.split() and row.split()[0] == name)
        assert line.split()[1] == ("n/a" if value is None else f"{value:.2f}")
    assert f"[{TAG}] mIoU = {reference[1]:.2f}%, FP = {reference[2]:.4f}, FN = {reference[3]:.4f}" in out


def test_seed_mode_sweep_and_best_threshold(dataset, capsys):
    seeds = write_seeds(dataset["pred_dir"], "validation", dataset["split"], dataset["rng"])
    result = run(dataset, folder="predictions")
    sweep = []
    for t in THRESHOLDS:
        pairs = [(reference_seed_prediction(*seeds[i], t), dataset["split"][i][0]) for i in IDS]
        sweep.append(reference_scores(pairs))
    best = max(range(len(sweep)), key=lambda r: (sweep[r][1], -r))
    assert [row["threshold"] for row in result["sweep"]] == THRESHOLDS
    for row, expected in zip(result["sweep"], sweep):
        assert (row["mIoU"], row["FP"], row["FN"]) == pytest.approx(expected[1:], rel=1e-9)
    assert result["threshold"] == THRESHOLDS[best]
    check_against_reference(result, *sweep[best])
    assert result["mode"] == "seed" and result["dialects"] == {"rsepm": 4} and not result["train_tag_rule"]
    out = capsys.readouterr().out
    assert f"[{TAG}] Threshold = {THRESHOLDS[best]:.2f}, mIoU = {sweep[best][1]:.2f}%" in out
    assert os.path.isfile(evaluation_path(dataset["pred_dir"], "predictions", TAG, "validation"))


@pytest.mark.parametrize("folder", ["pseudo-labels", "predictions"])
def test_one_and_two_workers_give_identical_results(dataset, folder):
    (write_masks if folder == "pseudo-labels" else write_seeds)(
        dataset["pred_dir"], "validation", dataset["split"], dataset["rng"]
    )
    one, two = run(dataset, folder=folder, workers=1), run(dataset, folder=folder, workers=2)
    one.pop("command"), two.pop("command")
    assert one == two


def test_train_domain_applies_the_tag_rule(tmp_path):
    rng = np.random.default_rng(1)
    data = {"root": str(tmp_path / "TOY"), "pred_dir": str(tmp_path / "exp")}
    split = scored_split(data["root"], "train", rng)
    seeds = write_seeds(data["pred_dir"], "train", split, rng)
    result = run(data, folder="predictions", domain="train")
    keeps = [[c == 0 or c in split[i][1] for c in range(C)] for i in IDS]
    row = THRESHOLDS.index(result["threshold"])
    pairs = [(reference_seed_prediction(*seeds[i], result["threshold"]), split[i][0]) for i in IDS]
    expected = reference_scores(pairs, keeps)
    assert result["train_tag_rule"]
    assert result["sweep"][row]["mIoU"] == pytest.approx(expected[1], rel=1e-9)
    check_against_reference(result, *expected)
    assert expected[1] != pytest.approx(reference_scores(pairs)[1])  # the rule changed the score


def test_train_aug_reads_and_writes_the_train_folder(tmp_path):
    rng = np.random.default_rng(2)
    data = {"root": str(tmp_path / "TOY"), "pred_dir": str(tmp_path / "exp")}
    split = scored_split(data["root"], "train_aug", rng)
    write_masks(data["pred_dir"], "train_aug", split, rng)
    assert os.path.isdir(os.path.join(data["pred_dir"], "pseudo-labels", TAG, "train"))
    result = run(data, domain="train_aug")
    assert result["num_images"] == 4
    assert os.path.isfile(os.path.join(data["pred_dir"], "pseudo-labels", TAG, "train.eval.json"))


def test_missing_predictions_error_names_count_and_files(dataset):
    write_masks(dataset["pred_dir"], "validation", dataset["split"], dataset["rng"])
    folder = output_dir(dataset["pred_dir"], "pseudo-labels", TAG, "validation")
    for image_id in IDS[1:3]:
        os.remove(os.path.join(folder, image_id + ".png"))
    with pytest.raises(EvaluationError) as error:
        run(dataset)
    message = str(error.value)
    assert "2 of 4" in message and "img_b.png" in message
    assert not os.path.exists(evaluation_path(dataset["pred_dir"], "pseudo-labels", TAG, "validation"))


def test_missing_predictions_exit_status_from_the_command_line(dataset):
    write_masks(dataset["pred_dir"], "validation", dataset["split"], dataset["rng"])
    os.remove(os.path.join(output_dir(dataset["pred_dir"], "pseudo-labels", TAG, "validation"), "img_a.png"))
    proc = subprocess.run(
        [
            sys.executable,
            "evaluate.py",
            "--root_dir",
            dataset["root"],
            "--dataset",
            "TOY",
            "--tag",
            TAG,
            "--pred_dir",
            dataset["pred_dir"],
            "--num_workers",
            "1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: 1 of 4 prediction files are missing")


def test_test_split_without_masks_is_an_error(tmp_path):
    data = {"root": str(tmp_path / "TOY"), "pred_dir": str(tmp_path / "exp")}
    split = scored_split(data["root"], "test", np.random.default_rng(3), masks=False, xml=False)
    write_masks(data["pred_dir"], "test", split, np.random.default_rng(3))
    with pytest.raises(ProjectError, match="no ground-truth masks"):
        run(data, domain="test")


def test_prediction_size_mismatch_names_the_file(dataset):
    write_masks(dataset["pred_dir"], "validation", dataset["split"], dataset["rng"])
    bad = os.path.join(output_dir(dataset["pred_dir"], "pseudo-labels", TAG, "validation"), "img_c.png")
    save_mask(bad, np.zeros((SHAPE[0], SHAPE[1] + 1), dtype=np.uint8), INFO.palette)
    path = evaluation_path(dataset["pred_dir"], "pseudo-labels", TAG, "validation")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_json(path, {"stale": True})  # an earlier result no longer describes the folder
    result = run(dataset, workers=2)  # skipped and listed; the other three are scored
    assert [f["id"] for f in result["failed"]] == ["img_c"] and result["num_images"] == 3
    assert "img_c.png" in result["failed"][0]["problem"] and "17x12" in result["failed"][0]["problem"]
    assert not os.path.exists(path)  # a score over 3 of 4 images is not written as the split's


def test_seed_size_mismatch_names_the_file(dataset):
    write_seeds(dataset["pred_dir"], "validation", dataset["split"], dataset["rng"])
    bad = os.path.join(output_dir(dataset["pred_dir"], "predictions", TAG, "validation"), "img_b.pkl")
    save_seed(bad, [0, 1], np.zeros((1, SHAPE[0] - 2, SHAPE[1]), np.float32), "rsepm")
    result = run(dataset, folder="predictions")
    assert [f["id"] for f in result["failed"]] == ["img_b"] and "img_b.pkl" in result["failed"][0]["problem"]


def test_folder_name_picks_the_mode_and_must_exist(dataset):
    # as in the original, any folder whose name contains "predictions" holds seed files
    seeds = write_seeds(dataset["pred_dir"], "validation", dataset["split"], dataset["rng"])
    os.rename(os.path.join(dataset["pred_dir"], "predictions"), os.path.join(dataset["pred_dir"], "old-predictions"))
    result = run(dataset, folder="old-predictions")
    assert result["mode"] == "seed" and len(result["sweep"]) == 15 and len(seeds) == 4
    with pytest.raises(EvaluationError, match="prediction folder not found"):
        run(dataset, folder="masks")


def test_no_nan_in_json_for_absent_classes(dataset):
    preds = write_masks(dataset["pred_dir"], "validation", dataset["split"], dataset["rng"])
    present = set(np.unique(np.concatenate([p.ravel() for p in preds.values()])).tolist())
    present |= {c for gt, _ in dataset["split"].values() for c in np.unique(gt).tolist()}
    result = run(dataset)
    for c, name in enumerate(INFO.class_names):
        assert (result["iou"][name] is None) == (c not in present)
    assert not any(isinstance(v, float) and math.isnan(v) for v in result["iou"].values())


def test_single_keeps_only_images_with_one_tag(dataset):
    write_masks(dataset["pred_dir"], "validation", dataset["split"], dataset["rng"])
    result = run(dataset, "--single", "True")
    assert result["num_images"] == sum(len(tags) == 1 for _, tags in dataset["split"].values())


def test_seg_dialect_seeds_are_scored_by_argmax(dataset):
    rng = dataset["rng"]
    folder = output_dir(dataset["pred_dir"], "predictions", TAG, "validation")
    pairs = []
    for image_id, (gt, tags) in dataset["split"].items():
        keys = np.array([0] + tags)
        seed = rng.random((len(keys),) + SHAPE).astype(np.float32)
        save_seed(os.path.join(folder, image_id + ".pkl"), keys, seed, "seg")
        pairs.append((keys[seed.argmax(axis=0)], gt))
    result = run(dataset, folder="predictions")
    assert result["dialects"] == {"seg": 4} and result["threshold"] is None and result["sweep"] == []
    check_against_reference(result, *reference_scores(pairs))


def test_evaluation_lists_every_bad_prediction_and_writes_no_partial_result(tmp_path, capsys):
    """Before: the first bad file stopped the evaluation; the others stayed unknown."""
    rng = np.random.default_rng(0)
    root = str(tmp_path / "TOY")
    data = {
        "root": root,
        "pred_dir": str(tmp_path / "experiments") + "/",
        "rng": rng,
        "split": scored_split(root, "validation", rng),
    }
    write_masks(data["pred_dir"], "validation", data["split"], data["rng"])
    folder = output_dir(data["pred_dir"], "pseudo-labels", TAG, "validation")
    bad = sorted(os.listdir(folder))[:2]
    for name in bad:
        save_mask(os.path.join(folder, name), np.zeros((SHAPE[0], SHAPE[1] + 1), np.uint8), INFO.palette)
    result = run(data)
    assert sorted(f["id"] + ".png" for f in result["failed"]) == bad
    assert result["num_images"] == len(os.listdir(folder)) - 2
    out, err = capsys.readouterr()
    assert "2 image(s) skipped:" in err and all(name[:-4] in err for name in bad)
    # no result file: a score over the other images would pass for the whole split's
    assert not os.path.exists(evaluation_path(data["pred_dir"], "pseudo-labels", TAG, "validation"))
    assert "no result file is written" in out + err
