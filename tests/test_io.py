"""core/io.py: atomic writes (and the one-line error of a full disk), seed files (both dialects,
legacy files, hostile pickles, the uint8/uint16 formats, size guards), palette masks, JSON files and
the settings record of an output folder (claim_output_folder): weights by content, flags, the input
folder's record; --overwrite removes what was derived from the old contents; a run that wrote
nothing blocks nothing; --overwrite never deletes outside the root."""

import errno
import io
import os
import pickle
import stat
import zlib

import numpy as np
import pytest
import torch
from mini_data import smooth_planes
from PIL import Image

import core.io
from core.dataset_layout import DatasetInfo
from core.errors import FormatError, OutputError, UsageError
from core.io import (
    atomic_output,
    claim_output_folder,
    file_fingerprint,
    load_seed,
    make_palette,
    read_json,
    read_mask,
    save_mask,
    save_seed,
    seed_dialect_from_tag,
    settings_path,
    write_json,
)
from core.weights import save_weights
from tools.engine import resume_state


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


class FullDisk(io.FileIO):
    """A file on a disk that fills up after 64 bytes."""

    def write(self, data):
        if self.tell() + len(data) > 64:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(data)


def test_full_disk_names_the_path_and_cause(tmp_path, monkeypatch):
    def fdopen(fd, mode="r", *args, **kwargs):
        disk = FullDisk(fd, "w")
        return disk if "b" in mode else io.TextIOWrapper(disk, encoding="utf-8", write_through=True)

    monkeypatch.setattr(core.io.os, "fdopen", fdopen)
    model = torch.nn.Linear(20, 20)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    path = str(tmp_path / "resume.pth")
    # before: RuntimeError "[enforce fail at inline_container.cc] unexpected pos"
    with pytest.raises(OutputError, match=r"resume\.pth: cannot write \(disk full"):
        resume_state.save_resume(path, model, optimizer)
    assert os.listdir(tmp_path) == []  # no half-written file, no temporary
    with pytest.raises(OutputError, match=r"config\.json: cannot write \(disk full"):
        write_json(str(tmp_path / "config.json"), {"x": "y" * 100})
    assert os.listdir(tmp_path) == []
    with pytest.raises(OutputError, match=r"last\.pth: cannot write \(disk full"):
        save_weights(model, str(tmp_path / "last.pth"))  # the final weights (before: RuntimeError)
    assert os.listdir(tmp_path) == []


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


@pytest.mark.parametrize(
    "content, message",
    [
        (lambda good: good[: len(good) // 2], "truncated"),
        (lambda good: b"not a pickle at all", "seed file"),
        (lambda good: pickle.dumps([1, 2, 3]), "not a seed file"),
        (
            lambda good: pickle.dumps(
                {"keys": np.array([0, 1, 2]), "seed": np.zeros((1, 2, 2), np.float32), "dialect": "rsepm"}
            ),
            "needs 2 keys",
        ),
    ],
)
def test_bad_seed_files_name_the_file_and_problem(tmp_path, content, message):
    save_seed(tmp_path / "good.pkl", [0, 1], np.zeros((1, 4, 4), np.float32), "rsepm")
    (tmp_path / "bad.pkl").write_bytes(content((tmp_path / "good.pkl").read_bytes()))
    with pytest.raises(FormatError, match=message) as error:
        load_seed(tmp_path / "bad.pkl")
    assert "bad.pkl" in str(error.value)


@pytest.mark.parametrize("fmt, one, dtype", [("uint8", 255, np.uint8), ("uint16", 65535, np.uint16)])
def test_round_trip_within_half_a_step_and_much_smaller(tmp_path, fmt, one, dtype):
    planes = smooth_planes()
    save_seed(tmp_path / "a.pkl", [0, 3, 5], planes, "rsepm")
    save_seed(tmp_path / "b.pkl", [0, 3, 5], planes, "rsepm", fmt)
    a, b = load_seed(tmp_path / "a.pkl"), load_seed(tmp_path / "b.pkl")
    assert a["keys"].tolist() == b["keys"].tolist() == [0, 3, 5] and b["dialect"] == "rsepm"
    assert b["seed"].dtype == np.float32 and b["seed"].shape == planes.shape
    assert np.abs(b["seed"] - planes).max() <= 1 / (2 * one) + 1e-7
    # by hand: the stored bytes are round(one x v), deflated
    with open(tmp_path / "b.pkl", "rb") as f:
        stored = pickle.load(f)
    assert zlib.decompress(stored[f"seed_{fmt}"]) == np.rint(planes.astype(np.float64) * one).astype(dtype).tobytes()
    assert os.path.getsize(tmp_path / "b.pkl") * 2 < os.path.getsize(tmp_path / "a.pkl")
    # the authors' form is what float32 writes: "seed" is the array itself
    with open(tmp_path / "a.pkl", "rb") as f:
        assert np.array_equal(pickle.load(f)["seed"], planes)


def write(path, content):
    with open(path, "wb") as f:
        pickle.dump(content, f, protocol=4)


def test_size_guards_and_corrupt_files(tmp_path):
    keys = np.array([0, 1], np.int64)
    huge = tmp_path / "huge.pkl"  # a few bytes that claim 4 GB of planes
    write(huge, {"keys": keys, "seed_uint8": zlib.compress(b"\0" * 10), "shape": [1, 40000, 25000]})
    with pytest.raises(FormatError, match="decode to more than"):
        load_seed(huge, max_bytes=1 << 30)
    bomb = tmp_path / "bomb.pkl"  # inflates beyond its shape: stopped at the shape
    write(bomb, {"keys": keys, "seed_uint8": zlib.compress(b"\0" * 10_000_000), "shape": [1, 10, 10]})
    with pytest.raises(FormatError, match="for a shape of 100"):
        load_seed(bomb)
    corrupt = tmp_path / "corrupt.pkl"
    write(corrupt, {"keys": keys, "seed_uint8": b"not deflated", "shape": [1, 2, 2]})
    with pytest.raises(FormatError, match="corrupt uint8 seed"):
        load_seed(corrupt)
    shapeless = tmp_path / "shapeless.pkl"
    write(shapeless, {"keys": keys, "seed_uint8": zlib.compress(b"\0" * 4), "shape": "2x2"})
    with pytest.raises(FormatError, match="needs 'shape'"):
        load_seed(shapeless)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        save_seed(tmp_path / "x.pkl", [0, 1], np.full((1, 2, 2), 1.5, np.float32), "rsepm", "uint8")


def repeated_seed(path, copies, side=64):
    """A seed pickle of one (side, side) plane referenced `copies` times: ~16 KiB on disk,
    copies * side * side * 4 bytes once np.asarray builds the (copies, side, side) array."""
    plane = np.zeros((side, side), np.float32)
    with open(path, "wb") as f:
        pickle.dump({"keys": np.arange(copies + 1), "seed": [plane] * copies, "dialect": "rsepm"}, f)


def test_small_seed_pickle_that_expands_is_refused_before_decoding(tmp_path):
    """Before: load_seed had no limit and built the whole array (here 64 MiB, in real attacks GBs)."""
    path = tmp_path / "x.pkl"
    repeated_seed(path, 4096)
    assert os.path.getsize(path) < 100_000
    with pytest.raises(FormatError, match="more than 1,000,000 bytes") as error:
        load_seed(str(path), max_bytes=1_000_000)
    assert str(path) in str(error.value)
    repeated_seed(path, 8)  # 8 * 64 * 64 * 4 = 131,072 bytes: within the limit, read as before
    assert load_seed(str(path), max_bytes=1_000_000)["seed"].shape == (8, 64, 64)
    with pytest.raises(FormatError, match="exceeds the limit"):  # the file itself is too large
        load_seed(str(path), max_bytes=1_000)


def test_palette_masks_keep_their_indices_at_8_bits(tmp_path):
    colors = [[0, 0, 0], [128, 0, 0], [0, 128, 0]]
    mask = np.array([[0, 1, 2], [255, 1, 0]], dtype=np.uint8)
    save_mask(tmp_path / "m.png", mask, make_palette(colors))
    with Image.open(tmp_path / "m.png") as image:
        assert image.mode == "P"
        palette = image.getpalette()
        assert np.array_equal(np.array(image), mask)
    assert palette[3:6] == [128, 0, 0] and palette[6:9] == [0, 128, 0]
    assert palette[3 * 255 : 3 * 256] == [224, 224, 192]
    assert palette[9:12] == [0, 0, 0]  # black elsewhere
    assert np.array_equal(read_mask(tmp_path / "m.png"), mask)


def test_rgb_images_are_not_masks(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "rgb.png")
    with pytest.raises(FormatError, match="rgb.png.*mode RGB"):
        read_mask(tmp_path / "rgb.png")


def test_mask_decompression_bomb_names_the_file(tmp_path, monkeypatch):
    """Before: PIL's DecompressionBombError escaped read_mask (evaluation, builders) as a traceback."""
    path = str(tmp_path / "m.png")
    save_mask(path, np.zeros((40, 48), np.uint8), DatasetInfo("TOY").palette)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(FormatError, match="too large to decode safely") as error:
        read_mask(path)
    assert path in str(error.value)


# ---------------------------------------------------------------------------------------------
# JSON files and the settings record of an output folder (claim_output_folder)
# ---------------------------------------------------------------------------------------------
def weights_file(path, payload):
    with open(path, "wb") as f:
        f.write(payload)
    return str(path)


def fill(folder, names):
    for name in names:
        with open(os.path.join(folder, name), "w") as f:
            f.write("x")


def test_retrained_weights_of_the_same_size_are_other_settings(tmp_path):
    """The random-walk masks' case: a network retrained into the same tag gives a file of the same
    size; the sha256 tells them apart, and the path alone is not compared."""
    folder, weights = str(tmp_path / "pseudo-labels" / "t@rw" / "train"), tmp_path / "last.pth"
    claim_output_folder(folder, {"affinity_weights": file_fingerprint(weights_file(weights, b"A" * 64))}, ".png")
    fill(folder, ["a.png", "b.png"])
    retrained = file_fingerprint(weights_file(weights, b"B" * 64))
    assert retrained["size"] == 64
    with pytest.raises(UsageError, match="affinity_weights.sha256.*--overwrite true"):
        claim_output_folder(folder, {"affinity_weights": retrained}, ".png")
    moved = file_fingerprint(weights_file(tmp_path / "copy.pth", b"A" * 64))  # same content elsewhere
    claim_output_folder(folder, {"affinity_weights": moved}, ".png")
    assert sorted(n for n in os.listdir(folder) if n.endswith(".png")) == ["a.png", "b.png"]


def test_overwrite_removes_the_outputs_and_what_was_derived_from_them(tmp_path):
    folder = str(tmp_path / "predictions" / "t" / "validation")
    claim_output_folder(folder, {"th": 0.1}, ".pkl")
    fill(folder, ["a.pkl", "b.pkl"])
    evaluation = folder + ".eval.json"
    write_json(evaluation, {"mIoU": 50.0})
    assert claim_output_folder(folder, {"th": 0.2}, ".pkl", overwrite=True) == 2
    assert not os.path.exists(evaluation)
    assert [n for n in os.listdir(folder) if n.endswith(".pkl")] == []
    assert read_json(settings_path(folder)) == {"th": 0.2}


def test_a_record_beside_no_outputs_blocks_nothing(tmp_path):
    """A run that failed before writing any output (a truncated checkpoint, say) leaves its record;
    the corrected re-run with other settings goes ahead without --overwrite."""
    folder = str(tmp_path / "pseudo-labels" / "t" / "train")
    claim_output_folder(folder, {"weights": {"sha256": "aaa"}}, ".png")
    claim_output_folder(folder, {"weights": {"sha256": "bbb"}}, ".png")
    assert read_json(settings_path(folder)) == {"weights": {"sha256": "bbb"}}
    fill(folder, ["a.png"])
    with pytest.raises(UsageError, match="other settings"):
        claim_output_folder(folder, {"weights": {"sha256": "ccc"}}, ".png")


def test_overwrite_refuses_a_folder_that_leads_outside_the_root(tmp_path):
    outside = tmp_path / "precious"
    outside.mkdir()
    fill(str(outside), ["keep.png"])
    root = tmp_path / "exp"
    (root / "pseudo-labels" / "t").mkdir(parents=True)
    link = root / "pseudo-labels" / "t" / "train"
    os.symlink(outside, link)
    with pytest.raises(UsageError, match="outside the experiment root"):
        claim_output_folder(str(link), {"x": 1}, ".png", overwrite=True, root=str(root))
    assert os.listdir(outside) == ["keep.png"]
    # a root that is itself a link (experiments -> /scratch/...) is the user's layout: allowed
    scratch = tmp_path / "scratch"
    (scratch / "pseudo-labels" / "t" / "train").mkdir(parents=True)
    os.symlink(scratch, tmp_path / "exp2")
    claim_output_folder(
        str(tmp_path / "exp2" / "pseudo-labels" / "t" / "train"),
        {"x": 1},
        ".png",
        overwrite=True,
        root=str(tmp_path / "exp2"),
    )


@pytest.mark.parametrize("payload, words", [(b'{"a": "\xff"}', "not UTF-8"), (b"[" * 100000, "nested too deeply")])
def test_a_settings_file_that_is_not_json_text_is_one_line(tmp_path, payload, words):
    path = tmp_path / "settings.json"
    path.write_bytes(payload)
    with pytest.raises(FormatError, match=words):
        read_json(str(path))
