"""The data order and the DataLoader of a training run: the resumable EpochSampler (a pure function
of seed and epoch, sharded over ranks), worker seeding, persistent workers that learn the epoch
from the sampler, and build_loader / set_loader_epoch / close_loader.

Exact resumption (bitwise, on CPU): data order is a function of (seed, epoch), augmentation of
(seed, epoch, index), worker seeds of (seed, epoch, rank).
"""

import atexit
import math
import multiprocessing
import random
import signal

import numpy as np
import torch

from core.errors import DatasetError, UsageError
from tools.engine.distributed import derive_seed, local_batch_size
from tools.engine.stop_request import STOP_SIGNALS
from tools.pool import worker_threads


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
        return order[self.rank :: self.world_size]

    def __iter__(self):
        return iter(self.shard()[self.skip :].tolist())

    def __len__(self):
        return max(0, math.ceil(self.num_samples / self.world_size) - self.skip)

    def state_dict(self):
        return {
            "seed": self.seed,
            "epoch": self.epoch,
            "skip": self.skip,
            "num_samples": self.num_samples,
            "world_size": self.world_size,
            "shuffle": self.shuffle,
        }

    def check_compatible(self, state, path):
        """Resuming must see the same order: same seed, dataset size and process count."""
        for key in ("seed", "num_samples", "world_size", "shuffle"):
            if state.get(key) != getattr(self, key):
                raise UsageError(
                    f"{path}: the run was saved with {key}={state.get(key)}, this run "
                    f"has {key}={getattr(self, key)}; resuming would change the data "
                    f"order (use the original settings or a new --tag)"
                )


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
        return iter([(self.epoch, int(i)) for i in self.shard()[self.skip :].tolist()])


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
        _EpochDataset(dataset) if persistent else dataset,
        batch_size=per_process,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=ctx.device.type == "cuda",
        drop_last=drop_last,
        collate_fn=getattr(dataset, "collate", None),
        worker_init_fn=seed_worker,
        generator=torch.Generator(),
        persistent_workers=persistent,
    )
    if len(loader) == 0:  # no worker has started yet: nothing to end
        split = getattr(getattr(dataset, "layout", None), "split_dir", "the training set")
        raise DatasetError(
            f"{split}: {len(dataset)} usable images give no full batch of {batch_size}; lower --batch_size"
        )
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
