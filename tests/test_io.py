"""core/io.py: atomic writes, seed files (both dialects, legacy files, hostile pickles), palette masks."""
import os
import pickle
import stat

import numpy as np
import pytest
from PIL import Image

from core.errors import FormatError
from core.io import atomic_output, load_seed, make_palette, read_mask, save_mask, save_seed, seed_dialect_from_tag


def test_atomic_output_leaves_nothing_on_failure(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_output(path) as f:
            f.write(b"half of the new content")
            raise RuntimeError("killed")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.bin"]  # no temporary file left behind


def test_atomic_output_replaces_and_uses_the_umask(tmp_path):
    path = tmp_path / "sub" / "out.txt"
    with atomic_output(path, "w") as f:
        f.write("new")
    assert path.read_text() == "new"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask


@pytest.mark.parametrize("dialect, keys, planes", [("rsepm", [0, 3, 12], 2), ("seg", [0, 5], 2), ("rsepm", [0], 0)])
def test_seed_files_round_trip_both_dialects(tmp_path, dialect, keys, planes):
    seed = np.random.default_rng(0).random((planes, 7, 9)).astype(np.float32)
    save_seed(tmp_path / "a.pkl", keys, seed, dialect)
    data = load_seed(tmp_path / "a.pkl")
    assert data["dialect"] == dialect
    assert data["keys"].dtype == np.int64 and data["keys"].tolist() == keys
    assert data["seed"].dtype == np.float32 and np.array_equal(data["seed"], seed)


def test_legacy_files_without_dialect_follow_the_ms_rule(tmp_path):
    # files written by the original scripts: a plain {keys, seed} dict
    with open(tmp_path / "old.pkl", "wb") as f:
        pickle.dump({"keys": np.array([0, 4]), "seed": np.ones((1, 3, 3), np.float32)}, f)
    assert load_seed(tmp_path / "old.pkl", tag="ResNet50@VOC@RS+EPM@Official")["dialect"] == "rsepm"
    with open(tmp_path / "old_seg.pkl", "wb") as f:
        pickle.dump({"keys": np.array([0, 4]), "seed": np.ones((2, 3, 3), np.float32)}, f)
    assert load_seed(tmp_path / "old_seg.pkl", tag="ResNet101@VOC@RS+EPM@MS@Official")["dialect"] == "seg"
    assert seed_dialect_from_tag(None) == "rsepm"


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open("evil.pkl", "wb") as f:
        pickle.dump({"keys": _Payload(), "seed": np.zeros((0, 2, 2))}, f)
    with pytest.raises(FormatError, match="evil.pkl.*refusing to load"):
        load_seed("evil.pkl")
    assert not os.path.exists("PWNED")


@pytest.mark.parametrize("content, message", [
    (lambda good: good[: len(good) // 2], "truncated"),
    (lambda good: b"not a pickle at all", "seed file"),
    (lambda good: pickle.dumps([1, 2, 3]), "not a seed file"),
    (lambda good: pickle.dumps({"keys": np.array([0, 1, 2]), "seed": np.zeros((1, 2, 2), np.float32),
                                "dialect": "rsepm"}), "needs 2 keys"),
])
def test_bad_seed_files_name_the_file_and_problem(tmp_path, content, message):
    save_seed(tmp_path / "good.pkl", [0, 1], np.zeros((1, 4, 4), np.float32), "rsepm")
    (tmp_path / "bad.pkl").write_bytes(content((tmp_path / "good.pkl").read_bytes()))
    with pytest.raises(FormatError, match=message) as error:
        load_seed(tmp_path / "bad.pkl")
    assert "bad.pkl" in str(error.value)


def test_palette_masks_keep_their_indices_at_8_bits(tmp_path):
    colors = [[0, 0, 0], [128, 0, 0], [0, 128, 0]]
    mask = np.array([[0, 1, 2], [255, 1, 0]], dtype=np.uint8)
    save_mask(tmp_path / "m.png", mask, make_palette(colors))
    with Image.open(tmp_path / "m.png") as image:
        assert image.mode == "P"
        palette = image.getpalette()
        assert np.array_equal(np.array(image), mask)
    assert palette[3:6] == [128, 0, 0] and palette[6:9] == [0, 128, 0]
    assert palette[3 * 255:3 * 256] == [224, 224, 192]
    assert palette[9:12] == [0, 0, 0]  # black elsewhere
    assert np.array_equal(read_mask(tmp_path / "m.png"), mask)


def test_rgb_images_are_not_masks(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "rgb.png")
    with pytest.raises(FormatError, match="rgb.png.*mode RGB"):
        read_mask(tmp_path / "rgb.png")
