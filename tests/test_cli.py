"""tools.args.cli: the project's own errors become one line and exit status 1; every other
exception (a bug, or a failure inside torch) keeps its traceback."""
import os
import subprocess
import sys

import pytest
import torch

from core.errors import CheckpointError, DatasetError, FormatError, ProjectError, UsageError
from tools.args import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(*args):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize("error", [DatasetError, FormatError, CheckpointError, UsageError])
def test_project_errors_become_one_line(error):
    def main(argv):
        raise error(f"bad input {argv}")

    with pytest.raises(SystemExit) as raised:
        cli(main, ["x.png"])
    assert raised.value.code == "error: bad input ['x.png']"
    assert issubclass(error, ProjectError)


def test_other_exceptions_pass_through_unchanged():
    def matmul(argv):
        return torch.zeros(2) @ torch.zeros(3)  # a shape mismatch inside torch: a bug, not bad input

    with pytest.raises(RuntimeError, match="size"):
        cli(matmul)
    with pytest.raises(KeyError):
        cli(lambda argv: {}["missing"])


def test_script_with_bad_dataset_prints_one_line_and_exits_1():
    result = run_python("evaluate.py", "--dataset", "NoSuchSet", "--tag", "t")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown dataset 'NoSuchSet'"), result.stderr


def test_torch_runtime_error_keeps_its_traceback():
    code = "import torch; from tools.args import cli; cli(lambda argv: torch.zeros(2) @ torch.zeros(3))"
    result = run_python("-c", code)
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "RuntimeError" in result.stderr.strip().splitlines()[-1]
