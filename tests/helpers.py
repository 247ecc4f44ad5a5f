"""Small helpers shared by test modules (tests/ is on sys.path under pytest's default import mode)."""
import collections
import os
import traceback

import torch

from tools.engine import optim

SYNC_METHODS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__")


def kill_at(monkeypatch, iteration):
    """Interrupt the next training run (as Ctrl-C would) when TrainingRun.record checks the scalars
    of the step with 0-based index `iteration`: after that step, before it is logged or saved."""
    original = optim.check_finite

    def check(scalars, it, ctx=None, **options):
        if it == iteration:
            raise KeyboardInterrupt
        return original(scalars, it, ctx, **options)

    monkeypatch.setattr(optim, "check_finite", check)


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
