"""One way to spread a per-image stage over processes, one per device (docs/performance.md#scaling):
seed inference (infer_rsepm.py, infer_seg.py), the random-walk conversion and the relation-label
cache of train_affinity.py.

- Under torchrun each rank is a Shard: rank r of w takes the images ids[r::w] of the full ordered
  list (the same list on every rank, so the shares are disjoint and cover it whatever is already
  done) on its own device (cuda:LOCAL_RANK, or the CPU with gloo).
- Without torchrun, `run_spawned` starts one process per listed GPU (the `spawn` start method, as
  CUDA needs) over the same shares, as IRN's make_cam.py does with torch.multiprocessing.
- The output folder is claimed once, by rank 0 (or the parent) before any share is written: it
  holds the folder's writer lock for the whole run (core.safety.hold_output; torchrun's other
  ranks share it). Every file stays atomic, so a rank that dies leaves the others' files valid and
  a re-run does the rest.
"""

import os
import time

import torch
import torch.distributed as dist

from core.errors import ProjectError


class Shard:
    """This process's share of a per-image stage: rank, world size and device."""

    def __init__(self, rank=0, world=1, device=None, owns_group=False):
        self.rank, self.world, self.device, self.owns_group = rank, world, device, owns_group

    @property
    def is_main(self):
        return self.rank == 0

    @property
    def distributed(self):
        return self.world > 1 and dist.is_available() and dist.is_initialized()

    @classmethod
    def from_environment(cls):
        """The rank of torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK), its process group
        started when no one has started it (nccl on CUDA, gloo on the CPU); one process otherwise."""
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            return cls()
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
        if torch.cuda.is_available():
            device = torch.device("cuda", local)
            torch.cuda.set_device(device)
        else:
            device = torch.device("cpu")
        owns = False
        if world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            owns = True
        return cls(rank, world, device, owns)

    def share(self, ids):
        """This rank's images: every world-th of the full ordered list, from its rank."""
        return list(ids)[self.rank :: self.world]

    def barrier(self):
        if self.distributed:
            dist.barrier()

    def gather(self, value):
        """[value of rank 0, value of rank 1, ...] on every rank (a list of one without torchrun)."""
        if not self.distributed:
            return [value]
        values = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    def close(self):
        """Leave the process group this Shard started (a training's own group is left alone)."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def _spawned(index, function, devices, payload, results):
    results.put((index, function(Shard(index, len(devices), devices[index]), *payload)))


def run_spawned(function, devices, *payload):
    """function(shard, *payload) in one new process per device (the `spawn` start method), shard i
    of len(devices) on devices[i]; returns their results in rank order. A process that fails makes
    this raise after the others have ended (their files stay: every write is atomic)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    results = context.SimpleQueue()
    processes = [
        context.Process(target=_spawned, args=(i, function, devices, payload, results)) for i in range(len(devices))
    ]
    for process in processes:
        process.start()
    collected = {}
    while True:  # drain while they run: a full pipe would block a child that is putting its result
        done = not any(p.is_alive() for p in processes)
        while not results.empty():
            index, value = results.get()
            collected[index] = value
        if done:
            break
        time.sleep(0.05)
    for process in processes:
        process.join()
    failed = [i for i, p in enumerate(processes) if p.exitcode != 0 or i not in collected]
    if failed:
        raise ProjectError(
            f"shard process(es) {failed} of {len(devices)} failed (exit codes "
            f"{[processes[i].exitcode for i in failed]}); the files of the others are complete: "
            "run the same command again to do the rest"
        )
    return [collected[i] for i in range(len(devices))]
