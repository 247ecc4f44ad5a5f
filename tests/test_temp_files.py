"""Temporary files of killed writes: one name pattern, removed at the start of the next run
(core/safety.py; training models/{tag}/, conversion and inference output folders)."""

import argparse
import os
import time

import numpy as np
import torch
from helpers import run_main
from PIL import Image

import convert_seed_to_pseudo_masks as convert
from core.io import atomic_output, save_seed
from core.safety import PROCESS_START, is_temp_name, remove_stale_temp_files, temp_path
from tools.engine import distributed, trainer
from tools.paths import model_dir, pseudo_labels_dir

STALE = [".resume.pth.k3j_9x0a.rsepm.tmp", ".last.pth.0123abcd.rsepm.tmp", ".a b.png.zzzzzzzz.rsepm.tmp"]
# near misses: other programs' files, or ours with the pattern broken; never removed
KEPT = [
    ".resume.pth.tmp",
    "resume.pth.k3j_9x0a.rsepm.tmp",
    ".resume.pth.k3j_9x0.rsepm.tmp",
    ".resume.pth.k3j_9x0a.rsepm.tmp.bak",
    ".resume.pth.K3J_9X0A.rsepm.tmp",
    "notes.tmp",
    "last.pth",
    "..k3j_9x0a.rsepm.tmp",
]


def make_files(folder, names, age_s):
    os.makedirs(folder, exist_ok=True)
    for name in names:
        path = os.path.join(folder, name)
        with open(path, "w") as f:
            f.write("partial")
        then = time.time() - age_s
        os.utime(path, (then, then))


def test_the_pattern_matches_exactly():
    assert [is_temp_name(n) for n in STALE] == [True] * len(STALE)
    assert [is_temp_name(n) for n in KEPT] == [False] * len(KEPT)


def test_atomic_output_and_link_temporaries_follow_the_pattern(tmp_path):
    target = tmp_path / "resume.pth"
    with atomic_output(target) as f:
        f.write(b"x")
        during = os.listdir(tmp_path)
    assert len(during) == 1 and is_temp_name(during[0]) and during[0].startswith(".resume.pth.")
    assert os.listdir(tmp_path) == ["resume.pth"]
    name = os.path.basename(temp_path(str(tmp_path / "image" / "a.jpg")))
    assert is_temp_name(name) and name.startswith(".a.jpg.")


def test_removes_stale_temporaries_only(tmp_path):
    folder = str(tmp_path / "models" / "tag")
    make_files(folder, STALE + KEPT, age_s=3600)
    make_files(folder, [".fresh.pth.abcdefgh.rsepm.tmp"], age_s=-5)  # written after this process started
    make_files(os.path.join(folder, "sub"), [STALE[0]], age_s=3600)  # another folder: not ours to clean
    os.mkdir(os.path.join(folder, ".dir.abcdefgh.rsepm.tmp"))
    removed = remove_stale_temp_files(folder)
    assert sorted(os.path.basename(p) for p in removed) == sorted(STALE)
    assert sorted(os.listdir(folder)) == sorted(
        KEPT + [".fresh.pth.abcdefgh.rsepm.tmp", "sub", ".dir.abcdefgh.rsepm.tmp"]
    )
    assert os.listdir(os.path.join(folder, "sub")) == [STALE[0]]
    assert remove_stale_temp_files(str(tmp_path / "missing")) == []


def test_cutoff_is_the_process_start(tmp_path):
    assert PROCESS_START <= time.time()
    make_files(str(tmp_path), [STALE[0]], age_s=time.time() - PROCESS_START - 1)  # 1 s after the start
    assert remove_stale_temp_files(str(tmp_path)) == []
    assert remove_stale_temp_files(str(tmp_path), before=time.time() + 1) == [str(tmp_path / STALE[0])]


def test_training_run_cleans_its_model_folder(tmp_path):
    pred_dir = str(tmp_path / "experiments")
    folder = model_dir(pred_dir, "t")
    make_files(folder, STALE + ["resume.pth.tmp"], age_s=3600)
    make_files(os.path.join(folder, "logs"), [".log.jsonl.abcdefgh.rsepm.tmp"], age_s=3600)
    args = argparse.Namespace(
        pred_dir=pred_dir,
        tag="t",
        max_epoch=1,
        amp="off",
        resume=False,
        log_interval=1,
        save_interval=100,
        batch_size=1,
        seed=0,
    )
    network = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(2, 2)), batch_size=1)
    with trainer.TrainingRun(args, distributed.setup_distributed("cpu"), network, optimizer, loader):
        pass
    assert sorted(os.listdir(folder)) == ["config.json", "logs", "resume.pth.tmp"]
    assert not [n for n in os.listdir(os.path.join(folder, "logs")) if is_temp_name(n)]


def test_conversion_cleans_its_output_folder(tmp_path):
    root, pred_dir = tmp_path / "TOY", str(tmp_path / "experiments")
    (root / "train" / "image").mkdir(parents=True)
    image = np.random.default_rng(0).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    Image.fromarray(image).save(root / "train" / "image" / "a.jpg")
    seed = np.zeros((1, 12, 16), np.float32)
    seed[0, 3:9, 4:12] = 0.9
    save_seed(os.path.join(pred_dir, "predictions", "t", "train", "a.pkl"), [0, 1], seed, "rsepm")
    out = pseudo_labels_dir(pred_dir, "t", "train")
    make_files(out, STALE + ["keep.png.tmp"], age_s=3600)
    summary = run_main(
        convert,
        [
            "--root_dir",
            str(root),
            "--dataset",
            "TOY",
            "--domain",
            "train",
            "--tag",
            "t",
            "--pred_dir",
            pred_dir,
            "--num_workers",
            "1",
        ],
    )
    assert summary["written"] == 1 and not summary["failed"]
    assert sorted(os.listdir(out)) == ["a.png", "keep.png.tmp"]


def writer_name(target, pid, start):
    from core.safety import HOST

    return f".{target}.{HOST}-{pid}-{start}.k3j_9x0a.rsepm.tmp"


def test_temporaries_carry_their_writer(tmp_path):
    """The name holds this host, this pid and this process's start ticks (read independently)."""
    from core.safety import HOST

    name = os.path.basename(temp_path(str(tmp_path / "resume.pth")))
    with open(f"/proc/{os.getpid()}/stat") as f:
        start = f.read().rsplit(")", 1)[1].split()[19]
    assert name.startswith(f".resume.pth.{HOST}-{os.getpid()}-{start}.") and is_temp_name(name)


def test_a_killed_writers_file_goes_at_once_a_live_writers_stays(tmp_path):
    """Cleanup asks whether the writer still runs, not how old the file is: the temporary of a
    process killed a moment ago goes even though it is newer than this process; a live writer's
    (this process, or a running child) stays even when it is an hour old; a recycled pid (same
    pid, other start time) counts as gone."""
    import subprocess
    import sys

    from core.safety import process_start_ticks

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        child_start = process_start_ticks(child.pid)
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead_start = process_start_ticks(dead.pid) or 1
        dead.wait()
        me = os.getpid()
        mine_start = process_start_ticks(me)
        names = {
            "dead": writer_name("resume.pth", dead.pid, dead_start),
            "recycled": writer_name("last.pth", me, mine_start + 1),
            "live_child": writer_name("a.png", child.pid, child_start),
            "mine": writer_name("b.png", me, mine_start),
        }
        make_files(str(tmp_path), [names["dead"], names["recycled"]], age_s=-5)  # newer than this process
        make_files(str(tmp_path), [names["live_child"], names["mine"]], age_s=3600)
        removed = sorted(os.path.basename(p) for p in remove_stale_temp_files(str(tmp_path)))
        assert removed == sorted([names["dead"], names["recycled"]])
        assert sorted(os.listdir(tmp_path)) == sorted([names["live_child"], names["mine"]])
    finally:
        child.kill()
        child.wait()
    assert [os.path.basename(p) for p in remove_stale_temp_files(str(tmp_path))] == [names["live_child"]]


def test_another_hosts_temporaries_fall_back_to_time(tmp_path):
    from core.safety import HOST

    other = "000000" if HOST != "000000" else "ffffff"
    old, new = f".x.png.{other}-1-1.k3j_9x0a.rsepm.tmp", f".y.png.{other}-1-1.k3j_9x0a.rsepm.tmp"
    make_files(str(tmp_path), [old], age_s=3600)
    make_files(str(tmp_path), [new], age_s=-5)
    assert [os.path.basename(p) for p in remove_stale_temp_files(str(tmp_path))] == [old]
