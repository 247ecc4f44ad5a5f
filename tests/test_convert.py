"""convert_seed_to_pseudo_masks.py end to end on a tiny seed-layout dataset built in tmp_path."""

import errno
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pydensecrf.densecrf as dcrf
import pytest
from helpers import run_main
from PIL import Image
from pydensecrf.utils import unary_from_softmax

import convert_seed_to_pseudo_masks as convert
from core.errors import DatasetError, MissingFileError, OutputError, UsageError
from core.io import save_seed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TAG = "ResNet50@TOY@RS+EPM@test"
DOMAIN = "validation"
# id -> (height, width, dialect, keys); keys of rsepm seeds start with the placeholder 0.
IMAGES = {
    "img_a": (30, 40, "rsepm", [0, 1, 3]),
    "img_b": (36, 28, "rsepm", [0, 2]),
    "img_c": (30, 40, "seg", [0, 4, 5]),
    "img_d": (24, 32, "rsepm", [0]),  # no foreground: all background
    "img_e": (26, 30, "seg", [0, 2]),
    "img_f": (30, 34, "rsepm", [0, 1, 2, 5]),
}


def toy_colors():
    with open(os.path.join(ROOT, "data", "TOY.json")) as f:
        data = json.load(f)
    return [tuple(data["color_dict"][name]) for name in data["class_names"]]


def make_image_and_seed(index, height, width, dialect, keys):
    """A blocky RGB image and matching seed planes (K, H, W) with noise."""
    rng = np.random.default_rng(index)
    image = np.full((height, width, 3), 60, np.uint8)
    num_planes = len(keys) - 1 if dialect == "rsepm" else len(keys)
    seed = rng.uniform(0, 0.3, (num_planes, height, width)).astype(np.float32)
    for k in range(num_planes):
        y, x = rng.integers(0, height - 10), rng.integers(0, width - 10)
        image[y : y + 10, x : x + 10] = rng.integers(0, 256, 3)
        seed[k, y + 2 : y + 8, x + 2 : x + 8] += 0.6
    if dialect == "seg":
        seed /= seed.sum(axis=0, keepdims=True)
    return image, np.clip(seed, 0, 1)


@pytest.fixture
def dataset(tmp_path):
    """Images under root/validation/image, seeds under pred/predictions/TAG/validation."""
    root, pred = tmp_path / "TOY", tmp_path / "pred"
    (root / DOMAIN / "image").mkdir(parents=True)
    for index, (image_id, (h, w, dialect, keys)) in enumerate(IMAGES.items()):
        image, seed = make_image_and_seed(index, h, w, dialect, keys)
        Image.fromarray(image).save(root / DOMAIN / "image" / f"{image_id}.jpg", quality=95)
        save_seed(pred / "predictions" / TAG / DOMAIN / f"{image_id}.pkl", keys, seed, dialect)
    return {"root": root, "pred": pred, "out": pred / "pseudo-labels" / TAG / DOMAIN}


def argv(data, *extra):
    return [
        "--root_dir",
        str(data["root"]),
        "--dataset",
        "TOY",
        "--domain",
        DOMAIN,
        "--tag",
        TAG,
        "--pred_dir",
        str(data["pred"]),
        "--gpus",
        "0",
        "--num_workers",
        "1",
        *extra,
    ]


def expected_mask(data, image_id):
    """Direct pydensecrf computation from the files: the independent answer for one image."""
    image = np.array(Image.open(data["root"] / DOMAIN / "image" / f"{image_id}.jpg").convert("RGB"))
    with open(data["pred"] / "predictions" / TAG / DOMAIN / f"{image_id}.pkl", "rb") as f:
        stored = pickle.load(f)  # test data we wrote ourselves
    keys, seed = stored["keys"], stored["seed"]
    if stored["dialect"] == "rsepm":
        if len(keys) == 1:
            return np.zeros(image.shape[:2], np.uint8)
        seed = np.concatenate([(1 - seed.max(axis=0, keepdims=True)) ** 2.0, seed])
    n, h, w = seed.shape
    crf = dcrf.DenseCRF2D(w, h, n)
    crf.setUnaryEnergy(unary_from_softmax(seed))
    crf.addPairwiseGaussian(sxy=1, compat=3)
    crf.addPairwiseBilateral(sxy=67, srgb=3, rgbim=np.ascontiguousarray(image), compat=4)
    return keys[np.array(crf.inference(10)).reshape(n, h, w).argmax(axis=0)].astype(np.uint8)


def output_bytes(data):
    return {name: (data["out"] / name).read_bytes() for name in sorted(os.listdir(data["out"]))}


def test_end_to_end_palette_and_indices(dataset):
    summary = run_main(convert, argv(dataset))
    assert summary["written"] == len(IMAGES) and summary["skipped_existing"] == 0 and not summary["failed"]
    assert sorted(os.listdir(dataset["out"])) == sorted(f"{i}.png" for i in IMAGES)
    colors = toy_colors()
    seen = set()
    for image_id, (h, w, _, keys) in IMAGES.items():
        with Image.open(dataset["out"] / f"{image_id}.png") as png:
            assert png.mode == "P"
            palette = png.getpalette()
            mask = np.array(png)
        for index, color in enumerate(colors):
            assert tuple(palette[3 * index : 3 * index + 3]) == color
        assert tuple(palette[3 * 255 : 3 * 256]) == (224, 224, 192)
        assert mask.shape == (h, w)
        np.testing.assert_array_equal(mask, expected_mask(dataset, image_id))
        assert set(np.unique(mask)) <= set(keys)
        seen |= set(np.unique(mask).tolist())
    assert seen == {0, 1, 2, 3, 4, 5}  # every class shows up somewhere: the mapping was exercised


def test_two_workers_give_identical_outputs(dataset):
    run_main(convert, argv(dataset))
    single = output_bytes(dataset)
    for name in single:
        os.remove(dataset["out"] / name)
    summary = run_main(convert, argv(dataset, "--num_workers", "2"))
    assert summary["written"] == len(IMAGES)
    assert output_bytes(dataset) == single


def test_resume_writes_only_missing_masks(dataset):
    run_main(convert, argv(dataset))
    before = output_bytes(dataset)
    stamps = {n: os.stat(dataset["out"] / n).st_mtime_ns for n in before}
    os.remove(dataset["out"] / "img_c.png")
    summary = run_main(convert, argv(dataset, "--num_workers", "2"))
    assert summary["written"] == 1 and summary["skipped_existing"] == len(IMAGES) - 1
    assert output_bytes(dataset) == before
    for name, stamp in stamps.items():
        if name != "img_c.png":
            assert os.stat(dataset["out"] / name).st_mtime_ns == stamp


def test_interrupted_run_leaves_no_partial_file_and_rerun_completes(dataset, monkeypatch):
    run_main(convert, argv(dataset))
    uninterrupted = output_bytes(dataset)
    for name in uninterrupted:
        os.remove(dataset["out"] / name)

    real_save = Image.Image.save
    calls = []

    def dying_save(self, fp, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # half a PNG reaches the file, then the disk is full: the run stops
            fp.write(b"\x89PNG\r\n\x1a\n partial")
            raise OSError(errno.ENOSPC, "simulated crash while writing")
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", dying_save)
    with pytest.raises(OutputError) as exit_info:
        run_main(convert, argv(dataset))
    assert "disk full" in str(exit_info.value)
    assert len(os.listdir(dataset["out"])) == 2  # the two finished masks, no temporary or partial file
    assert all(name.endswith(".png") and not name.startswith(".") for name in os.listdir(dataset["out"]))

    monkeypatch.setattr(Image.Image, "save", real_save)
    summary = run_main(convert, argv(dataset))
    assert summary["written"] == len(IMAGES) - 2 and summary["skipped_existing"] == 2
    assert output_bytes(dataset) == uninterrupted


class RunsCode:
    """A pickle that would create a file when loaded by an unsafe unpickler."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_bad_inputs_are_counted_listed_and_fail_the_run(dataset, tmp_path):
    seeds = dataset["pred"] / "predictions" / TAG / DOMAIN
    data = (seeds / "img_a.pkl").read_bytes()
    (seeds / "img_a.pkl").write_bytes(data[: len(data) // 2])  # truncated
    marker = tmp_path / "code_was_run"
    (seeds / "img_b.pkl").write_bytes(pickle.dumps(RunsCode(str(marker))))  # not an array
    save_seed(seeds / "img_c.pkl", [0, 4, 5], np.full((3, 29, 40), 0.3, np.float32), "seg")  # wrong size
    os.remove(seeds / "img_e.pkl")  # missing
    (dataset["root"] / DOMAIN / "image" / "img_f.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")  # corrupt

    summary = run_main(convert, argv(dataset, "--num_workers", "2"))
    assert not marker.exists()
    problems = {f["id"]: f["problem"] for f in summary["failed"]}
    assert sorted(problems) == ["img_a", "img_b", "img_c", "img_e", "img_f"]
    assert "img_a.pkl" in problems["img_a"] and "truncated" in problems["img_a"]
    assert "img_b.pkl" in problems["img_b"] and "refusing" in problems["img_b"]
    assert "img_c.pkl" in problems["img_c"] and "40x29" in problems["img_c"] and "40x30" in problems["img_c"]
    assert "img_e.pkl" in problems["img_e"] and "not found" in problems["img_e"]
    assert "img_f.jpg" in problems["img_f"]
    assert summary["written"] == 1 and os.listdir(dataset["out"]) == ["img_d.png"]

    result = subprocess.run(
        [sys.executable, "convert_seed_to_pseudo_masks.py", *argv(dataset)], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "5 image(s) skipped:" in result.stderr
    for image_id in problems:
        assert f"  {image_id}: " in result.stderr
    assert not marker.exists()


def test_missing_predictions_folder_is_an_error(dataset):
    with pytest.raises(MissingFileError) as exit_info:
        run_main(convert, argv(dataset, "--tag", "NoSuchTag"))
    assert os.path.join("predictions", "NoSuchTag") in str(exit_info.value)


def test_missing_split_is_an_error(dataset):
    with pytest.raises(DatasetError) as exit_info:
        run_main(convert, argv(dataset, "--domain", "train"))
    assert "train" in str(exit_info.value)


def test_argmax_mode_needs_bg_th_and_matches_brute_force(dataset):
    with pytest.raises(UsageError, match="--bg_th"):
        run_main(convert, argv(dataset, "--mode", "argmax"))
    run_main(convert, argv(dataset, "--mode", "argmax", "--bg_th", "0.4"))
    for image_id, (h, w, dialect, keys) in IMAGES.items():
        with open(dataset["pred"] / "predictions" / TAG / DOMAIN / f"{image_id}.pkl", "rb") as f:
            seed = pickle.load(f)["seed"]
        mask = np.array(Image.open(dataset["out"] / f"{image_id}.png"))
        planes = seed if dialect == "seg" else np.concatenate([np.full((1, h, w), 0.4, np.float32), seed])
        for y in range(0, h, 3):
            for x in range(0, w, 3):
                best = max(range(len(planes)), key=lambda c: (planes[c, y, x], -c))
                assert mask[y, x] == keys[best]


def test_single_converts_only_images_with_one_tag(dataset):
    xml_dir = dataset["root"] / DOMAIN / "xml"
    xml_dir.mkdir()
    for image_id, (h, w, _, _) in IMAGES.items():
        names = ["disc"] if image_id in ("img_b", "img_e") else ["disc", "ring"]
        objects = "".join(
            f"<object><name>{n}</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
            f"<xmax>9</xmax><ymax>9</ymax></bndbox></object>"
            for n in names
        )
        (xml_dir / f"{image_id}.xml").write_text(
            f"<annotation><size><width>{w}</width><height>{h}</height></size>{objects}</annotation>"
        )
    summary = run_main(convert, argv(dataset, "--single", "True"))
    assert summary["written"] == 2 and sorted(os.listdir(dataset["out"])) == ["img_b.png", "img_e.png"]


def test_files_without_dialect_follow_the_ms_tag_rule(dataset):
    """Seed files of the original scripts carry no dialect: tags with 'MS' mean seg."""
    tag = "ResNet101@TOY@RS+EPM@MS@test"
    folder = dataset["pred"] / "predictions" / tag / DOMAIN
    folder.mkdir(parents=True)
    for index, (image_id, (h, w, _, _)) in enumerate(IMAGES.items()):
        _, seed = make_image_and_seed(index, h, w, "seg", [0, 3])
        with open(folder / f"{image_id}.pkl", "wb") as f:
            pickle.dump({"keys": np.array([0, 3]), "seed": seed}, f)
    run_main(convert, argv(dataset, "--tag", tag, "--mode", "argmax", "--bg_th", "0.99"))
    out = dataset["pred"] / "pseudo-labels" / tag / DOMAIN
    for index, (image_id, (h, w, _, _)) in enumerate(IMAGES.items()):
        _, seed = make_image_and_seed(index, h, w, "seg", [0, 3])
        # seg: no bg_th plane, so the 0.99 background would otherwise have swallowed everything
        np.testing.assert_array_equal(np.array(Image.open(out / f"{image_id}.png")), np.where(seed[1] > seed[0], 3, 0))
