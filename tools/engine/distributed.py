"""Processes, devices, seeds and data order of a training run.

Owns DistContext and the torchrun/DDP set-up (setup_distributed, cleanup_distributed,
wrap_model), the per-rank batch size, the seeds (seed_everything, derive_seed, seed_worker), the
resumable EpochSampler and the training DataLoader (build_loader, set_loader_epoch), and the
stop request a scheduler's SIGTERM/SIGUSR1 raises (StopRequest).

Batch size: --batch_size is the global batch (16 in the published recipe, docs/method.md#optimisation)
whatever the number of processes; each DDP rank loads batch_size / world_size (local_batch_size),
DataParallel splits it itself.
Exact resumption (bitwise, on CPU): data order is a function of (seed, epoch), augmentation of
(seed, epoch, index), worker seeds of (seed, epoch, rank), and every rank's RNG states travel in
the resume checkpoint (tools/engine/checkpoints.py). On CUDA, non-deterministic kernels can still make runs
differ slightly.
"""
import atexit
import math
import multiprocessing
import os
import random
import signal
import sys
import threading
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from core.errors import DatasetError, UsageError
from tools.args import resolve_devices
from tools.pool import worker_threads


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


STOP_SIGNALS = ("SIGTERM", "SIGUSR1")  # what SLURM and torchrun send before they kill a job


class StopRequest:
    """SIGTERM / SIGUSR1 as a flag that the run loop reads between iterations: the handler only
    notes the signal's name, so the step or the save in progress completes (TrainingRun.record
    then saves the resume state and stops). A second signal ends the process at once with the
    signal's default action, and so does the first one when the run has not stopped `grace`
    seconds after it (an iteration that cannot finish: a blocked read, a hung device), so a
    scheduler's or `timeout`'s SIGTERM always ends the run. install() works in the main thread only
    (Python's rule; elsewhere the signals keep their handlers); restore() puts the previous
    handlers back."""

    GRACE_SECONDS = float(os.environ.get("RSEPM_STOP_GRACE_S", "300"))

    def __init__(self, grace=None):
        self.name, self.previous, self.timer = None, {}, None
        self.grace = self.GRACE_SECONDS if grace is None else grace

    def install(self):
        if threading.current_thread() is threading.main_thread():
            for name in STOP_SIGNALS:
                number = getattr(signal, name, None)  # Windows has no SIGUSR1
                if number is not None:
                    self.previous[number] = signal.signal(number, self._note)
        return self

    def _note(self, number, frame):
        if self.name is not None:  # the second signal: the default action, now
            signal.signal(number, signal.SIG_DFL)
            os.kill(os.getpid(), number)
            return
        self.name = signal.Signals(number).name
        if self.grace > 0:
            self.timer = threading.Timer(self.grace, self._give_up, args=(number,))
            self.timer.daemon = True
            self.timer.start()

    def _give_up(self, number):
        """No iteration boundary was reached `grace` seconds after the signal: end now. The resume
        state saved last (the periodic or the epoch's) is what a restart continues from."""
        print(f"\n{signal.Signals(number).name} {self.grace:g} s ago and no iteration could finish since: "
              "ending now without saving (the last resume state stays)", file=sys.stderr, flush=True)
        os._exit(128 + number)

    def restore(self):
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        for number, handler in self.previous.items():
            signal.signal(number, signal.SIG_DFL if handler is None else handler)  # None: set outside Python
        self.previous = {}

    def agreed(self, ctx):
        """The signal's name if any rank got one (None otherwise), the same on every rank. Under
        DDP one all-reduce and host sync: call it where the ranks already synchronise (log lines)."""
        if ctx is None or not ctx.distributed:
            return self.name
        flag = torch.tensor([1.0 if self.name else 0.0], device=ctx.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return (self.name or "a signal to another rank") if flag.item() else None


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
        return nn.parallel.DistributedDataParallel(model, device_ids=ids,
                                                   find_unused_parameters=find_unused_parameters)
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


class EpochSampler(torch.utils.data.Sampler):
    """Sample order as a pure function of (seed, epoch), sharded over ranks, resumable mid-epoch.

    The permutation of range(num_samples) (identity without shuffle) is padded by wrapping to a
    multiple of world_size, as DistributedSampler does, so every rank gets the same number of
    samples; rank r takes every world_size-th index from r. set_epoch(epoch, skip) starts this
    rank's shard after `skip` samples (the batches a resumed run has already seen).
    """

    def __init__(self, num_samples, seed=0, shuffle=True, rank=0, world_size=1):
        self.num_samples = int(num_samples)
        self.seed, self.shuffle = int(seed), shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch, skip=0):
        self.epoch, self.skip = int(epoch), int(skip)

    def shard(self):
        """This rank's indices for the current epoch, before skipping. (N / world_size,) int64."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
            order = torch.randperm(self.num_samples, generator=generator)
        else:
            order = torch.arange(self.num_samples)
        padded = math.ceil(self.num_samples / self.world_size) * self.world_size
        order = order.repeat(math.ceil(padded / self.num_samples))[:padded]
        return order[self.rank::self.world_size]

    def __iter__(self):
        return iter(self.shard()[self.skip:].tolist())

    def __len__(self):
        return max(0, math.ceil(self.num_samples / self.world_size) - self.skip)

    def state_dict(self):
        return {"seed": self.seed, "epoch": self.epoch, "skip": self.skip,
                "num_samples": self.num_samples, "world_size": self.world_size, "shuffle": self.shuffle}

    def check_compatible(self, state, path):
        """Resuming must see the same order: same seed, dataset size and process count."""
        for key in ("seed", "num_samples", "world_size", "shuffle"):
            if state.get(key) != getattr(self, key):
                raise UsageError(f"{path}: the run was saved with {key}={state.get(key)}, this run "
                                 f"has {key}={getattr(self, key)}; resuming would change the data "
                                 f"order (use the original settings or a new --tag)")


def seed_worker(worker_id):
    """DataLoader worker_init_fn: one thread per worker (tools.pool.worker_threads), and python/numpy
    seeded from the worker's torch seed.

    The transforms use their own per-sample generators; this only covers code that uses the
    global generators. The torch seed itself comes from the loader's generator, reseeded from
    (seed, epoch, rank) by set_loader_epoch.
    """
    worker_threads(worker_id)
    # a scheduler may signal every process of the job: a worker that died of it would end the
    # run before the main process saves; workers end when the main process shuts them down
    for name in STOP_SIGNALS:
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


class _EpochTaggedSampler(EpochSampler):
    """EpochSampler that yields (epoch, index): persistent workers learn the epoch from it."""

    def __iter__(self):
        return iter([(self.epoch, int(i)) for i in self.shard()[self.skip:].tolist()])


class _EpochDataset(torch.utils.data.Dataset):
    """Reads (epoch, index) from _EpochTaggedSampler and sets the epoch on the worker's copy of
    the dataset before loading, so persistent workers augment with the epoch that was set."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def set_epoch(self, epoch):
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __getitem__(self, key):
        epoch, index = key
        if getattr(self.dataset, "epoch", None) != epoch:
            self.set_epoch(epoch)
        return self.dataset[index]


def build_loader(dataset, ctx, batch_size, num_workers, seed, shuffle=True, drop_last=True):
    """DataLoader with an EpochSampler for this rank and a global `batch_size`.

    With workers, they are persistent (not forked again for every epoch, which on a GPU leaves it
    idle while the new workers fill the queue): the sampler then yields (epoch, index) and the
    dataset is wrapped to set that epoch in the worker (the augmentation seeds depend on it), so
    `loader.dataset` may be that wrapper (`loader_dataset` unwraps it). A dataset's own `collate`
    (core.train_datasets.collate_skipping) is the loader's collate_fn, run in the workers. Memory
    is pinned on CUDA (asynchronous copies with non_blocking=True). The loader's own generator
    keeps the main process's global RNG untouched by worker seeding; the augmentation draws from
    per-sample generators, not from worker seeds. The workers ignore SIGTERM/SIGUSR1 (seed_worker),
    so TrainingRun ends them with close_loader, and an exit hook ends any left over.
    A loader without a single batch (drop_last and fewer usable images than `batch_size`) raises
    DatasetError naming the split (the dataset's layout), the image count and the batch size.
    """
    persistent = num_workers > 0
    sampler_class = _EpochTaggedSampler if persistent else EpochSampler
    sampler = sampler_class(len(dataset), seed, shuffle, ctx.rank, ctx.world_size)
    per_process = local_batch_size(batch_size, ctx) if ctx.distributed else batch_size
    loader = torch.utils.data.DataLoader(
        _EpochDataset(dataset) if persistent else dataset, batch_size=per_process, sampler=sampler,
        num_workers=num_workers, pin_memory=ctx.device.type == "cuda", drop_last=drop_last,
        collate_fn=getattr(dataset, "collate", None), worker_init_fn=seed_worker,
        generator=torch.Generator(), persistent_workers=persistent)
    if len(loader) == 0:  # no worker has started yet: nothing to end
        split = getattr(getattr(dataset, "layout", None), "split_dir", "the training set")
        raise DatasetError(f"{split}: {len(dataset)} usable images give no full batch of {batch_size}; "
                           f"lower --batch_size")
    return loader


def close_loader(loader):
    """End a loader's persistent workers now; torch ends them only when its iterator is collected,
    which an error's traceback can put off until exit."""
    iterator = getattr(loader, "_iterator", None)  # None: no workers started (or a plain iterable)
    if iterator is not None:
        loader._iterator = None  # a later `for batch in loader` starts new workers
        iterator._shutdown_workers()  # asks each worker to end and joins it


@atexit.register  # registered after multiprocessing's own hook, so it runs first
def _end_workers_at_exit(grace=1.0):
    """What multiprocessing's exit hook does, SIGTERM to the daemon children and then a wait, with
    a bound: seed_worker's workers ignore SIGTERM, so that hook alone would wait for them forever."""
    children = [child for child in multiprocessing.active_children() if child.daemon]
    for child in children:
        child.terminate()
    for child in children:
        child.join(timeout=grace)
        if child.is_alive():
            child.kill()
            child.join()


def loader_dataset(loader):
    """The dataset a build_loader loader reads, under the wrapper that persistent workers use."""
    dataset = loader.dataset
    return dataset.dataset if isinstance(dataset, _EpochDataset) else dataset


def set_loader_epoch(loader, epoch, skip_batches=0):
    """Prepare a build_loader loader for `epoch`, skipping the first `skip_batches` batches."""
    sampler = loader.sampler
    sampler.set_epoch(epoch, skip_batches * loader.batch_size)
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)
    loader.generator.manual_seed(derive_seed(sampler.seed, epoch, sampler.rank))
