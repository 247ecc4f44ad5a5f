"""tools/builders/build_steps.py, the steps every dataset builder shares: reading an id list
(BOM, bytes that are not UTF-8, invisible characters, ids that would leave the output folder) and
verifying a written split."""

import pytest
from mini_data import sixteen_bit

from core.dataset_layout import DatasetInfo
from tools.builders.build_steps import PrepareError, _verify_item, read_id_list

VOC = DatasetInfo("VOC")


def test_list_file_bom_non_utf8_and_invisible_characters(tmp_path):
    """Before: the BOM stayed in the first id, a non-UTF-8 byte raised UnicodeDecodeError."""
    path = tmp_path / "train.txt"
    path.write_bytes("\ufeff2007_000032\n2007_000039\n".encode("utf-8"))
    assert read_id_list(str(path), "train") == ["2007_000032", "2007_000039"]
    path.write_bytes(b"2007_000032\n2007_0\xff0039\n")
    with pytest.raises(PrepareError, match="line 2: not UTF-8 text .*0xff") as error:
        read_id_list(str(path), "train")
    assert str(path) in str(error.value)
    path.write_text("2007_000032\n2007\u200b_000039\n", encoding="utf-8")
    with pytest.raises(PrepareError, match="line 2: invisible character U\\+200B"):
        read_id_list(str(path), "train")


def test_voc_list_with_a_dot_dot_id_is_refused(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("2007_000032\n..\n")
    with pytest.raises(PrepareError) as info:
        read_id_list(str(path), "VOC train")
    assert str(path) in str(info.value) and "'..'" in str(info.value)
    path.write_text("2007_000032\n/JPEGImages/2007_000033.jpg x.png\n")
    assert read_id_list(str(path), "VOC train") == ["2007_000032", "2007_000033"]


def test_builder_verification_names_a_16_bit_output_image(tmp_path):
    split_dir = tmp_path / "train"
    path = sixteen_bit(str(split_dir / "image" / "a.jpg"))
    problems = _verify_item("a", str(split_dir), False, False, VOC.num_classes, VOC.class_dict)
    assert len(problems) == 1 and problems[0].startswith(path) and "'I;16'" in problems[0]
