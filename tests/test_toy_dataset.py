"""tools/builders/make_toy_dataset.py: layout, determinism, masks, tags and resumption of the TOY dataset."""

import os
import re
import shutil
import xml.etree.ElementTree as ET

import cv2
import numpy as np
import pytest

from core.dataset_layout import DatasetInfo, SeedLayout, parse_xml_tags, read_image
from core.errors import DatasetError
from core.io import read_mask
from tools.args import cli
from tools.builders.make_toy_dataset import get_args_parser, main, make_toy_dataset, visible_layout

SMALL = dict(num_train=5, num_train_aug=9, num_validation=5, num_test=3, min_size=64, max_size=112)
SPLITS = ("train", "train_aug", "validation", "test")
INFO = DatasetInfo("TOY")


def _files(root):
    """{relative path: bytes} of every file under root."""
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def _stems(folder, ext):
    return sorted(n[: -len(ext)] for n in os.listdir(folder) if n.endswith(ext))


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy") / "TOY"
    summary = make_toy_dataset(root, seed=0, progress=False, **SMALL)
    return root, summary


def _labelled_ids(root, split):
    return _stems(os.path.join(root, split, "image"), ".jpg")


def test_layout_and_counts(toy):
    root, summary = toy
    assert sorted(os.listdir(root)) == ["test", "toy_config.json", "train", "train_aug", "validation"]
    counts = {"train": 5, "train_aug": 9, "validation": 5, "test": 3}
    for split in SPLITS:
        folders = ["image"] if split == "test" else ["image", "mask", "xml"]
        assert sorted(os.listdir(root / split)) == folders
        ids = _stems(root / split / "image", ".jpg")
        assert len(ids) == counts[split] == summary[split]["images"]
        assert all(re.fullmatch(r"toy_\d{6}", i) for i in ids)
        if split != "test":
            assert _stems(root / split / "mask", ".png") == ids
            assert _stems(root / split / "xml", ".xml") == ids
    # no id is shared between train_aug, validation and test
    pools = [set(_stems(root / s / "image", ".jpg")) for s in ("train_aug", "validation", "test")]
    assert not (pools[0] & pools[1] or pools[0] & pools[2] or pools[1] & pools[2])
    # and no two distinct ids share an image: each pool draws from its own random streams
    images = [data for split in ("train_aug", "validation", "test") for data in _files(root / split / "image").values()]
    assert len(set(images)) == len(images) == 9 + 5 + 3


def test_train_is_a_prefix_of_train_aug_with_identical_files(toy):
    root, _ = toy
    train = _files(root / "train")
    train_aug = _files(root / "train_aug")
    assert set(train) < set(train_aug)
    assert all(train[k] == train_aug[k] for k in train)


def test_same_seed_gives_identical_bytes_other_seed_differs(toy, tmp_path):
    root, _ = toy
    make_toy_dataset(tmp_path / "again", seed=0, progress=False, **SMALL)
    make_toy_dataset(tmp_path / "other", seed=1, progress=False, **SMALL)
    first, again, other = _files(root), _files(tmp_path / "again"), _files(tmp_path / "other")
    assert first == again
    images = [k for k in first if k.endswith(".jpg")]
    assert images and all(first[k] != other[k] for k in images)


def test_an_image_does_not_depend_on_the_split_sizes(toy, tmp_path):
    root, _ = toy
    make_toy_dataset(
        tmp_path / "sizes",
        seed=0,
        progress=False,
        num_train=2,
        num_train_aug=12,
        num_validation=1,
        num_test=4,
        min_size=64,
        max_size=112,
    )
    first, second = _files(root), _files(tmp_path / "sizes")
    shared = (set(first) & set(second)) - {"toy_config.json"}
    assert len(shared) == 2 * 3 + 9 * 3 + 1 * 3 + 3  # train, train_aug, validation, test
    assert all(first[k] == second[k] for k in shared)


def test_masks_hold_class_indices_and_match_image_sizes(toy):
    root, _ = toy
    for split in ("train_aug", "validation"):
        for image_id in _labelled_ids(root, split):
            image = read_image(str(root / split / "image" / f"{image_id}.jpg"))
            mask = read_mask(str(root / split / "mask" / f"{image_id}.png"))
            assert mask.shape == image.shape[:2]
            assert 64 <= mask.shape[0] <= 112 and 64 <= mask.shape[1] <= 112
            assert set(np.unique(mask)) <= set(range(6)) | {255}
            assert (mask == 255).any() and (mask == 0).any()


def _neighbour_pairs(mask):
    """Pairs of 8-neighbouring pixels as two flat arrays (a, b), brute force by slicing."""
    pairs = [
        (mask[:, :-1], mask[:, 1:]),
        (mask[:-1, :], mask[1:, :]),
        (mask[:-1, :-1], mask[1:, 1:]),
        (mask[:-1, 1:], mask[1:, :-1]),
    ]
    return np.concatenate([a.ravel() for a, _ in pairs]), np.concatenate([b.ravel() for _, b in pairs])


def test_every_class_border_is_covered_by_a_thin_ignore_band(toy):
    root, _ = toy
    touching = band = 0
    for image_id in _labelled_ids(root, "train_aug"):
        mask = read_mask(str(root / "train_aug" / "mask" / f"{image_id}.png"))
        a, b = _neighbour_pairs(mask)
        labelled = (a != 255) & (b != 255)
        # no two touching labelled pixels carry different classes: 255 separates every border
        assert np.all(a[labelled] == b[labelled]), image_id
        # the band is thin (about 2 px): nearly every 255 pixel touches a labelled pixel; only
        # where borders crowd (gaps of 1-3 px between objects) does the band merge into patches
        ignore = mask == 255
        padded = np.pad(~ignore, 1)
        touches_label = np.zeros_like(ignore)
        for dy in range(3):
            for dx in range(3):
                touches_label |= padded[dy : dy + mask.shape[0], dx : dx + mask.shape[1]]
        touching += touches_label[ignore].sum()
        band += ignore.sum()
        assert ignore.mean() < 0.3, image_id
    assert touching / band > 0.9


def test_xml_tags_equal_the_classes_visible_in_the_mask(toy):
    root, _ = toy
    truncated = {True: [], False: []}  # box touches the image border -> flags
    for split in ("train", "train_aug", "validation"):
        for image_id in _labelled_ids(root, split):
            xml_path = root / split / "xml" / f"{image_id}.xml"
            mask = read_mask(str(root / split / "mask" / f"{image_id}.png"))
            tags = parse_xml_tags(str(xml_path), INFO.class_dict)
            present = set(np.unique(mask).tolist()) - {0, 255}
            assert tags and set(tags) == present and len(tags) == len(set(tags)), image_id

            annotation = ET.parse(xml_path).getroot()
            assert annotation.findtext("filename") == f"{image_id}.jpg"
            height, width = mask.shape
            assert (
                int(annotation.findtext("size/width")),
                int(annotation.findtext("size/height")),
                int(annotation.findtext("size/depth")),
            ) == (width, height, 3)
            # 1-based inclusive boxes; the boxes of a class cover every pixel of that class
            covered = np.zeros((6,) + mask.shape, bool)
            for obj in annotation.findall("object"):
                assert obj.findtext("difficult") == "0" and obj.findtext("pose") == "Unspecified"
                x0, y0, x1, y1 = (int(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax"))
                assert 1 <= x0 < x1 <= width and 1 <= y0 < y1 <= height
                at_border = x0 == 1 or y0 == 1 or x1 == width or y1 == height
                truncated[at_border].append(int(obj.findtext("truncated")))
                covered[INFO.class_dict[obj.findtext("name")], y0 - 1 : y1, x0 - 1 : x1] = True
            for c in present:
                assert covered[c][mask == c].all(), (image_id, c)
    # `truncated` marks objects cut by the image border (an occluded one may not touch it)
    assert truncated[True] and np.mean(truncated[True]) >= 0.8
    assert truncated[False] and np.mean(truncated[False]) <= 0.1


def test_test_split_has_images_only(toy):
    root, _ = toy
    assert sorted(os.listdir(root / "test")) == ["image"]
    layout = SeedLayout(str(root), "test", INFO)
    assert not layout.has_masks and not layout.has_xml
    assert all(layout.read_tags(i) == [] for i in layout.ids)


def test_seed_layout_reads_every_split(toy):
    root, _ = toy
    for split in SPLITS:
        labelled = split != "test"
        layout = SeedLayout(str(root) + "/", split, INFO, require_masks=labelled, require_xml=labelled)
        assert layout.ids == _stems(root / split / "image", ".jpg")
        for image_id in layout.ids:
            image = layout.read_image(image_id)
            assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
            if labelled:
                mask = layout.read_mask(image_id, image.shape[:2])
                assert set(layout.read_tags(image_id)) == set(np.unique(mask).tolist()) - {0, 255}


def test_classes_are_separable_by_colour(toy):
    """Design check for weak supervision: the mean hue of a class region alone names the class."""
    root, _ = toy
    hues = {1: 8, 2: 120, 3: 54, 4: 220, 5: 296}  # degrees, independent of the generator's table
    right = total = 0
    for image_id in _labelled_ids(root, "train_aug"):
        image = read_image(str(root / "train_aug" / "image" / f"{image_id}.jpg"))
        mask = read_mask(str(root / "train_aug" / "mask" / f"{image_id}.png"))
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV_FULL).astype(np.float64)
        angle = hsv[..., 0] / 256 * 2 * np.pi
        for c in set(np.unique(mask).tolist()) - {0, 255}:
            region = mask == c
            mean = np.degrees(np.arctan2(np.sin(angle[region]).mean(), np.cos(angle[region]).mean())) % 360
            distance = {k: min(abs(mean - h), 360 - abs(mean - h)) for k, h in hues.items()}
            right += min(distance, key=distance.get) == c
            total += 1
    assert total >= 15 and right / total >= 0.9


def test_rerun_skips_finished_files_and_restores_missing_ones(toy, tmp_path):
    root, _ = toy
    copy = tmp_path / "TOY"
    shutil.copytree(root, copy)
    before = _files(copy)
    stamps = {k: os.stat(copy / k).st_mtime_ns for k in before}
    os.remove(copy / "train" / "mask" / "toy_000001.png")
    os.remove(copy / "validation" / "image" / "toy_400002.jpg")
    make_toy_dataset(copy, seed=0, progress=False, **SMALL)
    assert _files(copy) == before
    untouched = [k for k in before if not k.endswith(("toy_000001.png", "toy_400002.jpg"))]
    assert all(os.stat(copy / k).st_mtime_ns == stamps[k] for k in untouched)
    assert not [n for _, _, names in os.walk(copy) for n in names if n.endswith(".tmp")]


def test_rerun_with_other_settings_is_refused(toy, tmp_path):
    root, _ = toy
    copy = tmp_path / "TOY"
    shutil.copytree(root, copy)
    with pytest.raises(DatasetError, match=r"toy_config\.json.*seed"):
        make_toy_dataset(copy, seed=3, progress=False, **SMALL)
    os.remove(copy / "toy_config.json")
    with pytest.raises(DatasetError, match=r"holds dataset splits but no toy_config\.json"):
        make_toy_dataset(copy, seed=0, progress=False, **SMALL)


def _square(height, width, y0, x0, size, cls=2):
    footprint = np.zeros((height, width), bool)
    footprint[y0 : y0 + size, x0 : x0 + size] = True
    return {"class": cls, "footprint": footprint}


def test_fully_hidden_object_is_removed_before_tagging():
    hidden = _square(40, 40, 10, 10, 8, cls=1)
    cover = _square(40, 40, 5, 5, 20, cls=3)
    sliver = _square(40, 40, 30, 30, 3, cls=5)  # 3x3: a single interior pixel once banded
    kept, instances, band = visible_layout([hidden, cover, sliver], 40, 40)
    assert [o["class"] for o in kept] == [3]
    assert instances.max() == 1 and (instances == 1).sum() == 400
    # band: the outer ring of the 20x20 square and the ring just outside it
    assert band.sum() == 22 * 22 - 18 * 18


def test_cli_prints_summary_and_rejects_bad_settings(tmp_path, capsys):
    main(
        get_args_parser().parse_args(
            [
                "--out",
                str(tmp_path / "cli"),
                "--num_train",
                "1",
                "--num_train_aug",
                "2",
                "--num_validation",
                "1",
                "--num_test",
                "1",
                "--min_size",
                "64",
                "--max_size",
                "64",
            ]
        )
    )
    out = capsys.readouterr().out
    assert "train_aug" in out and "disc" in out
    assert SeedLayout(str(tmp_path / "cli"), "train_aug", INFO).ids == ["toy_000000", "toy_000001"]
    with pytest.raises(SystemExit) as raised:  # a UsageError: status 2 and the usage line
        cli(main, get_args_parser(), ["--out", str(tmp_path / "bad"), "--num_train", "3", "--num_train_aug", "2"])
    assert raised.value.code == 2 and "train (3) must not exceed train_aug (2)" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "bad")
