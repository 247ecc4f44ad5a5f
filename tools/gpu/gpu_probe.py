"""Run a script of this repository in this process and record what only the process itself can
see: its peak CUDA memory and its wall time. Used by tools/gpu/gpu_check.py, so that the training and
inference scripts need no measuring code of their own.

    python tools/gpu/gpu_probe.py PROBE_DIR SCRIPT.py [script arguments ...]
    torchrun --nproc_per_node N tools/gpu/gpu_probe.py PROBE_DIR SCRIPT.py [...]

Writes PROBE_DIR/probe-rank{RANK}.json = {"script", "rank", "exit", "wall_s",
"peak_mem_bytes": max over the CUDA devices this process used (null without CUDA)}, also when the
script fails; the script's own exit status is passed on.
"""

import argparse
import json
import os
import runpy
import sys
import time

if __package__ in (None, ""):  # run as a file, python tools/GROUP/NAME.py: the repository root on the import path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tools.args import cli, make_parser  # noqa: E402
from tools.paths import REPO_ROOT  # noqa: E402


def peak_cuda_memory():
    """Largest torch.cuda.max_memory_allocated over the devices of this process; None without CUDA."""
    import torch

    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return max(int(torch.cuda.max_memory_allocated(d)) for d in range(torch.cuda.device_count()))


def get_args_parser():
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("probe_dir", help="folder of the probe-rank{RANK}.json records")
    parser.add_argument("script", help="script of this repository to run, e.g. train_rsepm.py")
    parser.add_argument("script_args", nargs=argparse.REMAINDER, help="the script's own arguments")
    return parser


def main(args):
    """Runs the script; returns its exit status."""
    probe_dir, script, script_args = args.probe_dir, args.script, args.script_args
    sys.path.insert(0, REPO_ROOT)  # the scripts import core/ and tools/ from the repository root
    sys.argv = [script, *script_args]
    start, status = time.perf_counter(), 0
    try:
        runpy.run_path(os.path.join(REPO_ROOT, script), run_name="__main__")
    except SystemExit as e:
        status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if e.code not in (None, 0) and not isinstance(e.code, int):
            print(e.code, file=sys.stderr)
    except BaseException:
        status = 1
        raise
    finally:
        record = {
            "script": script,
            "rank": int(os.environ.get("RANK", 0)),
            "exit": status,
            "wall_s": time.perf_counter() - start,
            "peak_mem_bytes": peak_cuda_memory(),
        }
        os.makedirs(probe_dir, exist_ok=True)
        path = os.path.join(probe_dir, f"probe-rank{record['rank']}.json")
        with open(path + ".tmp", "w") as f:
            json.dump(record, f)
        os.replace(path + ".tmp", path)
    return status


if __name__ == "__main__":
    cli(main, get_args_parser())
