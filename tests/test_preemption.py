"""Preemption-safe training (issue 23 item 6): SIGTERM/SIGUSR1 save the resume state at the next
iteration boundary and stop, and the resumed run ends with the weights of an uninterrupted one;
resume.pth records the dataset's identity and a resume on another dataset is refused."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import read_run_log

import train_rsepm
from core.errors import Preempted, ResumeError
from tools.engine import resume_state, runlog
from tools.paths import model_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PER_EPOCH, EPOCHS = 4, 2  # 8 images, batch 2


@pytest.fixture(scope="module")
def toy(toy_dataset):
    return toy_dataset(max_size=48)


def argv(root, pred_dir, *extra):
    """The cheapest real run, 2 epochs x 4 iterations; only a signal or an epoch's end saves."""
    return [
        "--root_dir",
        root,
        "--dataset",
        "TOY",
        "--domain",
        "train_aug",
        "--gpus",
        "cpu",
        "--threads",
        "1",
        "--backbone",
        "resnet18",
        "--pretrained",
        "none",
        "--crop_size",
        "32",
        "--min_image_size",
        "32",
        "--max_image_size",
        "48",
        "--batch_size",
        "2",
        "--num_workers",
        "0",
        "--max_epoch",
        str(EPOCHS),
        "--rs_start",
        "1",
        "--mix",
        "none",
        "--pamr_iterations",
        "1",
        "--pamr_dilations",
        "1",
        "--pred_dir",
        str(pred_dir),
        "--tag",
        "t",
        "--save_interval",
        "1000",
        "--log_interval",
        "1",
        *extra,
    ]


def train(*args):
    return train_rsepm.main(train_rsepm.get_args_parser().parse_args(argv(*args)))


def folder(pred_dir):
    return model_dir(str(pred_dir), "t")


def assert_same_weights(a, b):
    wa = torch.load(os.path.join(folder(a), "last.pth"), weights_only=True)
    wb = torch.load(os.path.join(folder(b), "last.pth"), weights_only=True)
    assert list(wa) == list(wb)
    differ = [k for k in wa if wa[k].dtype != wb[k].dtype or wa[k].numpy().tobytes() != wb[k].numpy().tobytes()]
    assert not differ, f"{len(differ)} of {len(wa)} tensors differ: {differ[:5]}"


@pytest.fixture(scope="module")
def whole(toy, tmp_path_factory):
    """The uninterrupted run everything is compared with."""
    pred_dir = tmp_path_factory.mktemp("whole")
    assert train(toy, pred_dir)["iterations"] == PER_EPOCH * EPOCHS
    return pred_dir


# A real process and a real signal; each step sleeps 0.5 s so that the signal, sent once the log
# shows iteration 2, lands mid-run whatever the machine's speed.
SLOW_RUN = """import sys, time
import tools.engine.trainer as t
step = t.TrainingRun.step
t.TrainingRun.step = lambda self, loss: (time.sleep(0.5), step(self, loss))[1]
import train_rsepm
from tools.args import cli
cli(train_rsepm.main, train_rsepm.get_args_parser(), sys.argv[1:])
"""


def test_sigterm_mid_epoch_saves_and_the_resumed_run_matches_an_uninterrupted_one(toy, whole, tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_RUN, *argv(toy, tmp_path)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    log = os.path.join(folder(tmp_path), "logs", "log.jsonl")
    deadline = time.monotonic() + 300
    try:
        seen = 0
        while seen < 2 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
            if os.path.isfile(log):
                with open(log) as f:
                    seen = max([json.loads(line)["iteration"] for line in f if line.endswith("\n")], default=0)
        assert seen >= 2, f"the run logged no second iteration: {process.communicate()}"
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 1, stderr
    resume = os.path.join(folder(tmp_path), "resume.pth")
    last_line = stderr.strip().splitlines()[-1]
    match = re.fullmatch(
        r"error: stopped by SIGTERM after iteration (\d+): resume state saved to (.+); "
        r"run again with --resume true",
        last_line,
    )
    assert match and match.group(2) == resume, last_line
    stopped = int(match.group(1))
    assert seen <= stopped < PER_EPOCH * EPOCHS  # mid-run, and not before what was already logged
    assert last_line[len("error: ") :] in stdout  # the log says it too
    assert not os.path.exists(os.path.join(folder(tmp_path), "last.pth"))
    # nothing lost: the save holds the step the signal interrupted (--save_interval 1000 saved nothing)
    state = torch.load(resume, weights_only=True)
    assert state["iteration"] == stopped and state["epoch"] * PER_EPOCH + state["step"] == stopped
    assert read_run_log(tmp_path)[-1]["iteration"] == stopped

    # a resume on another dataset is refused before anything is touched (--root_dir may change)
    before = os.path.getmtime(resume)
    other = str(tmp_path / "TOY")
    shutil.copytree(toy, other)
    images = os.path.join(other, "train_aug", "image")
    ids = sorted(f[:-4] for f in os.listdir(images))
    target, donor = os.path.join(images, ids[1] + ".jpg"), os.path.join(images, ids[2] + ".jpg")
    old_size, new_size = os.path.getsize(target), os.path.getsize(donor)
    assert old_size != new_size
    shutil.copyfile(donor, target)  # same count, one image of another byte size
    with pytest.raises(ResumeError) as info:
        train(other, tmp_path, "--resume", "true")
    message = str(info.value)
    assert message.startswith(resume + ": cannot resume on another dataset: the run started on 8 images")
    assert "this one has 8" in message and f"the image of {ids[1]} was {old_size} bytes, now {new_size}" in message
    shutil.copytree(toy, other, dirs_exist_ok=True)
    for path in (os.path.join(images, ids[5] + ".jpg"), os.path.join(other, "train_aug", "xml", ids[5] + ".xml")):
        os.remove(path)
    with pytest.raises(
        ResumeError, match=rf"started on 8 images .*this one has 7 .*first difference: {ids[5]} is gone"
    ):
        train(other, tmp_path, "--resume", "true")
    assert os.path.getmtime(resume) == before

    resumed = train(toy, tmp_path, "--resume", "true")
    assert resumed["iterations"] == PER_EPOCH * EPOCHS
    assert_same_weights(whole, tmp_path)
    assert read_run_log(tmp_path) == read_run_log(whole)


def test_sigusr1_at_an_epochs_end_stops_after_the_epoch_save(toy, whole, tmp_path, monkeypatch):
    """The signal arrives in the last step of epoch 1: the epoch's end (logs, the epoch's resume
    save) completes first, then the run stops; handlers are restored whatever the ending."""
    original, handler = runlog.RunLogger.add, signal.getsignal(signal.SIGUSR1)

    def add(self, scalars, it):
        if it == PER_EPOCH - 1:
            os.kill(os.getpid(), signal.SIGUSR1)
        return original(self, scalars, it)

    with monkeypatch.context() as patch:
        patch.setattr(runlog.RunLogger, "add", add)
        with pytest.raises(Preempted, match=rf"stopped by SIGUSR1 after iteration {PER_EPOCH}: "):
            train(toy, tmp_path)
    assert signal.getsignal(signal.SIGUSR1) is handler
    state = torch.load(os.path.join(folder(tmp_path), "resume.pth"), weights_only=True)
    assert (state["epoch"], state["step"], state["iteration"]) == (1, 0, PER_EPOCH)
    train(toy, tmp_path, "--resume", "true")
    assert signal.getsignal(signal.SIGUSR1) is handler
    assert_same_weights(whole, tmp_path)


def test_dataset_identity_by_hand(toy, whole):
    """resume.pth and config.json record the ids with their image and xml sizes and modification
    times (os.stat)."""
    split = os.path.join(toy, "train_aug")
    ids = sorted(f[:-4] for f in os.listdir(os.path.join(split, "image")))
    image, xml = (
        (lambda i: os.path.join(split, "image", i + ".jpg")),
        (lambda i: os.path.join(split, "xml", i + ".xml")),
    )
    expected = [
        [
            i,
            os.path.getsize(image(i)),
            os.path.getsize(xml(i)),
            os.stat(image(i)).st_mtime_ns,
            os.stat(xml(i)).st_mtime_ns,
        ]
        for i in ids
    ]
    state = torch.load(os.path.join(folder(whole), "resume.pth"), weights_only=True)
    assert state["dataset"]["files"] == expected and state["dataset"]["count"] == 8
    import hashlib

    assert state["dataset"]["sha256"] == hashlib.sha256(json.dumps(expected).encode()).hexdigest()
    with open(os.path.join(folder(whole), "config.json")) as f:
        assert json.load(f)["dataset_identity"] == {"count": 8, "sha256": state["dataset"]["sha256"]}


def test_check_dataset_messages():
    def identity(files):
        return {"count": len(files), "sha256": json.dumps(files), "files": files}

    saved = identity([["a", 10, 5], ["b", 20, 6], ["c", 30, 7]])
    assert resume_state.check_dataset("r.pth", saved, identity([["a", 10, 5], ["b", 20, 6], ["c", 30, 7]])) == []
    with pytest.raises(ResumeError, match=r"3 images .*has 3 .*the label file of b was 6 bytes, now 9\."):
        resume_state.check_dataset("r.pth", saved, identity([["a", 10, 5], ["b", 20, 9], ["c", 30, 7]]))
    with pytest.raises(ResumeError, match=r"has 3 .*b is gone \(1 in all\); d is new \(1 in all\)"):
        resume_state.check_dataset("r.pth", saved, identity([["a", 10, 5], ["c", 30, 7], ["d", 20, 6]]))
    assert "records no dataset identity" in resume_state.check_dataset("r.pth", None, saved)[0]
    assert resume_state.check_dataset("r.pth", saved, None) == []  # a dataset without files: nothing to check


# Under torchrun only rank 1 is signalled, in iteration 1; the ranks agree at the log line of
# iteration 3 (--log_interval 3) and both save and stop there. 16 images, global batch 4 (two per
# rank: batch norm needs more than one): 4 iterations an epoch.
DDP_RUN = """import os, signal, sys
import tools.engine.trainer as t
step = t.TrainingRun.step
def signalled_step(self, loss):
    step(self, loss)
    if os.environ["RANK"] == "1" and self.iteration == 1:
        os.kill(os.getpid(), signal.SIGTERM)
t.TrainingRun.step = signalled_step
import train_rsepm
from tools.args import cli
cli(train_rsepm.main, train_rsepm.get_args_parser(), sys.argv[1:])
"""


def test_ddp_ranks_stop_at_the_same_log_line(toy_dataset, tmp_path):
    toy = toy_dataset(max_size=48, num_train_aug=16)
    script = tmp_path / "run.py"
    script.write_text(DDP_RUN)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONPATH=ROOT)
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
        *argv(toy, tmp_path, "--log_interval", "3", "--batch_size", "4"),
    ]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    resume = os.path.join(folder(tmp_path), "resume.pth")
    for who in ("SIGTERM", "a signal to another rank"):
        assert f"error: stopped by {who} after iteration 3: resume state saved to {resume}" in result.stderr, (
            result.stderr[-3000:]
        )
    state = torch.load(resume, weights_only=True)
    assert (state["epoch"], state["step"], state["iteration"], len(state["rng"])) == (0, 3, 3, 2)
    assert [r["iteration"] for r in read_run_log(tmp_path)] == [3]


# --- loader workers ignore the scheduler's signals, so they must be ended by us ----------------
WORKER_SCRIPT = """
import sys, torch
sys.path.insert(0, {root!r})
from tools.engine import data_loading, distributed
dataset = torch.utils.data.TensorDataset(torch.arange(8.0))
if {persistent}:
    loader = data_loading.build_loader(dataset, distributed.DistContext(), batch_size=2, num_workers=1, seed=0)
else:  # as tools/toy/pretrain_toy.py: workers of a plain DataLoader, seeded and SIGTERM-deaf by seed_worker
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=1, worker_init_fn=data_loading.seed_worker)
batches = iter(loader)
next(batches)  # the persistent worker runs (and ignores SIGTERM, seed_worker)
{ending}
"""


@pytest.mark.parametrize(
    "ending",
    [
        "raise RuntimeError('an error that keeps the loader in its traceback')",
        "import os, signal; os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C",
    ],
)
@pytest.mark.parametrize("persistent", [True, False])
def test_a_process_ended_by_an_error_or_ctrl_c_does_not_wait_forever_for_its_loader_worker(ending, persistent):
    # multiprocessing's exit hook SIGTERMs a daemon worker and then waits for it: with a worker that
    # ignores SIGTERM, that wait never ended (pytest itself hung after a test whose traceback held
    # a loader); close_loader's exit hook ends the workers first
    script = WORKER_SCRIPT.format(root=ROOT, ending=ending, persistent=persistent)
    try:
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, start_new_session=True
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the process did not exit: its DataLoader worker was never ended")
    assert done.returncode != 0 and ("RuntimeError" in done.stderr or "KeyboardInterrupt" in done.stderr), done.stderr
