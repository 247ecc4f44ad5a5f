"""Hardening of training runs (issue 14): resume refuses changed run-shaping flags (3), the log of a
resumed run equals an uninterrupted one (9), one bad file is a counted skip (4) and a full disk
ends in a one-line message naming the path (6)."""
import errno
import io
import json
import os

import pytest
import torch

import core.io
import train_rsepm
from core.weights import save_weights
from core.errors import OutputError
from core.io import write_json
from tools.engine import resume_state
from tools.args import cli
from tools.engine.runlog import RunLogger
from tools.paths import model_dir
from helpers import kill_at

TIME_FIELDS = {"images_per_s"}


@pytest.fixture(scope="module")
def toy(toy_dataset):
    return toy_dataset(max_size=48)


def argv(root, pred_dir, *extra):
    """2 epochs x 2 iterations (8 images, batch 4), no mix: the cheapest real run."""
    return ["--root_dir", root, "--dataset", "TOY", "--domain", "train_aug", "--gpus", "cpu",
            "--backbone", "resnet18", "--pretrained", "none", "--crop_size", "32", "--min_image_size", "32",
            "--max_image_size", "48", "--batch_size", "4", "--num_workers", "0", "--max_epoch", "2",
            "--rs_start", "1", "--mix", "none", "--pamr_iterations", "1", "--pamr_dilations", "1",
            "--pred_dir", str(pred_dir), "--tag", "t", "--save_interval", "1", *extra]


def read_log(pred_dir):
    with open(os.path.join(model_dir(str(pred_dir), "t"), "logs", "log.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k not in TIME_FIELDS} for line in f]


def test_resume_refuses_changed_flags_and_logs_like_an_uninterrupted_run(toy, tmp_path, monkeypatch):
    """--log_interval 4: the log line of iteration 4 averages iterations 3 and 4, and the run is
    killed between them (resume.pth of iteration 3 holds the half-filled meter)."""
    whole = train_rsepm.main(train_rsepm.get_args_parser().parse_args(argv(toy, tmp_path / "a", "--log_interval", "4")))
    assert whole["iterations"] == 4
    with monkeypatch.context() as patch:
        kill_at(patch, 3)
        with pytest.raises(KeyboardInterrupt):
            train_rsepm.main(train_rsepm.get_args_parser().parse_args(argv(toy, tmp_path / "b", "--log_interval", "4")))
    resume = os.path.join(model_dir(str(tmp_path / "b"), "t"), "resume.pth")
    before = os.path.getmtime(resume)

    # item 3: a changed run-shaping flag is refused, naming the flag, both values and what to do
    for flag, old, new in (("--lr", "0.01", "0.02"), ("--max_epoch", "2", "3"), ("--pamr_dilations", "1", "1,2")):
        with pytest.raises(resume_state.ResumeError) as info:
            train_rsepm.main(train_rsepm.get_args_parser().parse_args(argv(toy, tmp_path / "b", "--log_interval", "4", "--resume", "true", flag, new)))
        message = str(info.value)
        assert f"{flag} was {old}, now {new}" in message and resume in message, message
        assert f"Pass the old value(s) ({flag} {old})" in message and "new --tag" in message
    assert os.path.getmtime(resume) == before  # nothing touched

    # flags of the allowlist may change (--save_interval, --num_workers stay out of the record)
    resumed = train_rsepm.main(train_rsepm.get_args_parser().parse_args(argv(toy, tmp_path / "b", "--log_interval", "4", "--resume", "true",
                                    "--save_interval", "7")))
    assert resumed["iterations"] == 4
    # item 9: identical records, iteration 4 included (before: the mean of iteration 4 alone)
    log_a, log_b = read_log(tmp_path / "a"), read_log(tmp_path / "b")
    assert [r["iteration"] for r in log_a] == [2, 4]
    assert log_a == log_b


def test_settings_check_by_hand():
    saved = {"batch_size": 16, "lr": 0.01, "old_flag": 1}
    assert resume_state.check_settings("r.pth", saved, {"batch_size": 16, "lr": 0.01, "old_flag": 1}) == []
    with pytest.raises(resume_state.ResumeError, match=r"--batch_size was 16, now 8; --lr was 0.01, now 0.1"):
        resume_state.check_settings("r.pth", saved, {"batch_size": 8, "lr": 0.1, "old_flag": 1})
    # a flag known to one side only is not compared but reported; an old file without a record warns
    assert "--new_flag" in resume_state.check_settings("r.pth", saved, {**saved, "new_flag": 2})[0]
    assert "records no flags" in resume_state.check_settings("r.pth", None, saved)[0]
    # a new script's flags are recorded by default; only the allowlist is left out
    recorded = resume_state.run_settings({"radius": 5, "num_workers": 4, "log_interval": 9, "beta": 10.0})
    assert recorded == {"radius": 5, "beta": 10.0}


# --- item 6: full disk ------------------------------------------------------------------------
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


def test_output_folder_that_cannot_be_created_is_one_line(toy, tmp_path, capsys):
    """--pred_dir below a file (as a read-only or permission-denied folder, which root cannot
    simulate): `error: PATH: cannot write (...)` and exit 1, not a NotADirectoryError traceback."""
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit) as info:
        cli(train_rsepm.main, train_rsepm.get_args_parser(), argv(toy, tmp_path / "file" / "out"))
    message = str(info.value.code)
    assert message.startswith("error: ") and "cannot write" in message and "a parent of the path is a file" in message
    assert str(tmp_path / "file" / "out") in message
    with pytest.raises(OutputError, match=r"logs: cannot write the logs \(\[Errno 20\]"):
        RunLogger(str(tmp_path / "file" / "logs"))


# --- item 4: one bad file is a counted skip -------------------------------------------------------
def png_header(width, height):
    """The first bytes of a PNG that claims width x height (no pixel data follows)."""
    import struct
    import zlib
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


@pytest.mark.parametrize("workers", [0, 1])  # 1: the dataset sits under build_loader's worker wrapper
def test_bad_files_are_skipped_counted_and_listed_after_the_weights_are_saved(toy, tmp_path, workers):
    import multiprocessing
    import shutil
    from core.errors import DatasetError
    root = str(tmp_path / "TOY")
    shutil.copytree(toy, root)
    images = os.path.join(root, "train_aug", "image")
    ids = sorted(f[:-4] for f in os.listdir(images))
    with open(os.path.join(images, ids[0] + ".jpg"), "wb") as f:
        f.write(png_header(100_000, 100_000))  # PIL's DecompressionBombError
    with open(os.path.join(images, ids[1] + ".jpg"), "wb") as f:
        f.write(png_header(10_000, 6_000))  # 60 M pixels: above --max_image_pixels 50e6
    path = os.path.join(images, ids[2] + ".jpg")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) * 2 // 3)  # a JPEG cut short: the header reads, the pixels do not
    xml = os.path.join(root, "train_aug", "xml", ids[3] + ".xml")
    with open(xml) as f:
        text = f.read()
    with open(xml, "w") as f:
        f.write(_with_inf(text))
    with pytest.raises(DatasetError) as info:
        # batch 7: the one batch of an epoch holds every tagged image, so each bad one is met
        train_rsepm.main(train_rsepm.get_args_parser().parse_args(argv(root, tmp_path / "out", "--log_interval", "1", "--batch_size", "7",
                                                                  "--num_workers", str(workers))))
    message = str(info.value)
    # the error's traceback still holds the loader: its worker must have been ended all the same
    assert not multiprocessing.active_children()
    assert "skipped 4 bad file(s)" in message, message
    for i in ids[:4]:
        assert i in message
    assert "decompression bomb" in message and "above --max_image_pixels 50000000" in message
    assert "truncated" in message and ids[3] + ".xml: <" in message and "not a finite pixel coordinate" in message
    directory = model_dir(str(tmp_path / "out"), "t")
    assert os.path.isfile(os.path.join(directory, "last.pth"))  # saved before the error
    assert "(2x)" in message  # met in both epochs, listed once
    assert [r["iteration"] for r in read_log(tmp_path / "out")] == [1, 2]


def _with_inf(text):
    start = text.index("<xmin>") + len("<xmin>")
    return text[:start] + "inf" + text[text.index("</xmin>"):]
