"""tools.args.cli: exit status 0 (done), 1 (items skipped, or a project error as one line), 2 (bad
usage, with the usage line); every other exception (a bug, or a failure inside torch) keeps its
traceback. Real scripts: a bad dataset, a bad settings file, an output folder that cannot be made."""

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import quick_rsepm_argv

import train_rsepm
from core.errors import (
    CheckpointError,
    DatasetError,
    EvaluationError,
    FormatError,
    OutputError,
    PrepareError,
    ProjectError,
    UsageError,
)
from core.io import settings_path
from tools.args import cli, make_parser
from tools.engine.runlog import RunLogger

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(*args):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)


def parser():
    p = make_parser("test")
    p.add_argument("path")
    return p


@pytest.mark.parametrize("error", [DatasetError, FormatError, CheckpointError, EvaluationError, PrepareError])
def test_project_errors_become_one_line_and_status_1(error):
    def main(args):
        raise error(f"bad input {args.path}")

    with pytest.raises(SystemExit) as raised:
        cli(main, parser(), ["x.png"])
    assert raised.value.code == "error: bad input x.png"  # SystemExit with a text: status 1
    assert issubclass(error, ProjectError)


def test_usage_errors_and_bad_flags_exit_2_with_the_usage_line(capsys):
    def main(args):
        raise UsageError("--a and --b cannot go together")

    for argv in (["x.png"], ["x.png", "--no_such_flag"]):
        with pytest.raises(SystemExit) as raised:
            cli(main, parser(), argv)
        assert raised.value.code == 2
        assert capsys.readouterr().err.startswith("usage: ")


@pytest.mark.parametrize(
    "result, status",
    [
        ({"written": 3, "failed": []}, 0),
        (None, 0),
        ({"written": 2, "failed": [{"id": "a", "problem": "p"}]}, 1),
        ({"skipped": ["b"]}, 1),
    ],
)
def test_exit_status_says_whether_items_were_skipped(result, status):
    with pytest.raises(SystemExit) as raised:
        cli(lambda args: result, parser(), ["x.png"])
    assert raised.value.code == status


def test_other_exceptions_pass_through_unchanged():
    def matmul(args):
        return torch.zeros(2) @ torch.zeros(3)  # a shape mismatch inside torch: a bug, not bad input

    with pytest.raises(RuntimeError, match="size"):
        cli(matmul, parser(), ["x"])
    with pytest.raises(KeyError):
        cli(lambda args: {}["missing"], parser(), ["x"])


def test_script_with_bad_dataset_prints_one_line_and_exits_1():
    result = run_python("evaluate.py", "--dataset", "NoSuchSet", "--tag", "t")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown dataset 'NoSuchSet'"), result.stderr


def test_script_with_a_bad_flag_exits_2():
    result = run_python("convert_seed_to_pseudo_masks.py", "--tag", "t", "--threads", "0")
    assert result.returncode == 2 and "--threads" in result.stderr


def test_torch_runtime_error_keeps_its_traceback():
    code = (
        "import argparse, torch; from tools.args import cli; "
        "cli(lambda args: torch.zeros(2) @ torch.zeros(3), argparse.ArgumentParser(), [])"
    )
    result = run_python("-c", code)
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "RuntimeError" in result.stderr.strip().splitlines()[-1]


def test_the_cli_names_the_bad_settings_file(tmp_path, toy_dataset):
    """Through a real stage: convert reads the seed folder's record; a non-UTF-8 byte there is one
    line, exit status 1."""
    from tools.paths import REPO_ROOT, predictions_dir

    pred = tmp_path / "exp"
    seeds = predictions_dir(str(pred), "t", "validation")
    os.makedirs(seeds)
    with open(settings_path(seeds), "wb") as f:
        f.write(json.dumps({"kind": "rsepm"}).encode()[:-1] + b', "x": "\xff"}')
    result = subprocess.run(
        [
            sys.executable,
            "convert_seed_to_pseudo_masks.py",
            "--dataset",
            "TOY",
            "--root_dir",
            toy_dataset(),
            "--domain",
            "validation",
            "--pred_dir",
            str(pred),
            "--tag",
            "t",
            "--gpus",
            "cpu",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "not UTF-8" in last, result.stderr


@pytest.fixture(scope="module")
def toy(toy_dataset):
    return toy_dataset(max_size=48)


def test_output_folder_that_cannot_be_created_is_one_line(toy, tmp_path, capsys):
    """--pred_dir below a file (as a read-only or permission-denied folder, which root cannot
    simulate): `error: PATH: cannot write (...)` and exit 1, not a NotADirectoryError traceback."""
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit) as info:
        cli(train_rsepm.main, train_rsepm.get_args_parser(), quick_rsepm_argv(toy, tmp_path / "file" / "out"))
    message = str(info.value.code)
    assert message.startswith("error: ") and "cannot write" in message and "a parent of the path is a file" in message
    assert str(tmp_path / "file" / "out") in message
    with pytest.raises(OutputError, match=r"logs: cannot write the logs \(\[Errno 20\]"):
        RunLogger(str(tmp_path / "file" / "logs"))
