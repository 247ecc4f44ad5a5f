"""One name check for everything that becomes part of a path (core.safety.check_output_id):
tags, label tags, folder names, domains and ids from files; and no relative path leaves its output
folder (core.safety.safe_output_path)."""

import os

import pytest

from core.errors import UsageError
from core.safety import UnsafePathError, check_output_id, safe_output_path
from tools.paths import model_path, output_dir, predictions_dir

BAD = {
    "../../X": "path separator",
    "/abs/tag": "path separator",
    "": "is empty",
    ".": "not a file name",
    "..": "not a file name",
    "a" * 256: "longer than 255 bytes",
    "é" * 128: "longer than 255 bytes",
    "a\nb": "control character",
    ".hidden": "starts with a dot",
    "a\\b": "path separator",
}


@pytest.mark.parametrize("tag", list(BAD))
def test_bad_tags_are_usage_errors_naming_the_flag(tag):
    for build in (
        lambda: model_path("exp", tag),
        lambda: predictions_dir("exp", tag, "validation"),
        lambda: output_dir("exp", "pseudo-labels", tag, "train"),
    ):
        with pytest.raises(UsageError, match=f"--tag: .*{BAD[tag]}"):
            build()


def test_the_longest_name_is_accepted():
    tag = "a" * 255  # exactly the limit, in bytes
    assert model_path("exp", tag) == os.path.join("exp", "models", tag, "last.pth")
    assert predictions_dir("exp", "é" * 127, "train_aug").endswith(os.path.join("é" * 127, "train"))


@pytest.mark.parametrize("domain", ["../x", "", "."])
def test_bad_domains_are_refused(domain):
    with pytest.raises(UsageError, match="--domain"):
        predictions_dir("exp", "tag", domain)


def test_bad_strategy_is_refused():
    with pytest.raises(UsageError, match="--strategy"):
        model_path("exp", "tag", "../best")


@pytest.mark.parametrize(
    "value", ["../../../x.jpg", "/etc/x.jpg", "a/b.jpg", "a\\b.jpg", "", "  ", ".", "..", ".hidden", "x\n.jpg", 5]
)
def test_bad_output_ids_are_refused_naming_the_source(value):
    with pytest.raises(UnsafePathError) as info:
        check_output_id(value, "list.txt: line 3")
    assert str(info.value).startswith("list.txt: line 3: refusing the name")


@pytest.mark.parametrize("value", ["2007_000032", "COCO_val2014_000000000042.jpg", "a..b", "x-y z"])
def test_plain_names_pass(value):
    assert check_output_id(value, "list.txt") == value


def test_safe_output_path(tmp_path):
    root = str(tmp_path / "out")
    assert safe_output_path(root, os.path.join("image", "a.jpg")) == os.path.join(root, "image", "a.jpg")
    for relative in ("../x.png", os.path.join("image", "..", "..", "x.png"), str(tmp_path / "x.png"), ".", ""):
        with pytest.raises(UnsafePathError) as info:
            safe_output_path(root, relative)
        assert "outside the output folder" in str(info.value)
