"""torchrun entry for the tests: run train_rsepm.main with the given arguments, then save this
rank's final network weights, so that the test can compare the processes.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_train_rsepm.py \
        --out OUT <train_rsepm.py arguments>

Writes OUT/rank{r}.pt: the state_dict of the network trained in process r.
"""

import argparse
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import train_rsepm  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True, help="folder for rank{r}.pt")
    args, train_argv = parser.parse_known_args()
    torch.set_num_threads(1)  # two processes share the test machine's cores
    result = train_rsepm.main(train_rsepm.get_args_parser().parse_args(train_argv))
    os.makedirs(args.out, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in result["network"].state_dict().items()}
    torch.save(state, os.path.join(args.out, f"rank{result['rank']}.pt"))


if __name__ == "__main__":
    main()
