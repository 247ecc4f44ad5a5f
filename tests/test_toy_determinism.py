"""The same command with the same seed gives the same weights, byte for byte (issue: determinism).

train_rsepm.py trains twice for one epoch in which RecurSeed and EdgePredictMix are both on, with
one DataLoader worker so that worker seeding is exercised, and the two last.pth files must be
identical bytes. The first run is a subprocess in the environment tools/toy/toy_pipeline.py gives
every stage (fixed threads and PYTHONHASHSEED), the second runs in this process after the global
random generators were disturbed: the result may depend on neither. A third run with another
--seed must differ, so the comparison can fail. (A subprocess costs ~10 s of start-up on a
loaded 2-core machine, hence only one.)
"""

import hashlib
import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

import train_rsepm
from core.io import write_json
from tools.paths import model_path
from tools.toy.toy_pipeline import stage_environment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TAG = "determinism"


@pytest.fixture(scope="module")
def toy(toy_dataset):
    return toy_dataset(num_train=0, num_validation=0, num_test=0)


def train_argv(root, pred_dir, seed):
    """One epoch of RS+EPM: 2 iterations of batch 4, RS and EPM from the start, one loader worker."""
    return [
        "--root_dir",
        root,
        "--dataset",
        "TOY",
        "--domain",
        "train_aug",
        "--gpus",
        "cpu",
        "--backbone",
        "resnet18",
        "--pretrained",
        "none",
        "--crop_size",
        "32",
        "--min_image_size",
        "32",
        "--max_image_size",
        "64",
        "--batch_size",
        "4",
        "--num_workers",
        "1",
        "--max_epoch",
        "1",
        "--rs_start",
        "1",
        "--mix_start",
        "1",
        "--pamr_iterations",
        "2",
        "--pamr_dilations",
        "1,2",
        "--pred_dir",
        str(pred_dir),
        "--tag",
        TAG,
        "--seed",
        str(seed),
        "--log_interval",
        "1",
    ]


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_two_runs_with_one_seed_give_identical_weights(toy, tmp_path):
    env = stage_environment(threads=1)
    env["CUDA_VISIBLE_DEVICES"] = ""
    result = subprocess.run(
        [sys.executable, "train_rsepm.py", *train_argv(toy, tmp_path / "a", 0)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    first = sha256(model_path(str(tmp_path / "a"), TAG))

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as OMP_NUM_THREADS=1 did for the subprocess
    try:
        random.seed(12345)
        np.random.seed(12345)
        torch.manual_seed(12345)
        torch.rand(7), np.random.rand(3), random.random()
        train_rsepm.main(train_rsepm.get_args_parser().parse_args(train_argv(toy, tmp_path / "b", 0)))
        assert sha256(model_path(str(tmp_path / "b"), TAG)) == first
        train_rsepm.main(train_rsepm.get_args_parser().parse_args(train_argv(toy, tmp_path / "c", 1)))
        assert sha256(model_path(str(tmp_path / "c"), TAG)) != first
    finally:
        torch.set_num_threads(threads)


def test_stage_environment_fixes_threads_and_hash_seed():
    env = stage_environment(threads=3)
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "3"
    assert env["PYTHONHASHSEED"] == "0"


def test_pipeline_prints_numbered_stages_then_times_table_and_notebook(tmp_path, monkeypatch, capsys):
    """toy_pipeline.main with the commands replaced by a recorder: the output's order and the record."""
    from tools.toy import toy_pipeline as tp

    commands = []

    def run(self, command, what):
        commands.append((command[0], dict(self.env)))
        print(f"== [{len(self.times) + 1}] {what}")
        self.times.append({"stage": what, "seconds": 1.5})

    def evaluation(self, common, pred_dir, folder, tag, domain, what):
        self.run(["evaluate.py"], what)
        return {
            "mIoU": 10.0 * len(self.times),
            "FP": 0.1,
            "FN": 0.2,
            "num_images": 3,
            "domain": domain,
            "tag": tag,
            "threshold": None,
        }

    pretrained = tmp_path / "pretrained.pth"
    pretrained.write_bytes(b"")
    # with the record of this release's pretraining settings, as tools/toy/pretrain_toy.py leaves it
    from tools.toy import pretrain_toy

    settings = pretrain_toy.record_settings(pretrain_toy.get_args_parser().parse_args(tp.pretrain_command([])[1:]))
    write_json(pretrain_toy.record_path(str(pretrained)), {"settings": settings, "code": pretrain_toy.source_digests()})
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "old").write_text("x")
    monkeypatch.setattr(tp.Runner, "run", run)
    monkeypatch.setattr(tp.Runner, "evaluation", evaluation)
    monkeypatch.setattr(tp, "PRETRAINED", str(pretrained))
    monkeypatch.setattr(tp, "DATA", str(tmp_path / "data"))
    monkeypatch.setattr(tp, "PRED_ROOT", str(tmp_path / "exp") + os.sep)
    monkeypatch.chdir(ROOT)
    tp.main(tp.get_args_parser().parse_args(["--fresh", "--threads", "1"]))
    out = capsys.readouterr().out
    assert not (tmp_path / "data" / "old").exists()  # --fresh removed the old dataset
    assert pretrained.exists()  # and kept the pretrained backbone
    assert all(env["OMP_NUM_THREADS"] == "1" and env["PYTHONHASHSEED"] == "0" for _, env in commands)
    names = [c for c, _ in commands]
    assert names[:2] == ["tools/builders/make_toy_dataset.py", "train_rsepm.py"] and "train_seg.py" in names
    numbers = [int(line.split("]")[0][4:]) for line in out.splitlines() if line.startswith("== [")]
    assert numbers == list(range(1, len(commands) + 1))
    # The end: time per stage, then the table (six rows), then the notebook.
    tail = out[out.index("Time per stage:") :]
    assert tail.index("| stage |") < tail.index("demo.ipynb")
    assert len([line for line in tail.splitlines() if line.startswith("| ") and not line.startswith("| stage |")]) == 6
    record = tp.read_json(str(tmp_path / "exp" / "summary.json"))
    assert record["environment"]["threads"] == 1 and record["environment"]["PYTHONHASHSEED"] == "0"
    assert [s["mIoU"] for s in record["stages"]] == sorted(s["mIoU"] for s in record["stages"])
    # the comparison with the README's table: these settings, another backbone, other numbers
    assert record["settings_digest"] == tp.settings_digest()
    assert "settings: the README table's (digest matches)" in out
    assert "NOT the README table's" in out and "seed-0 rows: differ from the README's" in out
