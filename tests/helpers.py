"""Small helpers shared by test modules (tests/ is on sys.path under pytest's default import mode)."""

import collections
import os
import traceback

import torch

from tools.engine import runlog
from tools.paths import REPO_ROOT

SYNC_METHODS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__")


def kill_at(monkeypatch, iteration):
    """Interrupt the next training run (as Ctrl-C would) when TrainingRun.record hands the scalars
    of the step with 0-based index `iteration` to its RunLogger: after that step, before it is
    logged or saved."""
    original = runlog.RunLogger.add

    def add(self, scalars, it):
        if it == iteration:
            raise KeyboardInterrupt
        return original(self, scalars, it)

    monkeypatch.setattr(runlog.RunLogger, "add", add)


def count_syncs(monkeypatch, run):
    """Run `run()` with every tensor-to-host call counted by (method, caller file, line)."""
    calls = collections.Counter()

    def counting(name, original):
        def method(self, *args, **kwargs):
            caller = traceback.extract_stack(limit=2)[0]
            calls[(name, os.path.basename(caller.filename), caller.lineno)] += 1
            return original(self, *args, **kwargs)

        return method

    for name in SYNC_METHODS:
        monkeypatch.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
    run()
    monkeypatch.undo()
    return calls


def run_main(module, argv):
    """A script's main on parsed argv, as tests call it (cli adds only the exit status). The writer
    locks it took are released at the end, as the end of the script's process releases them."""
    from core.safety import release_output

    try:
        return module.main(module.get_args_parser().parse_args(argv))
    finally:
        release_output()


def quick_rsepm_argv(root, pred_dir, *extra):
    """train_rsepm.py for 2 epochs x 2 iterations (8 images, batch 4), no mix, tag t: the cheapest
    real run."""
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
        "48",
        "--batch_size",
        "4",
        "--num_workers",
        "0",
        "--max_epoch",
        "2",
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
        "1",
        *extra,
    ]


TIME_FIELDS = {"images_per_s"}  # the fields of a log record that differ between two identical runs


def read_run_log(pred_dir, tag="t", timings=False):
    """The records of models/{tag}/logs/log.jsonl under pred_dir, without their timings unless
    `timings`."""
    import json

    from tools.paths import model_dir

    with open(os.path.join(model_dir(str(pred_dir), tag), "logs", "log.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return records if timings else [{k: v for k, v in r.items() if k not in TIME_FIELDS} for r in records]


def parser_modules():
    """Every module of the project with a get_args_parser(): the scripts and the tools programs."""
    found = [name[:-3] for name in os.listdir(REPO_ROOT) if name.endswith(".py") and name != "demo.py"]
    for folder, _, names in os.walk(os.path.join(REPO_ROOT, "tools")):
        found += [
            os.path.relpath(os.path.join(folder, n), REPO_ROOT)[:-3].replace(os.sep, ".")
            for n in names
            if n.endswith(".py")
        ]
    with_parser = []
    for module in sorted(found):
        with open(os.path.join(REPO_ROOT, module.replace(".", os.sep) + ".py"), encoding="utf-8") as f:
            if "def get_args_parser(" in f.read():
                with_parser.append(module)
    return with_parser
