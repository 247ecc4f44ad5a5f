"""core/progress.py: a tqdm bar on a terminal, separate plain lines when stderr is a file, and a
real program (tools/toy/pretrain_toy.py) writing countable progress lines into a log file."""

import io
import os
import re
import subprocess
import sys

import pytest

from core import progress as progress_module
from core.progress import LineProgress, format_seconds, progress
from tools.paths import REPO_ROOT


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(progress_module.time, "monotonic", fake)
    return fake


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_file_gets_a_line_progress_and_a_terminal_a_tqdm_bar():
    from tqdm import tqdm

    assert isinstance(progress(total=3, file=io.StringIO()), LineProgress)
    bar = progress(total=3, file=Terminal())
    assert isinstance(bar, tqdm)
    bar.close()


def test_lines_are_separate_at_most_one_per_interval_and_one_at_the_end(clock):
    out = io.StringIO()
    with progress(total=400, desc="pretrain_toy", file=out, interval=30) as bar:
        clock.now += 10
        bar.update(20)  # 10 s: too soon for a line
        clock.now += 90
        bar.update(100)  # 100 s after the start: a line
        bar.set_postfix(loss=0.41234, ep=1)
        clock.now += 5
        bar.update(1)  # 5 s after the last line: none
    assert "\r" not in out.getvalue() and out.getvalue().endswith("\n")
    lines = out.getvalue().splitlines()
    assert lines == [
        "pretrain_toy: 120/400 (30%) 1.2 it/s, elapsed 1m40s, eta 3m53s",
        "pretrain_toy: 121/400 (30%) 1.2 it/s, elapsed 1m45s, loss=0.412, ep=1",
    ]
    assert bar.n == 121 and bar.total == 400


def test_iteration_counts_items_and_ends_with_one_line_when_the_iterable_is_done(clock):
    out = io.StringIO()
    seen = []
    for item in progress(["a", "b", "c"], desc="reading tags", unit="file", file=out, interval=0):
        clock.now += 2
        seen.append(item)
    assert seen == ["a", "b", "c"]
    assert out.getvalue().splitlines() == [
        "reading tags: 1/3 (33%) 2.0 s/file, elapsed 2s, eta 4s",
        "reading tags: 2/3 (67%) 2.0 s/file, elapsed 4s, eta 2s",
        "reading tags: 3/3 (100%) 2.0 s/file, elapsed 6s",
        "reading tags: 3/3 (100%) 2.0 s/file, elapsed 6s",  # the end line
    ]


def test_the_interval_comes_from_the_environment(monkeypatch, clock):
    monkeypatch.setenv("RSEPM_PROGRESS_INTERVAL", "0")
    out = io.StringIO()
    bar = progress(total=2, desc="x", file=out)
    bar.update()
    bar.update()
    bar.close()
    bar.close()  # once only
    assert len(out.getvalue().splitlines()) == 3
    monkeypatch.setenv("RSEPM_PROGRESS_INTERVAL", "12.5")
    assert progress_module.line_interval() == 12.5
    monkeypatch.delenv("RSEPM_PROGRESS_INTERVAL")
    assert progress_module.line_interval() == 30


def test_a_bad_interval_falls_back_to_30_seconds_with_one_warning(monkeypatch, capsys):
    monkeypatch.setattr(progress_module, "_warned", False)
    monkeypatch.setenv("RSEPM_PROGRESS_INTERVAL", "ten")
    assert progress_module.line_interval() == 30
    monkeypatch.setenv("RSEPM_PROGRESS_INTERVAL", "-1")
    assert progress_module.line_interval() == 30
    assert capsys.readouterr().err.count("warning: RSEPM_PROGRESS_INTERVAL='ten'") == 1


@pytest.mark.parametrize("terminal", [False, True])
def test_disable_prints_nothing_but_still_iterates(terminal, clock):
    out = Terminal() if terminal else io.StringIO()
    assert list(progress(range(4), desc="x", disable=True, file=out, interval=0)) == [0, 1, 2, 3]
    with progress(total=5, desc="x", disable=True, file=out, interval=0) as bar:
        bar.update(5)
        bar.set_postfix(loss="0.1")
    assert out.getvalue() == ""  # (a disabled tqdm bar does not count, so n is not compared)


def test_disable_none_means_on_in_a_file(clock):
    out = io.StringIO()
    list(progress(range(2), desc="x", disable=None, file=out, interval=0))
    assert len(out.getvalue().splitlines()) == 3


def test_resumed_count_unknown_total_and_the_tqdm_options_the_call_sites_pass(clock):
    out = io.StringIO()
    bar = progress(total=None, initial=50, desc="train", unit="img", file=out, interval=0, dynamic_ncols=True)
    clock.now += 4
    bar.update(8)  # the rate counts this run's items only
    bar.close()
    assert out.getvalue().splitlines()[0] == "train: 58 2.0 img/s, elapsed 4s"
    assert format_seconds(7384) == "2h03m04s" and format_seconds(59.6) == "1m00s"


def test_an_exception_in_the_loop_prints_the_end_line_where_it_stopped(clock):
    out = io.StringIO()
    with pytest.raises(KeyError):
        for i in progress(range(10), desc="x", file=out, interval=100):
            if i == 3:
                raise KeyError(i)
    assert out.getvalue().splitlines() == ["x: 3/10 (30%) ? it/s, elapsed 0s"]


def test_pretrain_toy_writes_progress_lines_into_a_log_file(toy_dataset, tmp_path):
    """The complaint: with stderr in a file, tqdm's disable=None printed nothing for minutes."""
    root = toy_dataset(seed=7, num_train=0, num_validation=4, num_test=0, max_size=56)  # 8 train_aug images
    log = tmp_path / "stderr.log"
    env = dict(os.environ, RSEPM_PROGRESS_INTERVAL="0", OMP_NUM_THREADS="1")
    with open(log, "w") as stderr:
        result = subprocess.run(
            [
                sys.executable,
                os.path.join("tools", "toy", "pretrain_toy.py"),
                "--root_dir",
                root,
                "--out",
                str(tmp_path / "w.pth"),
                "--max_epoch",
                "1",
                "--batch_size",
                "4",
                "--crop_size",
                "48",
                "--min_image_size",
                "48",
                "--max_image_size",
                "56",
                "--num_workers",
                "0",
                "--seed",
                "3",
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            timeout=120,
        )
    text = log.read_text()
    assert result.returncode == 0, text[-3000:]
    assert "\r" not in text
    lines = text.splitlines()
    training = [line for line in lines if re.match(r"pretrain_toy: \d+/2 \(\d+%\)", line)]
    # one line per iteration (interval 0), then the end line with the last loss
    assert [line.split()[1] for line in training] == ["1/2", "2/2", "2/2"], text
    assert all("loss=" in line for line in training) and "eta" not in training[-1]
    scoring = [line for line in lines if line.startswith("pretrain_toy: scoring: ")]
    assert [line.split()[2] for line in scoring] == ["1/4", "2/4", "3/4", "4/4", "4/4"], text
