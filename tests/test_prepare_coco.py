"""tools/builders/prepare_coco.py on a tiny fixture in the official COCO 2014 layout."""

import io
import json
import os

import numpy as np
import pytest
from mini_data import write_jpeg
from PIL import Image
from pycocotools import mask as mask_utils

from core.dataset_layout import DatasetInfo, SeedLayout, parse_xml_tags
from tools.args import cli
from tools.builders.build_steps import PrepareError
from tools.builders.prepare_coco import get_args_parser, load_split, main, voc_box

INFO = DatasetInfo("COCO")
# pycocotools' decode trips a numpy 2 DeprecationWarning that says nothing about this code
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
H, W = 48, 64  # image 42


def uncompressed_rle(mask):
    """COCO uncompressed RLE written by hand: run lengths over the column-major pixels, zeros first."""
    flat = np.asarray(mask, np.uint8).ravel(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat[0] == 1:
        runs = [0] + runs
    return {"size": list(mask.shape), "counts": runs}


def compressed_rle(mask):
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def region(rows, cols, shape=(H, W)):
    mask = np.zeros(shape, np.uint8)
    mask[rows[0] : rows[1], cols[0] : cols[1]] = 1
    return mask


def rect_polygon(x0, y0, x1, y1):
    # pycocotools fills an axis-aligned integer rectangle as the half-open [x0, x1) x [y0, y1)
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def ann(ann_id, image_id, category, segmentation, bbox, iscrowd=0):
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category,
        "segmentation": segmentation,
        "bbox": bbox,
        "area": 0.0,
        "iscrowd": iscrowd,
    }


def val_annotations():
    return [
        ann(101, 42, 1, [rect_polygon(10, 8, 30, 38)], [10, 8, 20, 30]),  # person 600 px
        ann(102, 42, 1, uncompressed_rle(region((30, 46), (25, 46))), [25, 30, 21, 16], iscrowd=1),
        ann(103, 42, 10, [rect_polygon(12, 10, 16, 16)], [12, 10, 4, 6]),  # traffic light 24 px
        ann(104, 42, 67, compressed_rle(region((20, 40), (5, 45))), [5, 20, 40, 20]),  # dining table 800 px
        ann(105, 42, 89, uncompressed_rle(region((2, 12), (50, 60))), [50, 2, 10, 10]),  # hair drier 100 px
        # toothbrush: one pixel on the last column, a box far below one pixel wide
        ann(106, 42, 90, uncompressed_rle(region((40, 41), (63, 64))), [63.2, 40.1, 0.4, 0.5]),
        ann(107, 74, 3, compressed_rle(region((5, 15), (5, 25), (30, 40))), [5, 5, 20, 10], iscrowd=1),
    ]


def expected_val_mask(crowd="ignore"):
    """Painted by hand: crowd, then dining table 800 > person 600 > hair drier 100 > traffic light 24 > toothbrush 1."""
    mask = np.zeros((H, W), np.uint8)
    mask[30:46, 25:46] = {"ignore": 255, "class": 1, "background": 0}[crowd]
    mask[20:40, 5:45] = 61
    mask[8:38, 10:30] = 1
    mask[2:12, 50:60] = 79
    mask[10:16, 12:16] = 10
    mask[40, 63] = 80
    return mask


@pytest.fixture
def coco(tmp_path):
    root = tmp_path / "coco"
    val_images = [
        {"id": 42, "file_name": "COCO_val2014_000000000042.jpg", "height": H, "width": W},
        {"id": 73, "file_name": "COCO_val2014_000000000073.jpg", "height": 30, "width": 40},
        {"id": 74, "file_name": "COCO_val2014_000000000074.jpg", "height": 30, "width": 40},
    ]
    train_images = [{"id": 9, "file_name": "COCO_train2014_000000000009.jpg", "height": 40, "width": 50}]
    # bowl in two pieces, plus a 2-point polygon that has no area and must be ignored
    train_anns = [
        ann(201, 9, 51, [rect_polygon(2, 3, 12, 9), rect_polygon(30, 20, 40, 35), [1, 1, 5, 5]], [2, 3, 38, 32])
    ]
    for seed, image in enumerate(val_images):
        write_jpeg(str(root / "val2014" / image["file_name"]), image["height"], image["width"], seed, quality=90)
    write_jpeg(str(root / "train2014" / train_images[0]["file_name"]), 40, 50, 9, quality=90)
    categories = [{"id": c, "name": n} for c, n in zip(INFO.extra["coco_category_ids"], INFO.class_names[1:])]
    os.makedirs(root / "annotations")
    for name, images, anns in (("val", val_images, val_annotations()), ("train", train_images, train_anns)):
        with open(root / "annotations" / f"instances_{name}2014.json", "w") as f:
            json.dump({"images": images, "annotations": anns, "categories": categories}, f)
    train_mask = np.zeros((40, 50), np.uint8)
    train_mask[3:9, 2:12] = 46
    train_mask[20:35, 30:40] = 46
    return {"root": root, "out": tmp_path / "COCO2014", "tmp": tmp_path, "train_mask": train_mask}


def argv(coco, *extra):
    return ["--coco_root", str(coco["root"]), "--out", str(coco["out"]), "--num_workers", "0"] + list(extra)


def read_png(path):
    with Image.open(path) as image:
        assert image.mode == "P"
        return np.array(image)


def files(folder):
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def test_builds_seed_layout_masks_and_tags(coco, capsys):
    rows = main(get_args_parser().parse_args(argv(coco)))
    out = coco["out"]
    val_ids = ["COCO_val2014_000000000042", "COCO_val2014_000000000073", "COCO_val2014_000000000074"]
    assert files(out) == ["train", "validation"]
    assert files(out / "validation" / "image") == [i + ".jpg" for i in val_ids]
    assert files(out / "validation" / "mask") == [i + ".png" for i in val_ids]
    assert files(out / "validation" / "xml") == [i + ".xml" for i in val_ids]
    assert rows["validation"]["empty"] == 1 and rows["validation"]["image"] == 3

    np.testing.assert_array_equal(read_png(out / "validation" / "mask" / f"{val_ids[0]}.png"), expected_val_mask())
    np.testing.assert_array_equal(
        read_png(out / "validation" / "mask" / f"{val_ids[1]}.png"), np.zeros((30, 40), np.uint8)
    )
    crowd_only = np.zeros((30, 40), np.uint8)
    crowd_only[5:15, 5:25] = 255
    np.testing.assert_array_equal(read_png(out / "validation" / "mask" / f"{val_ids[2]}.png"), crowd_only)
    np.testing.assert_array_equal(
        read_png(out / "train" / "mask" / "COCO_train2014_000000000009.png"), coco["train_mask"]
    )

    layout = SeedLayout(str(out) + "/", "validation", INFO, require_masks=True, require_xml=True)
    assert layout.ids == val_ids
    # person, traffic light, dining table, hair drier, toothbrush (the 1-pixel box survives)
    assert layout.read_tags(val_ids[0]) == [1, 10, 61, 79, 80]
    assert layout.read_tags(val_ids[1]) == []
    assert layout.read_tags(val_ids[2]) == [3]
    assert SeedLayout(str(out), "train", INFO).read_tags("COCO_train2014_000000000009") == [46]
    text = (out / "validation" / "xml" / f"{val_ids[0]}.xml").read_text()
    assert "<name>traffic light</name>" in text and "<name>hair drier</name>" in text
    assert "<filename>COCO_val2014_000000000042.jpg</filename>" in text
    assert (out / "validation" / "image" / f"{val_ids[0]}.jpg").read_bytes() == (
        coco["root"] / "val2014" / f"{val_ids[0]}.jpg"
    ).read_bytes()
    assert "1 images without annotations kept" in capsys.readouterr().out


def test_crowd_modes(coco):
    for crowd in ("class", "background"):
        out = coco["tmp"] / crowd
        assert main(
            get_args_parser().parse_args(argv(coco, "--splits", "validation", "--crowd", crowd, "--out", str(out)))
        )
        np.testing.assert_array_equal(
            read_png(out / "validation" / "mask" / "COCO_val2014_000000000042.png"), expected_val_mask(crowd)
        )


def test_skip_empty_images(coco):
    rows = main(get_args_parser().parse_args(argv(coco, "--empty_images", "skip", "--splits", "validation")))
    assert files(coco["out"] / "validation" / "image") == [
        "COCO_val2014_000000000042.jpg",
        "COCO_val2014_000000000074.jpg",
    ]
    assert rows["validation"]["empty"] == 1 and not os.path.exists(coco["out"] / "train")


def snapshot(folder):
    return {
        os.path.join(d, f): (os.stat(os.path.join(d, f)).st_mtime_ns, open(os.path.join(d, f), "rb").read())
        for d, _, names in os.walk(folder)
        for f in names
    }


def test_second_run_writes_nothing_and_changes_nothing(coco):
    first = main(get_args_parser().parse_args(argv(coco, "--num_workers", "2")))
    assert first["validation"]["written"] == 9 and first["train"]["written"] == 3
    before = snapshot(coco["out"])
    second = main(get_args_parser().parse_args(argv(coco)))
    assert second["validation"]["written"] == 0 and second["train"]["written"] == 0
    assert snapshot(coco["out"]) == before


def test_link_modes(coco):
    assert main(get_args_parser().parse_args(argv(coco, "--link", "symlink", "--splits", "validation")))
    dst = coco["out"] / "validation" / "image" / "COCO_val2014_000000000042.jpg"
    assert os.path.islink(dst)
    assert os.path.realpath(dst) == os.path.realpath(coco["root"] / "val2014" / "COCO_val2014_000000000042.jpg")
    out = coco["tmp"] / "hard"
    assert main(get_args_parser().parse_args(argv(coco, "--link", "hardlink", "--splits", "train", "--out", str(out))))
    dst = out / "train" / "image" / "COCO_train2014_000000000009.jpg"
    assert os.stat(dst).st_ino == os.stat(coco["root"] / "train2014" / "COCO_train2014_000000000009.jpg").st_ino


@pytest.mark.parametrize(
    "bbox, corners",
    [
        ([10, 8, 20, 30], (11, 9, 30, 38)),  # pixels 10..29 x 8..37 (0-based)
        ([0, 0, 64, 48], (1, 1, 64, 48)),  # whole image
        ([-2, -1, 5, 4], (1, 1, 3, 3)),  # clamped to the image
        ([63.2, 40.1, 0.4, 0.5], (62, 41, 64, 42)),  # sub-pixel box on the last column: moved inward
        ([20.5, 7.5, 0.0, 0.0], (21, 8, 22, 9)),  # zero-size box
    ],
)
def test_voc_box_corners(bbox, corners):
    assert voc_box(bbox, W, H) == corners


def test_voc_box_never_loses_a_tag_to_the_zero_size_rule():
    rng = np.random.default_rng(0)
    for _ in range(300):
        x, y = rng.uniform(-2, W + 1), rng.uniform(-2, H + 1)
        w, h = rng.choice([0.0, 0.3, 1.0, rng.uniform(0, 30)]), rng.choice([0.0, 0.6, rng.uniform(0, 30)])
        xmin, ymin, xmax, ymax = voc_box([x, y, w, h], W, H)
        assert 1 <= xmin < xmax <= W and 1 <= ymin < ymax <= H
        xml = (
            f"<annotation><size><width>{W}</width><height>{H}</height></size><object><name>kite</name>"
            f"<bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox>"
            f"</object></annotation>"
        )
        assert parse_xml_tags(io.BytesIO(xml.encode()), INFO.class_dict) == [INFO.class_dict["kite"]]


def expect_error(args, *words):
    with pytest.raises(SystemExit) as raised:
        cli(main, get_args_parser(), args)
    message = str(raised.value.code)
    assert message.startswith("error:"), message
    for word in words:
        assert word in message, message


def rewrite_val_json(coco, edit):
    path = coco["root"] / "annotations" / "instances_val2014.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_missing_annotation_file_is_an_error(coco):
    os.remove(coco["root"] / "annotations" / "instances_val2014.json")
    expect_error(argv(coco, "--splits", "validation"), "instances_val2014.json", "not found")
    assert not os.path.exists(coco["out"])


def test_image_without_file_is_an_error(coco):
    os.remove(coco["root"] / "val2014" / "COCO_val2014_000000000073.jpg")
    expect_error(argv(coco, "--splits", "validation"), "COCO_val2014_000000000073.jpg", "not found")
    assert not os.path.exists(coco["out"])


def test_unknown_category_is_an_error(coco):
    rewrite_val_json(coco, lambda d: d["annotations"][2].update(category_id=12))  # 12 is not a COCO category
    expect_error(argv(coco, "--splits", "validation"), "annotation 103", "category_id 12")


def test_rle_of_wrong_size_is_an_error(coco):
    rewrite_val_json(coco, lambda d: d["annotations"][4]["segmentation"].update(size=[10, 10]))
    expect_error(argv(coco, "--splits", "validation"), "annotation 105", "RLE size")


def test_expect_official(coco, capsys):
    expect_error(argv(coco, "--splits", "validation", "--expect_official"), "40,504")
    expect_error(argv(coco, "--splits", "validation", "--expect_official", "--empty_images", "skip"), "40,137")


def test_an_image_id_listed_twice_is_refused_before_writing(coco):
    rewrite_val_json(coco, lambda d: d["images"].append(dict(d["images"][0], file_name="other.jpg")))
    expect_error(argv(coco, "--splits", "validation"), "image id 42 is listed twice")
    assert not os.path.exists(coco["out"])


def test_two_ids_sharing_one_output_name_are_refused_before_writing(coco):
    rewrite_val_json(coco, lambda d: d["images"][2].update(file_name="COCO_val2014_000000000073.png"))
    expect_error(argv(coco, "--splits", "validation"), "image ids 73 and 74", "COCO_val2014_000000000073")
    assert not os.path.exists(coco["out"])


@pytest.mark.parametrize("value", ["10" + "0" * 400, "1e400"])
def test_numbers_too_large_name_the_file_and_field(coco, value):
    path = coco["root"] / "annotations" / "instances_val2014.json"
    data = json.loads(path.read_text())
    data["annotations"][0]["bbox"] = [1, 2, 3, "BIG"]
    path.write_text(json.dumps(data).replace('"BIG"', value))
    expect_error(argv(coco, "--splits", "validation"), "instances_val2014.json", "bbox", "finite")


def test_json_nested_too_deep_is_one_line(coco):
    path = coco["root"] / "annotations" / "instances_val2014.json"
    path.write_text("[" * 100000 + "]" * 100000)
    expect_error(argv(coco, "--splits", "validation"), "instances_val2014.json", "nested too deeply")


# --- names and numbers of the annotation file --------------------------------------------------------
def files_under(folder):
    """Every file under `folder` but the writer locks (hidden `.NAME.lock` files, not outputs)."""
    return sorted(
        os.path.relpath(os.path.join(d, n), folder)
        for d, _, names in os.walk(folder)
        for n in names
        if not (n.startswith(".") and n.endswith(".lock"))
    )


@pytest.mark.parametrize("file_name", ["../../../x.jpg", "sub/x.jpg"])
def test_coco_file_name_outside_the_output_is_refused(tmp_path, capsys, file_name):
    coco = tmp_path / "a" / "b" / "coco"
    write_jpeg(str(coco / "val2014" / "good.jpg"))
    write_jpeg(str(coco / "val2014" / file_name), seed=1)  # the file exists: only the name is wrong
    images = [
        {"id": 1, "file_name": "good.jpg", "width": 24, "height": 20},
        {"id": 2, "file_name": file_name, "width": 24, "height": 20},
    ]
    annotations = [
        {
            "id": 10 + i,
            "image_id": i,
            "category_id": 1,
            "iscrowd": 0,
            "bbox": [2, 2, 5, 5],
            "segmentation": [[2, 2, 7, 2, 7, 7, 2, 7]],
            "area": 25.0,
        }
        for i in (1, 2)
    ]
    json_path = coco / "annotations" / "instances_val2014.json"
    json_path.parent.mkdir(parents=True)
    json_path.write_text(json.dumps({"images": images, "annotations": annotations}))
    before = files_under(str(tmp_path))
    with pytest.raises(SystemExit) as info:
        cli(
            main,
            get_args_parser(),
            ["--coco_root", str(coco), "--splits", "validation", "--out", str(tmp_path / "out"), "--num_workers", "0"],
        )
    message = str(info.value.code)
    assert info.value.code not in (0, None)
    assert str(json_path) in message and repr(file_name) in message
    assert files_under(str(tmp_path)) == before  # nothing written anywhere, inside --out or outside


def coco_json(tmp_path, width=48, height=40, bbox=(1.0, 2.0, 10.0, 5.0)):
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    Image.fromarray(np.zeros((40, 48, 3), np.uint8)).save(images / "x.jpg")
    data = {
        "images": [{"id": 1, "file_name": "x.jpg", "width": width, "height": height}],
        "annotations": [
            {
                "id": 7,
                "image_id": 1,
                "category_id": 1,
                "iscrowd": 0,
                "bbox": list(bbox),
                "segmentation": [[1, 2, 11, 2, 11, 7]],
            }
        ],
    }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))  # json.dumps writes NaN as NaN, which json.load reads back
    return str(path), str(images)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("bbox", (1.0, float("nan"), 3.0, 4.0), "bbox"),
        ("height", "abc", "height 'abc'"),
        ("width", float("inf"), "width inf"),
    ],
)
def test_coco_nan_box_or_non_numeric_size_names_the_file(tmp_path, field, value, message):
    """Before: ValueError/OverflowError tracebacks from int() or from the box rounding."""
    path, images = coco_json(tmp_path, **{field: value})
    with pytest.raises(PrepareError, match=message) as error:
        load_split(path, images, {1: 1}, "keep")
    assert path in str(error.value) and "image id 1" in str(error.value)
    good, _ = coco_json(tmp_path)
    assert load_split(good, images, {1: 1}, "keep")[0][0]["height"] == 40
