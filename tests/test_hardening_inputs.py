"""Inputs that used to be accepted silently: images that are not 8 bits per channel, --conf_th
outside [0, 1] or NaN, --scales without an upper bound or not finite."""
import os

import numpy as np
import pytest
from PIL import Image

import infer_rsepm
import infer_seg
from core.dataset_layout import DatasetError, read_image
from tools.seeds.infer_loop import MAX_SCALE, parse_scales
from tools.builders.build_steps import PrepareError, _verify_item
from tools.builders.prepare_voc import build_item
from core.dataset_layout import DatasetInfo

VOC = DatasetInfo("VOC")


def save_as_jpg_name(path, image, fmt):
    """Save `image` in format `fmt` under a .jpg name (PIL then reads it by its content)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image.save(path, format=fmt)
    return path


def sixteen_bit(path):
    # a dark 16-bit photograph: every value is far below 65535, but above 255
    values = (np.arange(20 * 24, dtype=np.uint16).reshape(20, 24) * 7 + 300)
    image = Image.fromarray(values)
    assert image.mode == "I;16"
    return save_as_jpg_name(path, image, "PNG")


def float_image(path):
    image = Image.fromarray(np.full((20, 24), 0.25, np.float32))
    assert image.mode == "F"
    return save_as_jpg_name(path, image, "TIFF")


# --- 5a. images -------------------------------------------------------------------------------------
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


def test_voc_builder_refuses_a_16_bit_image_before_writing(tmp_path):
    source = sixteen_bit(str(tmp_path / "src" / "2007_000032.jpg"))
    split_dir = tmp_path / "out" / "train"
    item = {"id": "2007_000032", "image": source, "xml": None, "mask": None}
    with pytest.raises(PrepareError) as info:
        build_item(item, str(split_dir), "copy", VOC.num_classes, VOC.palette)
    assert source in str(info.value) and "'I;16'" in str(info.value)
    assert not split_dir.exists()


def test_builder_verification_names_a_16_bit_output_image(tmp_path):
    split_dir = tmp_path / "train"
    path = sixteen_bit(str(split_dir / "image" / "a.jpg"))
    problems = _verify_item("a", str(split_dir), False, False, VOC.num_classes, VOC.class_dict)
    assert len(problems) == 1 and problems[0].startswith(path) and "'I;16'" in problems[0]


# --- 5b. --conf_th ------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["1.5", "-0.5", "nan", "inf", "-2", "abc"])
def test_conf_th_outside_0_1_is_refused_at_parsing(value, capsys):
    with pytest.raises(SystemExit) as info:
        infer_rsepm.get_args_parser().parse_args(["--conf_th", value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--conf_th" in err and repr(value) in err


@pytest.mark.parametrize("value, expected", [("-1", -1.0), ("0", 0.0), ("0.34", 0.34), ("1", 1.0)])
def test_conf_th_in_range_or_minus_one_is_accepted(value, expected):
    assert infer_rsepm.get_args_parser().parse_args(["--conf_th", value]).conf_th == expected


# --- 5c. --scales --------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["1.0,nan", "inf", "1.0,1e400", "1.0,8", "0", "1.0,-0.5", "-inf"])
def test_scales_not_finite_or_too_large_are_refused(text, capsys):
    with pytest.raises(SystemExit) as info:
        infer_seg.get_args_parser().parse_args([f"--scales={text}"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--scales" in err and repr(text) in err and f"(0, {MAX_SCALE:g}]" in err


def test_scales_within_the_bound_are_accepted():
    assert parse_scales("1.0,0.5,1.5,2.0") == (1.0, 0.5, 1.5, 2.0)
    assert parse_scales(f"{MAX_SCALE}") == (MAX_SCALE,)
    assert MAX_SCALE == 4.0
