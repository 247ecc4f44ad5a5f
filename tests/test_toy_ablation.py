"""tools/toy/ablation.py: CAM only, RS and RS+EPM on the toy dataset, end to end on a tiny one.

The program's commands go through tools/toy/toy_pipeline.py's Runner as they would in a real run;
only the last step, starting `python3 SCRIPT ...` as a subprocess, is replaced by the script's
main() on the same arguments in this process (a subprocess costs ~10 s of start-up on a loaded
2-core machine, and a run has 14 commands). The quick-start's RS+EPM model is a random network
saved where the quick-start leaves its weights; the trainings are shortened with --train_args.
"""

import importlib
import json
import os
import statistics
import subprocess
import sys

import pytest
import torch
from helpers import run_main

from core.dataset_layout import load_dataset_info
from core.errors import MissingFileError, ProjectError
from core.io import read_json
from core.networks import RSEPM
from core.weights import save_weights
from tools.args import cli
from tools.paths import REPO_ROOT, evaluation_path, model_path
from tools.toy import ablation
from tools.toy import toy_pipeline as tp

TINY_TRAINING = (
    "--pretrained none --batch_size 4 --max_epoch 1 --rs_start 1 --mix_start 1 --crop_size 32 "
    "--min_image_size 32 --max_image_size 64 --pamr_iterations 2 --pamr_dilations 1,2 --log_interval 1 "
    "--gpus cpu --vis_images 0"
)
CAM_TAG, RS_TAG = "toy@ResNet18@CAM", "toy@ResNet18@RS"
TAGS = {"CAM only": CAM_TAG, "RS": RS_TAG, "RS+EPM": tp.RSEPM_TAG}


class InProcess:
    """Stands in for the subprocess module of toy_pipeline: runs `python SCRIPT ARGS` as the script's
    main(ARGS) here and records (script, args, OMP_NUM_THREADS, MKL_NUM_THREADS)."""

    def __init__(self):
        self.commands = []

    def run(self, command, cwd, env):
        assert command[0] == sys.executable and cwd == REPO_ROOT
        script, argv = command[1], command[2:]
        self.commands.append((script, argv, env["OMP_NUM_THREADS"], env["MKL_NUM_THREADS"]))
        module = importlib.import_module(script[:-3].replace("/", "."))
        try:
            result = run_main(module, argv)
        except ProjectError as e:
            print(f"error: {e}")
            return subprocess.CompletedProcess(command, 1)
        failed = isinstance(result, dict) and (result.get("failed") or result.get("skipped"))
        return subprocess.CompletedProcess(command, 1 if failed else 0)


def pretend_quickstart(pred_dir):
    """A random RS+EPM network where the quick-start leaves its model."""
    torch.manual_seed(0)
    network = RSEPM(backbone="resnet18", num_classes=load_dataset_info("TOY").num_classes, output_stride=16)
    save_weights(network, model_path(str(pred_dir), tp.RSEPM_TAG))


def run(monkeypatch, argv):
    recorder = InProcess()
    monkeypatch.setattr(tp, "subprocess", recorder)
    monkeypatch.chdir(REPO_ROOT)
    summary = run_main(ablation, argv)
    return summary, recorder.commands


@pytest.fixture(scope="module")
def seeds_run(toy_dataset, tmp_path_factory):
    """--seeds 0,1 on a tiny toy set: (root, pred_dir, summary, commands)."""
    root = toy_dataset(num_train=0, num_train_aug=4, num_test=0)
    pred = tmp_path_factory.mktemp("ablation")
    for seed in (0, 1):
        pretend_quickstart(pred / f"seed{seed}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as monkeypatch:
            summary, commands = run(
                monkeypatch,
                [
                    "--seeds",
                    "0,1",
                    "--pred_dir",
                    str(pred) + os.sep,
                    "--root_dir",
                    root,
                    "--threads",
                    "1",
                    "--num_workers",
                    "0",
                    "--train_args",
                    TINY_TRAINING,
                ],
            )
    finally:
        torch.set_num_threads(threads)
    return root, pred, summary, commands


def rows_from_evaluations(pred_dir):
    """Each variant's two numbers read from the eval.json files evaluate.py wrote."""
    rows = []
    for variant, tag in TAGS.items():
        seeds = read_json(evaluation_path(str(pred_dir), "predictions", tag + "@val-gt-tags", "validation"))
        masks = read_json(evaluation_path(str(pred_dir), "pseudo-labels", tag + "@val-gt-tags", "validation"))
        rows.append(
            {
                "variant": variant,
                "tag": tag + "@val-gt-tags",
                "seeds": seeds["mIoU"],
                "threshold": seeds["threshold"],
                "crf": masks["mIoU"],
            }
        )
    return rows


def test_rows_are_the_evaluations_and_the_trainings_have_their_flags(seeds_run):
    root, pred, summary, commands = seeds_run
    assert summary["failed"] == [] and summary["seeds"] == [0, 1]
    for seed in (0, 1):
        folder = pred / f"seed{seed}"
        with open(folder / "ablation.json", encoding="utf-8") as f:
            rows = json.load(f)
        assert [r["variant"] for r in rows] == ["CAM only", "RS", "RS+EPM"]
        assert rows == rows_from_evaluations(folder)
        assert all(0 <= r[key] <= 100 for r in rows for key in ("seeds", "crf"))
        cam = read_json(os.path.join(os.path.dirname(model_path(str(folder), CAM_TAG)), "config.json"))["args"]
        rs = read_json(os.path.join(os.path.dirname(model_path(str(folder), RS_TAG)), "config.json"))["args"]
        # CAM only never starts RecurSeed (nor mixes); RS starts RecurSeed within the run and never mixes
        assert cam["rs_start"] > cam["max_epoch"] and cam["mix"] == "none" and cam["seed"] == seed
        assert rs["rs_start"] <= rs["max_epoch"] and rs["mix"] == "none" and rs["seed"] == seed
        assert cam["root_dir"].rstrip("/") == rs["root_dir"].rstrip("/") == root.rstrip("/")
    # per seed: the two trainings, then seeds, evaluation, CRF, evaluation of each variant
    one = ["train_rsepm.py"] * 2 + [
        "infer_rsepm.py",
        "evaluate.py",
        "convert_seed_to_pseudo_masks.py",
        "evaluate.py",
    ] * 3
    assert [c[0] for c in commands] == one * 2
    assert all(c[2] == c[3] == "1" for c in commands)  # --threads 1
    sources = [c[1][c[1].index("--seed_source") + 1] for c in commands if c[0] == "infer_rsepm.py"]
    assert sources == ["cam", "decoder", "decoder"] * 2
    assert all(c[1][c[1].index("--conf_th") + 1] == "-1" for c in commands if c[0] == "infer_rsepm.py")


def test_seeds_table_is_the_mean_and_spread_of_the_runs(seeds_run):
    _, pred, summary, _ = seeds_run
    runs = [rows_from_evaluations(pred / f"seed{seed}") for seed in (0, 1)]
    with open(pred / "ablation_seeds.md", encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert lines[0].startswith("| training | seeds mean +- std (min-max) over seeds 0,1 |")
    assert len(lines) == 2 + 3
    for i, line in enumerate(lines[2:]):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == runs[0][i]["variant"]
        for cell, key in zip(cells[1:], ("seeds", "crf")):
            values = [run[i][key] for run in runs]
            mean = sum(values) / len(values)
            std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
            assert cell == f"{mean:.2f} +- {std:.2f} ({min(values):.2f}-{max(values):.2f})"
            assert abs(float(cell.split()[0]) - statistics.fmean(values)) < 0.006


def test_a_second_run_reuses_the_trained_models(seeds_run, monkeypatch):
    root, pred, _, _ = seeds_run
    folder = pred / "seed0"
    with open(folder / "ablation.json", encoding="utf-8") as f:
        before = json.load(f)
    stamps = {tag: os.stat(model_path(str(folder), tag)).st_mtime_ns for tag in (CAM_TAG, RS_TAG)}
    summary, commands = run(
        monkeypatch,
        [
            "--pred_dir",
            str(folder) + os.sep,
            "--root_dir",
            root,
            "--threads",
            "1",
            "--num_workers",
            "0",
            "--train_args",
            TINY_TRAINING,
        ],
    )
    assert "train_rsepm.py" not in [c[0] for c in commands] and len(commands) == 12
    assert stamps == {tag: os.stat(model_path(str(folder), tag)).st_mtime_ns for tag in (CAM_TAG, RS_TAG)}
    assert summary["rows"] == [before]
    with open(folder / "ablation.json", encoding="utf-8") as f:
        assert json.load(f) == before


def test_default_commands_are_the_quickstart_schedule(tmp_path, monkeypatch):
    """Without --train_args the trainings run the quick-start's schedule (what tools/toy_ablation.sh
    ran, flag for flag); the commands are recorded, not run."""
    pretend_quickstart(tmp_path)
    commands = []

    class Recorder:
        @staticmethod
        def run(command, cwd, env):
            commands.append((command[1:], env["OMP_NUM_THREADS"], env["MKL_NUM_THREADS"]))
            return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(tp, "subprocess", Recorder)
    monkeypatch.setattr(tp, "read_json", lambda path: {"mIoU": 50.0, "threshold": 0.5})
    pred = str(tmp_path) + os.sep
    run_main(ablation, ["--pred_dir", pred, "--seed", "3"])
    common = ["--dataset", "TOY", "--root_dir", "toy_data/TOY", "--pred_dir", pred]
    train = ["train_rsepm.py", *common, *tp.RSEPM_TRAIN, "--seed", "3", "--num_workers", "2"]
    assert commands[0] == ([*train, "--rs_start", "100000", "--mix", "none", "--tag", CAM_TAG], "2", "2")
    assert commands[1] == ([*train, "--mix", "none", "--tag", RS_TAG], "2", "2")
    out = CAM_TAG + "@val-gt-tags"
    assert commands[2][0] == [
        "infer_rsepm.py",
        *common,
        "--domain",
        "validation",
        "--backbone",
        "resnet18",
        "--scales",
        "1.0,0.5",
        "--num_workers",
        "2",
        "--conf_th",
        "-1",
        "--seed_source",
        "cam",
        "--tag",
        out,
        "--weights",
        model_path(pred, CAM_TAG),
    ]
    assert commands[3][0] == [
        "evaluate.py",
        *common,
        "--domain",
        "validation",
        "--folder",
        "predictions",
        "--tag",
        out,
        "--num_workers",
        "1",
    ]
    assert commands[4][0] == [
        "convert_seed_to_pseudo_masks.py",
        *common,
        "--domain",
        "validation",
        "--folder",
        "predictions",
        "--tag",
        out,
        "--num_workers",
        "2",
    ]
    assert len(commands) == 14


def test_a_missing_quickstart_model_is_one_error_naming_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tp, "subprocess", None)  # no command may start
    pretend_quickstart(tmp_path / "seed0")
    for argv, missing in (
        (["--pred_dir", str(tmp_path / "none") + os.sep], tmp_path / "none"),
        (["--seeds", "0,1", "--pred_dir", str(tmp_path) + os.sep], tmp_path / "seed1"),
    ):
        with pytest.raises(MissingFileError) as raised:
            run_main(ablation, argv)
        assert model_path(str(missing), tp.RSEPM_TAG) in str(raised.value)
        assert "tools/quickstart.sh" in str(raised.value)
        with pytest.raises(SystemExit) as exited:
            cli(ablation.main, ablation.get_args_parser(), argv)
        assert str(exited.value.code).startswith("error: ") and "tools/quickstart.sh" in str(exited.value.code)
    assert not (tmp_path / "seed0" / "ablation.json").exists()
