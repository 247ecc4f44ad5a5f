"""Processes, devices and seeds of a training run.

Owns DistContext and the torchrun/DDP set-up (setup_distributed, cleanup_distributed,
wrap_model), the per-rank batch size and the seeds (seed_everything, derive_seed). The data
order and the DataLoader are tools/engine/data_loading.py; the stop request a scheduler's
SIGTERM/SIGUSR1 raises is tools/engine/stop_request.py.

Batch size: --batch_size is the global batch (16 in the published recipe, docs/method.md#optimisation)
whatever the number of processes; each DDP rank loads batch_size / world_size (local_batch_size),
DataParallel splits it itself.
Exact resumption (bitwise, on CPU): data order is a function of (seed, epoch), augmentation of
(seed, epoch, index), worker seeds of (seed, epoch, rank), and every rank's RNG states travel in
the resume checkpoint (tools/engine/resume_state.py). On CUDA, non-deterministic kernels can still make runs
differ slightly.
"""

import os
import random
import sys
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from core.errors import UsageError
from tools.args import resolve_devices


# ---------------------------------------------------------------------------------------------
# Processes and devices
# ---------------------------------------------------------------------------------------------
@dataclass
class DistContext:
    """Where this process runs. device_ids: CUDA ids for DataParallel (single process only)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    device_ids: list = field(default_factory=list)
    distributed: bool = False

    @property
    def is_main(self):
        return self.rank == 0


def setup_distributed(gpus="0"):
    """Read torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK) and start the process group.

    Under torchrun: backend nccl on CUDA (device cuda:LOCAL_RANK; choose GPUs with
    CUDA_VISIBLE_DEVICES, --gpus is ignored), gloo on CPU. Without torchrun: one process on the
    devices of `--gpus` (tools.args.resolve_devices); several ids give DataParallel in wrap_model.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        device, ids = resolve_devices(gpus)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        return DistContext(device=device, device_ids=ids)
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    return DistContext(rank, world_size, local_rank, device, [], True)


def cleanup_distributed():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def local_batch_size(batch_size, ctx):
    """Images per DDP process for a global `batch_size`; ValueError if it does not divide."""
    if batch_size % ctx.world_size:
        raise UsageError(f"--batch_size {batch_size} is not divisible by the {ctx.world_size} processes")
    return batch_size // ctx.world_size


def wrap_model(model, ctx, sync_bn=False, find_unused_parameters=False):
    """Move `model` to ctx.device and wrap it: DDP under torchrun, DataParallel for several --gpus.

    find_unused_parameters: needed by DDP when some parameters get no gradient in an iteration
    (RS+EPM before rs_start: only L_cls, so the decoder is unused).
    sync_bn: convert BatchNorm to SyncBatchNorm under DDP; PyTorch supports it on GPUs only,
    so on CPU it is ignored with a warning.
    """
    model = model.to(ctx.device)
    if ctx.distributed:
        if sync_bn and ctx.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif sync_bn and ctx.is_main:
            print("warning: --sync_bn ignored: SyncBatchNorm needs CUDA", file=sys.stderr)
        ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused_parameters)
    if len(ctx.device_ids) > 1:
        return nn.DataParallel(model, device_ids=ctx.device_ids)
    return model


# ---------------------------------------------------------------------------------------------
# Seeds and data order
# ---------------------------------------------------------------------------------------------
def seed_everything(seed, rank=0):
    """Seed python, numpy and torch (CPU and CUDA) with seed + rank (ranks differ in dropout)."""
    seed = int(seed) + int(rank)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derive_seed(*values):
    """A 63-bit seed mixing the given integers (numpy SeedSequence: (1, 0) and (0, 1) differ)."""
    return int(np.random.SeedSequence([int(v) for v in values]).generate_state(1, np.uint64)[0] >> 1)
