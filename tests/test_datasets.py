"""core/dataset_layout.py on good and bad input: every error names the file and the problem."""

import os

import numpy as np
import pytest
import torch
from mini_data import TOY, float_image, make_split, save_as_jpg_name, sixteen_bit, write_jpeg, write_text, xml_text
from PIL import Image

from core.dataset_layout import (
    DatasetError,
    DatasetInfo,
    SeedLayout,
    load_dataset_info,
    normalize_image,
    parse_xml_tags,
    read_image,
)
from core.io import save_mask


# ---------------------------------------------------------------------------------------------
# layout and ids
# ---------------------------------------------------------------------------------------------
def test_missing_root_folder_is_named(tmp_path):
    root = tmp_path / "no_such_root"
    with pytest.raises(DatasetError, match="dataset root folder not found") as err:
        SeedLayout(str(root), "train", TOY)
    assert str(root) in str(err.value)


def test_missing_split_lists_the_present_ones(tmp_path):
    make_split(str(tmp_path), "train", ["a"])
    make_split(str(tmp_path), "test", ["t"], masks=False, xml=False)
    with pytest.raises(DatasetError) as err:
        SeedLayout(str(tmp_path), "validation", TOY)
    message = str(err.value)
    assert "'validation' not found" in message and "present: test, train" in message
    assert os.path.join(str(tmp_path), "validation", "image") in message


def test_split_without_images_is_an_error(tmp_path):
    os.makedirs(tmp_path / "train" / "image")
    with pytest.raises(DatasetError, match="no .jpg images"):
        SeedLayout(str(tmp_path), "train", TOY)


def test_ids_are_sorted_jpg_stems_only(tmp_path):
    make_split(str(tmp_path), "train", ["b_1", "a_10", "a_2", "B_0"], masks=False, xml=False)
    image_dir = tmp_path / "train" / "image"
    write_text(str(image_dir / "notes.txt"), "not an image")
    write_text(str(image_dir / ".a_3.jpg.x1y2.tmp"), "half-written")  # atomic_output's temporary
    layout = SeedLayout(str(tmp_path), "train", TOY)
    assert layout.ids == ["B_0", "a_10", "a_2", "b_1"]  # plain code-point order, as sorted()
    assert len(layout) == 4


def test_trailing_slash_makes_no_difference(tmp_path):
    make_split(str(tmp_path), "validation", ["x2", "x1"])
    plain = SeedLayout(str(tmp_path), "validation", TOY)
    slash = SeedLayout(str(tmp_path) + "/", "validation", TOY)
    assert plain.ids == slash.ids == ["x1", "x2"]
    assert plain.root == slash.root == str(tmp_path)
    assert plain.image_path("x1") == slash.image_path("x1") == str(tmp_path / "validation" / "image" / "x1.jpg")
    assert plain.mask_path("x1") == slash.mask_path("x1")
    assert plain.xml_path("x1") == slash.xml_path("x1")


def test_require_masks_and_xml_on_a_split_without_them(tmp_path):
    make_split(str(tmp_path), "test", ["t1"], masks=False, xml=False)
    with pytest.raises(DatasetError, match=r"mask: no ground-truth masks for split 'test'"):
        SeedLayout(str(tmp_path), "test", TOY, require_masks=True)
    with pytest.raises(DatasetError, match=r"xml: no annotations for split 'test'"):
        SeedLayout(str(tmp_path), "test", TOY, require_xml=True)


def test_test_split_without_xml_has_no_tags(tmp_path):
    make_split(str(tmp_path), "test", ["t1", "t2"], masks=False, xml=False)
    layout = SeedLayout(str(tmp_path), "test", TOY)
    assert not layout.has_masks and not layout.has_xml
    assert [layout.read_tags(i) for i in layout.ids] == [[], []]
    with pytest.raises(DatasetError, match="annotation not found for image t1"):
        layout.read_tags("t1", required=True)


def test_missing_xml_in_a_split_with_annotations_is_an_error(tmp_path):
    make_split(str(tmp_path), "train", ["a", "b"])
    os.remove(tmp_path / "train" / "xml" / "b.xml")
    layout = SeedLayout(str(tmp_path), "train", TOY)
    assert layout.read_tags("a") == [1]
    with pytest.raises(DatasetError) as err:
        layout.read_tags("b")
    assert str(tmp_path / "train" / "xml" / "b.xml") in str(err.value)
    assert layout.read_tags("b", required=False) == []


# ---------------------------------------------------------------------------------------------
# images and masks
# ---------------------------------------------------------------------------------------------
def test_image_and_mask_read_back(tmp_path):
    make_split(str(tmp_path), "train", ["a", "b", "c"])
    layout = SeedLayout(str(tmp_path), "train", TOY, require_masks=True, require_xml=True)
    for k, image_id in enumerate(layout.ids):
        image = layout.read_image(image_id)
        assert image.shape == (12, 16, 3) and image.dtype == np.uint8
        mask = layout.read_mask(image_id, image.shape[:2])
        expected = np.full((12, 16), k, np.uint8)
        expected[0, :] = 255
        assert np.array_equal(mask, expected)


def test_image_without_mask_names_the_mask(tmp_path):
    make_split(str(tmp_path), "train", ["a", "b"])
    os.remove(tmp_path / "train" / "mask" / "b.png")
    layout = SeedLayout(str(tmp_path), "train", TOY, require_masks=True)
    with pytest.raises(DatasetError) as err:
        layout.read_mask("b")
    assert str(tmp_path / "train" / "mask" / "b.png") in str(err.value)
    assert "mask not found for image b" in str(err.value)


def test_truncated_jpeg_names_the_file(tmp_path):
    path = tmp_path / "half.jpg"
    write_jpeg(str(path), 64, 64)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="corrupt or truncated image") as err:
        read_image(str(path))
    assert str(path) in str(err.value)


def test_non_image_and_missing_image(tmp_path):
    path = tmp_path / "text.jpg"
    path.write_text("hello")
    with pytest.raises(DatasetError, match=r"text\.jpg: corrupt or truncated image"):
        read_image(str(path))
    with pytest.raises(DatasetError, match=r"gone\.jpg: image file not found"):
        read_image(str(tmp_path / "gone.jpg"))


def test_greyscale_jpeg_is_read_as_rgb(tmp_path):
    path = tmp_path / "grey.jpg"
    Image.fromarray(np.full((5, 7), 200, np.uint8)).save(path, format="JPEG")
    image = read_image(str(path))
    assert image.shape == (5, 7, 3) and np.all(np.abs(image.astype(int) - 200) <= 2)


@pytest.mark.parametrize("make, mode", [(sixteen_bit, "I;16"), (float_image, "F")])
def test_image_that_is_not_8_bit_is_refused_naming_file_and_mode(tmp_path, make, mode):
    path = make(str(tmp_path / "a.jpg"))
    with pytest.raises(DatasetError) as info:
        read_image(path)
    message = str(info.value)
    assert message.startswith(path) and repr(mode) in message and "8-bit" in message


@pytest.mark.parametrize("mode", ["L", "P", "RGB", "RGBA"])
def test_8_bit_images_still_read(tmp_path, mode):
    pixels = np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    path = save_as_jpg_name(str(tmp_path / "a.jpg"), image, "PNG")
    expected = np.asarray(image.convert("RGB"))
    assert np.array_equal(read_image(path), expected)


def test_mask_size_differing_from_image(tmp_path):
    make_split(str(tmp_path), "validation", ["a"])
    layout = SeedLayout(str(tmp_path), "validation", TOY)
    save_mask(layout.mask_path("a"), np.zeros((12, 15), np.uint8), TOY.palette)
    with pytest.raises(DatasetError) as err:
        layout.read_mask("a", layout.read_image("a").shape[:2])
    message = str(err.value)
    assert layout.mask_path("a") in message and "mask size 15x12 differs from its image 16x12" in message


def test_rgb_mask_is_refused_with_its_name(tmp_path):
    make_split(str(tmp_path), "validation", ["a"])
    layout = SeedLayout(str(tmp_path), "validation", TOY)
    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(layout.mask_path("a"))
    with pytest.raises(DatasetError, match="mode RGB") as err:
        layout.read_mask("a")
    assert layout.mask_path("a") in str(err.value)


# ---------------------------------------------------------------------------------------------
# xml tags
# ---------------------------------------------------------------------------------------------
def test_unknown_class_names_file_and_class(tmp_path):
    path = str(tmp_path / "a.xml")
    write_text(path, xml_text([("disc", (1, 1, 5, 5), 0), ("zebra", (1, 1, 5, 5), 0)]))
    with pytest.raises(DatasetError) as err:
        parse_xml_tags(path, TOY.class_dict)
    assert path in str(err.value) and "unknown class 'zebra'" in str(err.value)


def test_background_is_not_a_valid_object_name(tmp_path):
    path = str(tmp_path / "a.xml")
    write_text(path, xml_text([("background", (1, 1, 5, 5), 0)]))
    with pytest.raises(DatasetError, match="unknown class 'background'"):
        parse_xml_tags(path, TOY.class_dict)


def test_malformed_xml_names_the_file(tmp_path):
    path = str(tmp_path / "broken.xml")
    write_text(path, "<annotation><object><name>disc</name></annotation>")
    with pytest.raises(DatasetError, match="malformed XML") as err:
        parse_xml_tags(path, TOY.class_dict)
    assert path in str(err.value)


def test_non_numeric_box_names_file_and_field(tmp_path):
    path = str(tmp_path / "a.xml")
    write_text(path, xml_text([("disc", ("one", 1, 5, 5), 0)]))
    with pytest.raises(DatasetError, match=r"a\.xml: <xmin> is not a number \('one'\)"):
        parse_xml_tags(path, TOY.class_dict)


def test_xml_with_inf_or_overflowing_number_names_the_file(tmp_path):
    """Before: int(float('inf')) raised OverflowError, a traceback naming no file."""
    info = DatasetInfo("TOY")
    for text in ("inf", "1e400", "nan"):
        path = tmp_path / f"{text}.xml"
        path.write_text(
            f"<annotation><size><width>{text}</width><height>10</height></size>"
            "<object><name>disc</name></object></annotation>"
        )
        with pytest.raises(DatasetError, match="not a finite pixel coordinate") as error:
            parse_xml_tags(str(path), info.class_dict)
        assert str(path) in str(error.value)


def test_zero_size_box_rule(tmp_path):
    """Image 16x12. Hand-worked: which objects survive clamping to the image."""
    objects = [
        ("ring", (20, 2, 30, 8), 0),  # right of the image: clamps to 16..16, dropped
        ("square", (3, 4, 3, 9), 0),  # zero width, dropped
        ("cross", (2, -5, 9, 0), 0),  # above the image: clamps to 0..0, dropped
        ("cross", (-5, 2, 0, 8), 0),  # left of the image: clamps to 0..0, dropped
        ("triangle", (10, 5, 40, 50), 1),  # difficult and sticking out: kept
        ("disc", (1.7, 2.2, 6.9, 7.0), 0),  # fractional coordinates: kept
        ("triangle", (1, 1, 4, 4), 0),  # duplicate: collapses into the first triangle
        ("ring", None, 0),  # no box at all: kept
        ("square", (0, 0, 2, 2), 1),  # difficult square, after the dropped one: kept here
    ]
    path = str(tmp_path / "a.xml")
    write_text(path, xml_text(objects))
    d = TOY.class_dict
    assert parse_xml_tags(path, d) == [d["triangle"], d["disc"], d["ring"], d["square"]]


def test_tags_in_order_of_first_appearance_with_duplicates_collapsed(tmp_path):
    path = str(tmp_path / "a.xml")
    names = ["cross", "disc", "cross", "square", "disc", "cross"]
    write_text(path, xml_text([(n, (1, 1, 8, 8), 0) for n in names]))
    assert parse_xml_tags(path, TOY.class_dict) == [5, 1, 2]


def test_annotation_without_objects_has_no_tags(tmp_path):
    path = str(tmp_path / "a.xml")
    write_text(path, xml_text([]))
    assert parse_xml_tags(path, TOY.class_dict) == []


def test_multi_hot(tmp_path):
    make_split(str(tmp_path), "train", ["a"])
    layout = SeedLayout(str(tmp_path), "train", TOY)
    vector = layout.multi_hot([5, 2])
    assert vector.dtype == np.float32 and vector.shape == (5,)
    assert vector.tolist() == [0, 1, 0, 0, 1]
    assert layout.multi_hot([]).tolist() == [0] * 5
    voc = SeedLayout(str(tmp_path), "train", DatasetInfo("VOC"))
    assert voc.multi_hot([15]).tolist() == [0] * 14 + [1] + [0] * 5


def test_normalize_image_matches_the_formula():
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    out = normalize_image(image)
    assert out.shape == (3, 2, 3) and out.dtype == torch.float32
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    for c in range(3):
        expected = (image[..., c] / 255.0 - mean[c]) / std[c]
        assert np.allclose(out[c].numpy(), expected, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# DatasetInfo
# ---------------------------------------------------------------------------------------------
def pascal_colormap(index):
    """Standard PASCAL VOC colour of class `index`: its bits spread over the high bits of R, G, B."""
    rgb = [0, 0, 0]
    for shift in range(7, -1, -1):
        for channel in range(3):
            rgb[channel] |= ((index >> channel) & 1) << shift
        index >>= 3
    return rgb


VOC_NAMES = [
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
]


def test_colormap_helper_on_known_entries():
    assert pascal_colormap(0) == [0, 0, 0]
    assert pascal_colormap(1) == [128, 0, 0]
    assert pascal_colormap(15) == [192, 128, 128]
    assert pascal_colormap(20) == [0, 64, 128]


def test_voc_info():
    info = load_dataset_info("VOC")
    assert info.num_classes == 21 and info.num_foreground == 20 and info.ignore_index == 255
    assert info.class_names == VOC_NAMES
    assert info.class_dict == {n: i for i, n in enumerate(VOC_NAMES)}
    assert info.colors == [pascal_colormap(i) for i in range(21)]
    assert info.colors[15] == [192, 128, 128]
    assert info.palette[:6] == [0, 0, 0, 128, 0, 0]
    assert info.palette[3 * 255 :] == [224, 224, 192] and len(info.palette) == 768


def test_coco_info():
    info = DatasetInfo("COCO")
    assert info.num_classes == len(info.class_names) == 81 and info.num_foreground == 80
    assert info.class_names[0] == "background" and info.class_names[1] == "person"
    assert {"traffic light", "hair drier", "teddy bear"} <= set(info.class_names)
    assert info.class_dict == {n: i for i, n in enumerate(info.class_names)}
    assert info.colors == [pascal_colormap(i) for i in range(81)]
    ids = info.extra["coco_category_ids"]
    assert len(ids) == 80 and ids == sorted(set(ids)) and ids[0] == 1 and ids[-1] == 90
    assert ids[info.class_dict["traffic light"] - 1] == 10


def test_toy_info():
    info = DatasetInfo("TOY")
    assert info.class_names == ["background", "disc", "square", "triangle", "ring", "cross"]
    assert info.num_classes == 6 and info.colors == [pascal_colormap(i) for i in range(6)]


def test_unknown_dataset_name_lists_the_known_ones():
    with pytest.raises(DatasetError) as err:
        DatasetInfo("PASCAL")
    message = str(err.value)
    assert "unknown dataset 'PASCAL'" in message and "PASCAL.json" in message
    assert "COCO" in message and "TOY" in message and "VOC" in message


@pytest.mark.parametrize("width, height", [(-5, 12), (16, 0)])
def test_non_positive_image_size_is_refused(width, height):
    import io

    from core.dataset_layout import parse_xml_tags

    text = xml_text([("disc", (2, 2, 9, 9), 0)], width=width, height=height).encode()
    with pytest.raises(DatasetError, match="must be a positive number of pixels"):
        parse_xml_tags(io.BytesIO(text), TOY.class_dict)
