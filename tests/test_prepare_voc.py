"""tools/builders/prepare_voc.py on tiny fixtures in the official VOC 2012 / SBD layouts."""

import os

import numpy as np
import pytest
import scipy.io
from mini_data import sixteen_bit, write_jpeg
from PIL import Image

from core.dataset_layout import DatasetInfo, SeedLayout, parse_xml_tags
from tools.args import cli
from tools.builders.build_steps import PrepareError
from tools.builders.prepare_voc import build_item, build_split, get_args_parser, main

INFO = DatasetInfo("VOC")
# id -> (height, width, classes); the classes drawn in the mask and listed in the xml
TRAIN = {"2007_000032": (30, 40, [1, 15]), "2007_000039": (36, 48, [20])}
VAL = {"2007_000063": (32, 44, [8, 12]), "2007_000068": (28, 40, [3])}
SBD_ONLY = {"2008_000002": (34, 46, [7, 19]), "2008_000003": (30, 42, [13])}
TEST = {"2008_000001": (30, 40), "2008_000004": (26, 38)}


def voc_colormap(n):
    """PASCAL colormap written out bit by bit (independent of core.io.make_palette)."""
    colors = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colors.append((r, g, b))
    return colors


def class_mask(height, width, classes, borders=True):
    """Two rectangles of the given classes; VOC-like 255 borders where labels change."""
    mask = np.zeros((height, width), np.uint8)
    mask[3 : height // 2 + 2, 4 : width // 2 + 3] = classes[0]
    if len(classes) > 1:
        mask[height // 2 + 4 : height - 3, width // 2 + 5 : width - 2] = classes[1]
    if borders:
        edge = np.zeros(mask.shape, bool)
        edge[:-1] |= mask[:-1] != mask[1:]
        edge[:, :-1] |= mask[:, :-1] != mask[:, 1:]
        mask[edge] = 255
    return mask


def write_palette_png(path, mask, palette_colors):
    """Palette PNG whose indices are `mask`; the colours are whatever `palette_colors` says."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = Image.fromarray(mask, mode="L")
    flat = [v for rgb in palette_colors for v in rgb]
    image.putpalette(flat + [0] * (768 - len(flat)))
    assert image.mode == "P"
    image.save(path)


def write_grey_png(path, mask):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(mask, mode="L").save(path)


def write_voc_xml(path, image_id, height, width, classes):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    objects = "".join(
        f"<object><name>{INFO.class_names[c]}</name><difficult>0</difficult>"
        f"<bndbox><xmin>{2 + k}</xmin><ymin>3</ymin><xmax>{width - 1}</xmax><ymax>{height - 2}</ymax></bndbox>"
        f"</object>"
        for k, c in enumerate(classes)
    )
    with open(path, "w") as f:
        f.write(
            f"<annotation><folder>VOC2012</folder><filename>{image_id}.jpg</filename>"
            f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"
            f"{objects}</annotation>"
        )


def write_list(path, ids):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("".join(i + "\n" for i in ids))


def write_sbd_mat(path, segmentation):
    """An SBD dataset/cls/*.mat: struct GTcls with Boundaries (20x1 cell of sparse matrices),
    Segmentation (uint8 H x W) and CategoriesPresent, as in the SBD release."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    boundaries = np.empty((20, 1), dtype=object)
    for k in range(20):
        boundaries[k, 0] = scipy.sparse.csc_matrix(segmentation == k + 1, dtype=bool)
    present = np.unique(segmentation[(segmentation > 0) & (segmentation < 255)]).astype(np.uint8).reshape(-1, 1)
    scipy.io.savemat(
        path, {"GTcls": {"Boundaries": boundaries, "Segmentation": segmentation, "CategoriesPresent": present}}
    )


# Deliberately not the VOC colours: a reader that maps colours to classes gets it wrong.
SCRAMBLED = [((37 * i) % 256, (91 * i + 17) % 256, (53 * i + 5) % 256) for i in range(256)]


@pytest.fixture
def voc(tmp_path):
    """Official-layout inputs; returns paths and the expected mask of every id by source."""
    devkit = tmp_path / "VOCtrainval" / "VOCdevkit" / "VOC2012"
    expected = {"voc": {}, "aug": {}, "mat": {}}
    for seed, (image_id, (h, w, classes)) in enumerate({**TRAIN, **VAL, **SBD_ONLY}.items()):
        write_jpeg(str(devkit / "JPEGImages" / f"{image_id}.jpg"), h, w, seed, quality=90)
        write_voc_xml(str(devkit / "Annotations" / f"{image_id}.xml"), image_id, h, w, classes)
        if image_id not in SBD_ONLY:
            mask = class_mask(h, w, classes)
            write_palette_png(str(devkit / "SegmentationClass" / f"{image_id}.png"), mask, SCRAMBLED)
            expected["voc"][image_id] = mask
        # SegmentationClassAug holds every VOC trainval + SBD id; make it differ from the VOC masks
        aug = class_mask(h, w, classes, borders=False)
        aug[0, :] = classes[-1]
        write_grey_png(str(tmp_path / "sbd_aug" / "SegmentationClassAug" / f"{image_id}.png"), aug)
        expected["aug"][image_id] = aug
        seg = class_mask(h, w, classes, borders=False)
        seg[-1, :] = classes[0]
        write_sbd_mat(str(tmp_path / "benchmark_RELEASE" / "dataset" / "cls" / f"{image_id}.mat"), seg)
        expected["mat"][image_id] = seg
    write_list(str(devkit / "ImageSets" / "Segmentation" / "train.txt"), list(TRAIN))
    write_list(str(devkit / "ImageSets" / "Segmentation" / "val.txt"), list(VAL))
    sbd = tmp_path / "benchmark_RELEASE" / "dataset"
    # SBD's own split mixes VOC val ids in: they must be left out of train_aug
    write_list(str(sbd / "train.txt"), ["2008_000002", "2007_000063", "2007_000032"])
    write_list(str(sbd / "val.txt"), ["2008_000003", "2007_000039"])
    test = tmp_path / "VOC2012test" / "VOCdevkit" / "VOC2012"
    for seed, (image_id, (h, w)) in enumerate(TEST.items()):
        write_jpeg(str(test / "JPEGImages" / f"{image_id}.jpg"), h, w, 100 + seed, quality=90)
    write_list(str(test / "ImageSets" / "Segmentation" / "test.txt"), list(TEST))
    return {
        "root": tmp_path,
        "devkit": devkit,
        "aug": tmp_path / "sbd_aug",
        "sbd": tmp_path / "benchmark_RELEASE",
        "test": tmp_path / "VOC2012test",
        "out": tmp_path / "VOC2012",
        "expected": expected,
    }


def argv(voc, *extra, sbd="aug", test=True):
    args = ["--devkit", str(voc["devkit"]), "--out", str(voc["out"]) + "/", "--num_workers", "0"]
    if sbd:
        args += ["--sbd", str(voc[sbd])]
    if test:
        args += ["--test_devkit", str(voc["test"])]
    return args + list(extra)


def files(folder):
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def read_png_indices(path):
    with Image.open(path) as image:
        assert image.mode == "P", f"{path} is {image.mode}, expected a palette PNG"
        return np.array(image), image.getpalette()


def check_split(out, split, ids, expected_masks, tags):
    split_dir = out / split
    assert files(split_dir / "image") == sorted(f"{i}.jpg" for i in ids)
    assert files(split_dir / "mask") == sorted(f"{i}.png" for i in ids)
    assert files(split_dir / "xml") == sorted(f"{i}.xml" for i in ids)
    layout = SeedLayout(str(out), split, INFO, require_masks=True, require_xml=True)
    assert layout.ids == sorted(ids)
    for image_id in ids:
        indices, palette = read_png_indices(split_dir / "mask" / f"{image_id}.png")
        np.testing.assert_array_equal(indices, expected_masks[image_id], err_msg=f"{split}/{image_id}")
        assert [tuple(palette[3 * i : 3 * i + 3]) for i in range(21)] == voc_colormap(21)
        assert layout.read_image(image_id).shape[:2] == indices.shape
        assert layout.read_tags(image_id) == tags[image_id]


def test_builds_seed_layout_from_segmentation_class_aug(voc, capsys):
    assert main(get_args_parser().parse_args(argv(voc)))
    out, exp = voc["out"], voc["expected"]
    tags = {i: c for i, (_, _, c) in {**TRAIN, **VAL, **SBD_ONLY}.items()}
    check_split(out, "train", list(TRAIN), exp["voc"], tags)
    check_split(out, "validation", list(VAL), exp["voc"], tags)
    # (SBD ids + VOC train) - VOC val; the VOC mask wins where it exists (255 borders kept)
    train_aug = {**{i: exp["voc"][i] for i in TRAIN}, **{i: exp["aug"][i] for i in SBD_ONLY}}
    check_split(out, "train_aug", list(train_aug), train_aug, tags)
    assert 255 in exp["voc"]["2007_000032"] and 255 not in exp["aug"]["2008_000002"]
    # test: images only
    assert files(out / "test") == ["image"]
    assert files(out / "test" / "image") == sorted(f"{i}.jpg" for i in TEST)
    layout = SeedLayout(str(out), "test", INFO)
    assert layout.read_tags("2008_000001") == []
    # images and xml are byte copies of the inputs
    src = voc["devkit"] / "JPEGImages" / "2008_000002.jpg"
    assert (out / "train_aug" / "image" / "2008_000002.jpg").read_bytes() == src.read_bytes()
    captured = capsys.readouterr()
    assert "official" in captured.out and "warning" in captured.err  # tiny counts: warnings, no error


def test_train_aug_list_file_is_used_when_present(voc):
    # DeepLab-style pair list, as distributed with SegmentationClassAug
    with open(voc["aug"] / "train_aug.txt", "w") as f:
        f.write(
            "/JPEGImages/2008_000003.jpg /SegmentationClassAug/2008_000003.png\n"
            "/JPEGImages/2007_000039.jpg /SegmentationClassAug/2007_000039.png\n"
        )
    assert main(get_args_parser().parse_args(argv(voc, test=False)))
    exp = voc["expected"]
    check_split(
        voc["out"],
        "train_aug",
        ["2008_000003", "2007_000039"],
        {"2008_000003": exp["aug"]["2008_000003"], "2007_000039": exp["voc"]["2007_000039"]},
        {"2008_000003": [13], "2007_000039": [20]},
    )
    assert not os.path.exists(voc["out"] / "test")


def test_builds_train_aug_from_original_sbd_mat_files(voc):
    assert main(get_args_parser().parse_args(argv(voc, sbd="sbd", test=False)))
    exp = voc["expected"]
    # SBD train + val = 2008_000002, 2007_000063 (VOC val: dropped), 2007_000032, 2008_000003, 2007_000039
    train_aug = {**{i: exp["voc"][i] for i in TRAIN}, **{i: exp["mat"][i] for i in SBD_ONLY}}
    tags = {i: c for i, (_, _, c) in {**TRAIN, **SBD_ONLY}.items()}
    check_split(voc["out"], "train_aug", list(train_aug), train_aug, tags)
    mat = scipy.io.loadmat(str(voc["sbd"] / "dataset" / "cls" / "2008_000002.mat"))
    assert mat["GTcls"].shape == (1, 1) and "Segmentation" in mat["GTcls"].dtype.names


def test_sbd_image_missing_from_voc_falls_back_to_sbd_img(voc):
    src = voc["devkit"] / "JPEGImages" / "2008_000003.jpg"
    os.makedirs(voc["sbd"] / "dataset" / "img")
    os.replace(src, voc["sbd"] / "dataset" / "img" / "2008_000003.jpg")
    assert main(get_args_parser().parse_args(argv(voc, sbd="sbd", test=False)))
    assert (voc["out"] / "train_aug" / "image" / "2008_000003.jpg").read_bytes() == (
        voc["sbd"] / "dataset" / "img" / "2008_000003.jpg"
    ).read_bytes()


def snapshot(folder):
    return {
        os.path.join(d, f): (os.stat(os.path.join(d, f)).st_mtime_ns, open(os.path.join(d, f), "rb").read())
        for d, _, names in os.walk(folder)
        for f in names
    }


def test_second_run_writes_nothing_and_changes_nothing(voc):
    first = main(get_args_parser().parse_args(argv(voc)))
    # train: 2 images x (jpg, png, xml); test: images only
    assert first["train"]["written"] == 6 and first["test"]["written"] == 2
    before = snapshot(voc["out"])
    second = main(get_args_parser().parse_args(argv(voc)))
    assert all(row["written"] == 0 for row in second.values())
    assert snapshot(voc["out"]) == before
    # a deleted output file is rebuilt, and only that one
    os.remove(voc["out"] / "validation" / "mask" / "2007_000068.png")
    third = main(get_args_parser().parse_args(argv(voc)))
    assert third["validation"]["written"] == 1 and snapshot(voc["out"]) == before | {
        k: v for k, v in snapshot(voc["out"]).items() if k.endswith("2007_000068.png")
    }


def test_link_modes(voc):
    assert main(get_args_parser().parse_args(argv(voc, "--link", "hardlink", test=False)))
    src = voc["devkit"] / "JPEGImages" / "2007_000032.jpg"
    dst = voc["out"] / "train" / "image" / "2007_000032.jpg"
    assert os.stat(dst).st_ino == os.stat(src).st_ino and not os.path.islink(dst)
    xml = voc["out"] / "train_aug" / "xml" / "2008_000002.xml"
    assert os.stat(xml).st_ino == os.stat(voc["devkit"] / "Annotations" / "2008_000002.xml").st_ino

    out = voc["root"] / "linked"
    assert main(
        get_args_parser().parse_args(
            argv(voc, "--link", "symlink", "--out", str(out), "--num_workers", "2", test=False)
        )
    )
    dst = out / "validation" / "image" / "2007_000063.jpg"
    assert os.path.islink(dst)
    assert os.path.realpath(dst) == os.path.realpath(voc["devkit"] / "JPEGImages" / "2007_000063.jpg")
    mask = out / "validation" / "mask" / "2007_000063.png"
    assert not os.path.islink(mask)  # masks are always re-saved
    np.testing.assert_array_equal(read_png_indices(mask)[0], voc["expected"]["voc"]["2007_000063"])
    assert parse_xml_tags(str(out / "train" / "xml" / "2007_000032.xml"), INFO.class_dict) == [1, 15]
    assert not [f for _, _, names in os.walk(out) for f in names if f.endswith(".tmp")]


def expect_error(args, *words):
    with pytest.raises(SystemExit) as raised:
        cli(main, get_args_parser(), args)
    message = str(raised.value.code)
    assert message.startswith("error:"), message
    for word in words:
        assert word in message, message
    return message


def test_missing_list_file_is_an_error(voc):
    os.remove(voc["devkit"] / "ImageSets" / "Segmentation" / "val.txt")
    expect_error(argv(voc), "val.txt", "not found")
    assert not os.path.exists(voc["out"])  # nothing written before the inputs are checked


def test_id_without_image_is_an_error(voc):
    write_list(str(voc["devkit"] / "ImageSets" / "Segmentation" / "train.txt"), list(TRAIN) + ["2009_999999"])
    expect_error(argv(voc), "train.txt", "2009_999999", "image")


def test_sbd_mat_form_without_split_lists_is_an_error(voc):
    os.remove(voc["sbd"] / "dataset" / "val.txt")
    expect_error(argv(voc, sbd="sbd"), "val.txt")


def test_unexpected_mask_value_is_an_error(voc):
    mask = voc["expected"]["voc"]["2007_000068"].copy()
    mask[5, 5] = 21  # one past the last VOC class
    write_palette_png(str(voc["devkit"] / "SegmentationClass" / "2007_000068.png"), mask, SCRAMBLED)
    expect_error(argv(voc), "2007_000068.png", "unexpected mask values [21]")


def test_mask_of_wrong_size_fails_verification(voc):
    write_palette_png(
        str(voc["devkit"] / "SegmentationClass" / "2007_000063.png"), np.zeros((10, 12), np.uint8), SCRAMBLED
    )
    expect_error(argv(voc), "2007_000063.png", "differs from its image")


def test_stray_output_file_fails_verification(voc):
    write_jpeg(str(voc["out"] / "validation" / "image" / "2001_000001.jpg"), 8, 8, 0, quality=90)
    expect_error(argv(voc), "2001_000001.jpg", "not in the validation list")


def test_expect_official_turns_count_warning_into_error(voc):
    expect_error(argv(voc, "--expect_official"), "official", "1,464")
    assert not os.path.exists(voc["out"])


def test_non_positive_size_in_an_annotation_is_an_error(voc):
    path = voc["devkit"] / "Annotations" / "2007_000068.xml"
    path.write_text(path.read_text().replace("<width>", "<width>-", 1))
    expect_error(argv(voc), "2007_000068.xml", "positive number of pixels")


# --- one bad source image ------------------------------------------------------------------------
def test_voc_builder_refuses_a_16_bit_image_before_writing(tmp_path):
    source = sixteen_bit(str(tmp_path / "src" / "2007_000032.jpg"))
    split_dir = tmp_path / "out" / "train"
    item = {"id": "2007_000032", "image": source, "xml": None, "mask": None}
    with pytest.raises(PrepareError) as info:
        build_item(item, str(split_dir), "copy", INFO.num_classes, INFO.palette)
    assert source in str(info.value) and "'I;16'" in str(info.value)
    assert not split_dir.exists()


def test_builder_skips_bad_items_lists_them_and_writes_the_others(tmp_path):
    """Before: the first bad image stopped the build; the later good images were never written."""
    src = tmp_path / "src"
    src.mkdir()
    items = []
    for image_id in ("i1", "i2", "i3", "i4"):
        path = src / f"{image_id}.jpg"
        if image_id in ("i1", "i3"):
            Image.fromarray(np.full((8, 8), 300, np.uint16)).save(path, format="PNG")  # 16-bit
        else:
            Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(path)
        items.append({"id": image_id, "image": str(path), "xml": None, "mask": None})
    with pytest.raises(PrepareError, match="2 of 4 item\\(s\\) skipped") as error:
        build_split(str(tmp_path / "out"), "test", items, "copy", DatasetInfo("VOC"), 0)
    assert "i1.jpg" in str(error.value) and "i3.jpg" in str(error.value)
    assert sorted(os.listdir(tmp_path / "out" / "test" / "image")) == ["i2.jpg", "i4.jpg"]
