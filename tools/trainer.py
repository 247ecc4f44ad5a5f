"""The training engine shared by train_rsepm.py and train_seg.py: building blocks, no framework.

Intended loop (each script reads top to bottom like this; tests/ddp_worker.py is a runnable
miniature):

    ctx = setup_distributed(args.gpus)
    seed_everything(args.seed, ctx.rank)
    dataset = ClassificationDataset(layout, TrainTransform(...), seed=args.seed)
    loader = build_loader(dataset, ctx, args.batch_size, args.num_workers, args.seed)
    model = wrap_model(build_network(...), ctx, sync_bn=args.sync_bn)
    optimizer = build_optimizer(split_parameters(model), args.lr, args.wd, nesterov=args.nesterov)
    scheduler = PolyLR(optimizer, args.max_epoch * len(loader))
    amp_dtype = resolve_amp_dtype(ctx.device, args.amp)          # None = full precision
    scaler = make_grad_scaler(ctx.device, amp_dtype)
    checkpoint = resume_path(args.pred_dir, args.tag)
    epoch, step, iteration, resumed = 0, 0, 0, False
    if args.resume and os.path.isfile(checkpoint):
        state = load_resume(checkpoint, model, optimizer, scheduler, scaler, sampler=loader.sampler, ctx=ctx)
        epoch, step, iteration, resumed = state["epoch"], state["step"], state["iteration"], True
    logger = RunLogger(log_dir, enabled=ctx.is_main, purge_after=iteration if resumed else None)
    for epoch in range(epoch, args.max_epoch):
        set_loader_epoch(loader, epoch, skip_batches=step)
        for batch in loader:
            with autocast_context(ctx.device, amp_dtype):
                losses = compute_losses(model, batch)            # dict name -> scalar tensor
            values = check_finite(losses, iteration, ctx)        # raises NonFiniteError
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(sum(losses.values())).backward()
            scaler.step(optimizer); scaler.update(); scheduler.step()
            step, iteration = step + 1, iteration + 1
            if iteration % args.log_interval == 0:
                logger.log(iteration, epoch, {**values, "lr": scheduler.get_last_lr()[0]}, images=...)
            if iteration % args.save_interval == 0:               # on every rank (collective)
                save_resume(checkpoint, model, optimizer, scheduler, scaler, None,
                            epoch, step, iteration, sampler=loader.sampler, ctx=ctx)
        step = 0
    if ctx.is_main:
        save_final(args.pred_dir, args.tag, model, run_config(args, ctx))
    cleanup_distributed()

NaN/inf pattern: check_finite raises before backward(), so a bad step never reaches the weights,
and save_resume refuses weights that are not finite; the script lets the error end the run
(exit status non-zero) and does NOT save on the way out. resume.pth (written atomically) then
still holds the last good state, ready for --resume once the cause is fixed (e.g. a lower --lr).

Batch size: --batch_size is the global batch (METHOD.md: 16) whatever the number of processes;
each DDP rank loads batch_size / world_size (local_batch_size), DataParallel splits it itself.
Exact resumption (bitwise, on CPU): data order is a function of (seed, epoch), augmentation of
(seed, epoch, index), worker seeds of (seed, epoch, rank), and every rank's RNG states travel in
the resume checkpoint. On CUDA, non-deterministic kernels can still make runs differ slightly.
"""
import argparse
import contextlib
import copy
import json
import math
import os
import platform
import random
import subprocess
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from core.safety import remove_stale_temp_files
from tools.args import resolve_devices, str2bool
from tools.checkpoint import save_weights, unwrap
from tools.io import atomic_output, write_json
from tools.paths import model_dir, model_path

GROUP_NAMES = ("backbone_weight", "backbone_bias_bn", "head_weight", "head_bias_bn")
AMP_MODES = ("auto", "bf16", "fp16", "off")
RESUME_FORMAT = "rsepm-resume-1"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------------------------
# Command-line arguments shared by the training scripts
# ---------------------------------------------------------------------------------------------
def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_training_args(parser, lr, weight_decay, max_epoch, batch_size=16):
    """Flags of METHOD.md section 3 with the script's defaults (they differ per stage)."""
    parser.add_argument("--batch_size", default=batch_size, type=int,
                        help="global batch size (split over DDP processes)")
    parser.add_argument("--max_epoch", "--max_epochs", dest="max_epoch", default=max_epoch, type=int)
    parser.add_argument("--lr", default=lr, type=float, help="backbone learning rate (head: x10)")
    parser.add_argument("--wd", default=weight_decay, type=float, help="weight decay (not on biases/BN)")
    parser.add_argument("--nesterov", default=True, type=str2bool)
    parser.add_argument("--crop_size", "--image_size", dest="crop_size", default=512, type=int,
                        help="side of the square training crop")
    parser.add_argument("--min_image_size", default=320, type=int, help="smallest random long side")
    parser.add_argument("--max_image_size", default=640, type=int, help="largest random long side")
    parser.add_argument("--seed", default=0, type=int)
    parser.add_argument("--amp", default="auto", choices=AMP_MODES,
                        help="mixed precision: auto = bf16 on CUDA if supported, else fp16; off on CPU")
    parser.add_argument("--sync_bn", default=False, type=str2bool, help="SyncBatchNorm under torchrun (CUDA)")
    parser.add_argument("--log_interval", default=50, type=positive_int, help="iterations between log lines")
    parser.add_argument("--save_interval", default=500, type=positive_int,
                        help="iterations between resume checkpoints (models/{tag}/resume.pth)")
    parser.add_argument("--resume", default=False, type=str2bool,
                        help="continue from models/{tag}/resume.pth when it exists")


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
        raise ValueError(f"--batch_size {batch_size} is not divisible by the {ctx.world_size} processes")
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
                raise ValueError(f"{path}: the run was saved with {key}={state.get(key)}, this run "
                                 f"has {key}={getattr(self, key)}; resuming would change the data "
                                 f"order (use the original settings or a new --tag)")


def seed_worker(worker_id):
    """DataLoader worker_init_fn: seed python/numpy from the worker's torch seed.

    The transforms use their own per-sample generators; this only covers code that uses the
    global generators. The torch seed itself comes from the loader's generator, reseeded from
    (seed, epoch, rank) by set_loader_epoch.
    """
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def build_loader(dataset, ctx, batch_size, num_workers, seed, shuffle=True, drop_last=True):
    """DataLoader with an EpochSampler for this rank and a global `batch_size`.

    persistent_workers stays False: workers are forked for every epoch and so see the epoch set
    on the dataset (the augmentation seeds depend on it). The loader's own generator keeps the
    main process's global RNG untouched by worker seeding.
    """
    sampler = EpochSampler(len(dataset), seed, shuffle, ctx.rank, ctx.world_size)
    per_process = local_batch_size(batch_size, ctx) if ctx.distributed else batch_size
    return torch.utils.data.DataLoader(
        dataset, batch_size=per_process, sampler=sampler, num_workers=num_workers,
        pin_memory=ctx.device.type == "cuda", drop_last=drop_last, worker_init_fn=seed_worker,
        generator=torch.Generator(), persistent_workers=False)


def set_loader_epoch(loader, epoch, skip_batches=0):
    """Prepare a build_loader loader for `epoch`, skipping the first `skip_batches` batches."""
    sampler = loader.sampler
    sampler.set_epoch(epoch, skip_batches * loader.batch_size)
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)
    loader.generator.manual_seed(derive_seed(sampler.seed, epoch, sampler.rank))


# ---------------------------------------------------------------------------------------------
# Optimisation
# ---------------------------------------------------------------------------------------------
def build_optimizer(param_groups, lr, weight_decay, momentum=0.9, nesterov=True, head_lr_mult=10.0):
    """SGD over the four groups of core.networks.split_parameters (METHOD.md section 3).

    param_groups: (backbone weights, backbone biases+BN, head weights, head biases+BN).
    Learning rates lr, lr, head_lr_mult*lr, head_lr_mult*lr; weight decay only on the weights.
    Weight decay goes into SGD's weight_decay (the original wrappers put it in the momentum
    slot; run_config records that we do not). Each group carries its `name`.
    """
    if len(param_groups) != 4:
        raise ValueError(f"expected 4 parameter groups, got {len(param_groups)}")
    settings = ((lr, weight_decay), (lr, 0.0), (head_lr_mult * lr, weight_decay), (head_lr_mult * lr, 0.0))
    groups = [{"params": list(params), "lr": group_lr, "weight_decay": group_wd, "name": name}
              for params, (group_lr, group_wd), name in zip(param_groups, settings, GROUP_NAMES)]
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov,
                           weight_decay=weight_decay)


class PolyLR(torch.optim.lr_scheduler.LRScheduler):
    """lr = base_lr * (1 - it / max_iterations) ** power, stepped once per iteration.

    `it` counts the scheduler.step() calls so far (0 before the first optimiser step); 0 after
    max_iterations. Its state (last_epoch = it, base_lrs) is saved by state_dict().
    """

    def __init__(self, optimizer, max_iterations, power=0.9, last_epoch=-1):
        if max_iterations <= 0:
            raise ValueError(f"max_iterations must be positive, got {max_iterations}")
        self.max_iterations, self.power = int(max_iterations), power
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        progress = min(self.last_epoch, self.max_iterations) / self.max_iterations
        return [base * (1.0 - progress) ** self.power for base in self.base_lrs]


class ModelEMA:
    """Exponential moving average of a model's weights: ema = decay * ema + (1 - decay) * w.

    Floating tensors of the state_dict (parameters and BN running statistics) are averaged;
    integer buffers (num_batches_tracked) are copied. `module` is an eval-mode copy of the
    unwrapped model without gradients, usable as the teacher (METHOD.md section 3, --teacher ema).
    """

    def __init__(self, model, decay=0.999):
        self.module = copy.deepcopy(unwrap(model)).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model):
        source = unwrap(model).state_dict()
        floats, targets, others = [], [], []
        for name, value in self.module.state_dict().items():
            if value.is_floating_point():
                floats.append(value)
                targets.append(source[name].detach())
            else:
                others.append((value, source[name]))
        torch._foreach_mul_(floats, self.decay)
        torch._foreach_add_(floats, targets, alpha=1.0 - self.decay)
        for value, new in others:
            value.copy_(new)
        self.updates += 1

    def state_dict(self):
        return {"decay": self.decay, "updates": self.updates, "module": self.module.state_dict()}

    def load_state_dict(self, state):
        self.decay, self.updates = state["decay"], state["updates"]
        self.module.load_state_dict(state["module"])


# ---------------------------------------------------------------------------------------------
# Mixed precision
# ---------------------------------------------------------------------------------------------

def resolve_amp_dtype(device, mode="auto"):
    """torch dtype for autocast, or None for full precision.

    auto: bf16 on a CUDA device that supports it, fp16 on older CUDA devices, None on CPU.
    bf16/fp16: that dtype (bf16 is allowed on CPU; fp16 on CPU is refused). off: None.
    """
    device = torch.device(device)
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None
    if mode == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if mode == "bf16":
        return torch.bfloat16
    if mode == "fp16":
        if device.type != "cuda":
            raise ValueError("--amp fp16 needs a CUDA device; use bf16 or off on CPU")
        return torch.float16
    raise ValueError(f"unknown --amp mode {mode!r}; choose one of {AMP_MODES}")


def autocast_context(device, dtype=None, enabled=True):
    """torch.autocast(device, dtype), or a no-op when dtype is None (full precision) or not enabled.

    dtype: from resolve_amp_dtype(device, args.amp).
    """
    if not enabled or dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def make_grad_scaler(device, dtype):
    """GradScaler, enabled only for fp16 (bf16 and fp32 need no loss scaling: then a no-op)."""
    return torch.amp.GradScaler(torch.device(device).type, enabled=dtype == torch.float16)


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------
def resume_path(pred_dir, tag):
    return os.path.join(model_dir(pred_dir, tag), "resume.pth")


def config_path(pred_dir, tag):
    return os.path.join(model_dir(pred_dir, tag), "config.json")


def rng_state(device=None):
    """This process's generator states in plain types (loadable with weights_only=True)."""
    np_state = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]),
                       float(np_state[4])],
             "torch": torch.get_rng_state()}
    if device is not None and torch.device(device).type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state, device=None):
    random.setstate(_as_tuple(state["python"]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device is not None and torch.device(device).type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def _as_tuple(value):
    """random.setstate needs tuples all the way down; a loaded checkpoint may hold lists."""
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def _gather(obj, ctx):
    """[obj of rank 0, obj of rank 1, ...] on every rank (just [obj] without DDP)."""
    if ctx is None or not ctx.distributed:
        return [obj]
    gathered = [None] * ctx.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def save_resume(path, model, optimizer, scheduler=None, scaler=None, ema=None, epoch=0, step=0,
                iteration=0, sampler=None, extra=None, ctx=None):
    """Write everything needed to continue the run bit for bit, atomically.

    Call on EVERY rank under DDP (it gathers each rank's RNG states); only rank 0 writes.
    epoch: current epoch; step: batches already done in it; iteration: optimiser steps so far.
    extra: a dict of plain values (numbers, strings, lists) for the script.
    Raises NonFiniteError, writing nothing, when a weight is NaN/inf (the previous file stays).
    """
    names, params = zip(*unwrap(model).named_parameters())
    finite = torch.stack([torch.isfinite(p).all() for p in params]).cpu()  # one host sync
    if not finite.all():
        bad = [n for n, ok in zip(names, finite.tolist()) if not ok]
        raise NonFiniteError(f"iteration {iteration}: non-finite weights in {', '.join(bad[:5])}"
                             f"{' ...' if len(bad) > 5 else ''}; {path} not written, it keeps the "
                             f"last good state")
    rng_states = _gather(rng_state(ctx.device if ctx else None), ctx)
    if ctx is not None and not ctx.is_main:
        return
    state = {
        "format": RESUME_FORMAT, "epoch": int(epoch), "step": int(step), "iteration": int(iteration),
        "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "ema": ema.state_dict() if ema is not None else None,
        "sampler": sampler.state_dict() if sampler is not None else None,
        "rng": rng_states, "extra": extra or {},
    }
    with atomic_output(path, "wb") as f:
        torch.save(state, f)


def load_resume(path, model, optimizer=None, scheduler=None, scaler=None, ema=None, sampler=None,
                ctx=None):
    """Restore a save_resume checkpoint into the given objects (each optional but the model).

    Returns dict(epoch, step, iteration, extra). Raises ValueError naming the file when it is
    not a resume checkpoint or the run's seed / dataset size / process count changed.
    """
    device = ctx.device if ctx else torch.device("cpu")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: resume checkpoint not found") from None
    except Exception as e:  # pickle/zip/EOF errors alike
        raise ValueError(f"{path}: not a readable resume checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT:
        raise ValueError(f"{path}: not a resume checkpoint of this project (format "
                         f"{state.get('format') if isinstance(state, dict) else type(state).__name__!r})")
    if sampler is not None and state["sampler"] is not None:
        sampler.check_compatible(state["sampler"], path)
    rank = ctx.rank if ctx else 0
    if len(state["rng"]) <= rank:
        raise ValueError(f"{path}: saved by {len(state['rng'])} process(es), this is rank {rank}")
    unwrap(model).load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state["scaler"] and scaler.is_enabled():
        scaler.load_state_dict(state["scaler"])
    if ema is not None and state["ema"] is not None:
        ema.load_state_dict(state["ema"])
    set_rng_state(state["rng"][rank], device)
    return {"epoch": state["epoch"], "step": state["step"], "iteration": state["iteration"],
            "extra": state["extra"]}


def git_commit():
    """(commit hash, dirty flag) of the repository, or (None, None) outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                                capture_output=True, text=True, timeout=10, check=True).stdout
        return commit, bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        return None, None


def run_config(args, ctx=None, **extra):
    """The run's full configuration for config.json: every argument plus the environment."""
    commit, dirty = git_commit()
    config = {
        "args": vars(args) if not isinstance(args, dict) else dict(args),
        "seed": getattr(args, "seed", None) if not isinstance(args, dict) else args.get("seed"),
        "command": sys.argv,
        "world_size": ctx.world_size if ctx else 1,
        "device": str(ctx.device) if ctx else "cpu",
        "weight_decay_in_momentum_slot": False,
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "torchvision": _version("torchvision"), "numpy": np.__version__,
                     "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version()},
        "git_commit": commit, "git_dirty": dirty,
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    config.update(extra)
    # values json cannot write (a torch.device in args, ...) become strings, so that the final
    # write after hours of training cannot fail on them
    return json.loads(json.dumps(config, default=str))


def _version(module):
    try:
        return __import__(module).__version__
    except ImportError:
        return None


def save_final(pred_dir, tag, model, config, strategy="last"):
    """Write models/{tag}/{strategy}.pth (flat state_dict) and config.json beside it."""
    weights = model_path(pred_dir, tag, strategy)
    save_weights(model, weights)
    write_json(config_path(pred_dir, tag), config)
    return weights


# ---------------------------------------------------------------------------------------------
# Logging and sanity checks
# ---------------------------------------------------------------------------------------------
class NonFiniteError(RuntimeError):
    """A loss term or a weight is NaN or infinite; the message says which and where."""


def check_finite(losses, iteration, ctx=None):
    """Return {name: float} for the loss terms, or raise NonFiniteError.

    losses: dict name -> scalar tensor (or number). One host sync for all terms. Under DDP the
    verdict is shared (all-reduce), so every rank stops together instead of hanging.
    """
    names = list(losses)
    values = torch.stack([torch.as_tensor(losses[k]).detach().float().reshape(()) for k in names])
    numbers = values.cpu().tolist()
    offending = [f"{n}={v}" for n, v in zip(names, numbers) if not math.isfinite(v)]
    stop = bool(offending)
    if ctx is not None and ctx.distributed:
        flag = torch.tensor(int(stop), device=values.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        stop = bool(flag.item())
    if stop:
        where = ", ".join(offending) if offending else "on another process"
        raise NonFiniteError(f"iteration {iteration}: non-finite loss {where}; the run stops "
                                 f"here and the last resume checkpoint is left as it was")
    return dict(zip(names, numbers))


class MeanMeter:
    """Running means of named scalars between two log lines."""

    def __init__(self):
        self.sums, self.counts = {}, {}

    def update(self, values):
        for name, value in values.items():
            self.sums[name] = self.sums.get(name, 0.0) + float(value)
            self.counts[name] = self.counts.get(name, 0) + 1

    def means(self, reset=True):
        result = {n: self.sums[n] / self.counts[n] for n in self.sums}
        if reset:
            self.sums, self.counts = {}, {}
        return result


class RunLogger:
    """TensorBoard scalars, a JSONL file (one object per log step) and a plain text log.

    Files in log_dir: log.jsonl, log.txt and TensorBoard event files. With enabled=False (ranks
    other than 0) nothing is created, written or printed. The logs are appended a
    line at a time (flushed), not written atomically: they are records, not pipeline inputs.
    purge_after: iteration of a resumed run; JSONL records and TensorBoard events after it (from
    the interrupted run, to be redone) are dropped so each iteration appears once.
    """

    def __init__(self, log_dir, enabled=True, purge_after=None):
        self.enabled = enabled
        self.log_dir = log_dir
        self.last_time = time.perf_counter()
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter  # only rank 0 needs tensorboard

        os.makedirs(log_dir, exist_ok=True)
        self.jsonl_path = os.path.join(log_dir, "log.jsonl")
        if purge_after is not None:
            self._purge_jsonl(purge_after)
        self.writer = SummaryWriter(log_dir, purge_step=None if purge_after is None else purge_after + 1)
        self.jsonl = open(self.jsonl_path, "a", encoding="utf-8")
        self.text = open(os.path.join(log_dir, "log.txt"), "a", encoding="utf-8")

    def _purge_jsonl(self, iteration):
        if not os.path.isfile(self.jsonl_path):
            return
        with open(self.jsonl_path, encoding="utf-8") as f:
            kept = [line for line in f if _parsed_iteration(line) is not None
                    and _parsed_iteration(line) <= iteration]
        with atomic_output(self.jsonl_path, "w") as f:
            f.writelines(kept)

    def info(self, message):
        """Print a line and append it to log.txt (rank 0 only)."""
        if self.enabled:
            print(message, flush=True)
            self.text.write(message + "\n")
            self.text.flush()

    def log(self, iteration, epoch, scalars, images=None):
        """Record one log step. scalars: name -> number (loss terms, lr, fractions, ...).

        images: images processed since the previous log() call (all ranks together), which
        adds `images_per_s` measured over the same span.
        """
        now = time.perf_counter()
        scalars = {k: float(v) for k, v in scalars.items()}
        if images is not None:
            scalars["images_per_s"] = images / max(now - self.last_time, 1e-9)
        self.last_time = now
        if not self.enabled:
            return
        record = {"iteration": int(iteration), "epoch": int(epoch), **scalars}
        self.jsonl.write(json.dumps(record) + "\n")
        self.jsonl.flush()
        for name, value in scalars.items():
            self.writer.add_scalar(f"train/{name}", value, iteration)
        self.writer.flush()
        terms = " ".join(f"{k} {v:.4g}" for k, v in scalars.items())
        self.info(f"[ep {epoch} it {iteration}] {terms}")

    def close(self):
        if self.enabled:
            self.writer.close()
            self.jsonl.close()
            self.text.close()
            self.enabled = False


def _parsed_iteration(line):
    """The record's iteration; None for a line cut short by a crash (dropped by the purge)."""
    try:
        return int(json.loads(line)["iteration"])
    except (ValueError, KeyError, TypeError):
        return None


# ---------------------------------------------------------------------------------------------
# The bookkeeping of a run, shared by train_rsepm.py and train_seg.py
# ---------------------------------------------------------------------------------------------
class TrainingRun:
    """Everything around the optimisation step that both training scripts do the same way.

    Builds the poly schedule and the grad scaler, resumes from models/{tag}/resume.pth
    (--resume), writes config.json, opens the logs and the progress bar; then `epochs()` drives
    the data order, `step(loss)` applies one optimiser step, `record(...)` logs and writes the
    periodic resume checkpoints, and `finish()` saves the final weights. Usage:

        with TrainingRun(args, ctx, network, optimizer, loader, ema, desc="train_x", **extra) as run:
            for epoch in run.epochs():
                model.train()
                for batch in loader:
                    with autocast_context(ctx.device, run.amp_dtype): losses = ...
                    values = check_finite(losses, run.iteration, ctx)
                    run.step(total_loss)
                    run.record(epoch, values, images=batch_size)
            return run.finish()
    """

    def __init__(self, args, ctx, network, optimizer, loader, ema=None, desc="train", **config_extra):
        self.args, self.ctx, self.network, self.optimizer, self.loader, self.ema = (
            args, ctx, network, optimizer, loader, ema)
        self.iterations_per_epoch = len(loader)  # len(loader) shrinks when a resumed epoch skips batches
        self.max_iterations = args.max_epoch * self.iterations_per_epoch
        self.scheduler = PolyLR(optimizer, self.max_iterations)
        self.amp_dtype = resolve_amp_dtype(ctx.device, args.amp)
        self.scaler = make_grad_scaler(ctx.device, self.amp_dtype)
        self.resume_file = resume_path(args.pred_dir, args.tag)
        if ctx.is_main:  # temporaries of writes killed in earlier runs (a resume.pth one is hundreds of MB)
            folder = model_dir(args.pred_dir, args.tag)
            remove_stale_temp_files(folder)
            remove_stale_temp_files(os.path.join(folder, "logs"))
        self.epoch, self.step_in_epoch, self.iteration = 0, 0, 0
        resumed = args.resume and os.path.isfile(self.resume_file)
        if resumed:
            state = load_resume(self.resume_file, network, optimizer, self.scheduler, self.scaler, ema,
                                loader.sampler, ctx)
            self.epoch, self.step_in_epoch, self.iteration = state["epoch"], state["step"], state["iteration"]
        self.config = run_config(args, ctx, tag=args.tag, iterations_per_epoch=self.iterations_per_epoch,
                                 max_iterations=self.max_iterations, amp_dtype=str(self.amp_dtype), **config_extra)
        if ctx.is_main:
            write_json(config_path(args.pred_dir, args.tag), self.config)
        # purge_after: a fresh run drops an earlier run's records of the same tag
        self.logger = RunLogger(os.path.join(model_dir(args.pred_dir, args.tag), "logs"), enabled=ctx.is_main,
                                purge_after=self.iteration)
        self.logger.info(f"[i] tag {args.tag}")
        self.logger.info(f"[i] {self.iterations_per_epoch} iterations/epoch x {args.max_epoch} epochs, batch "
                         f"{args.batch_size}, device {ctx.device}, world size {ctx.world_size}, amp "
                         f"{self.amp_dtype}" + (f", resumed at epoch {self.epoch} iteration {self.iteration}"
                                                if resumed else ""))
        self.meter, self.images_since_log = MeanMeter(), 0
        from tqdm import tqdm
        self.progress = tqdm(total=self.max_iterations, initial=self.iteration, desc=desc,
                             disable=not ctx.is_main, dynamic_ncols=True)
        self.last_time = time.perf_counter()

    def epochs(self):
        """Yield the remaining epochs, each with its data order set (skipping the batches a
        resumed epoch already did); a resume checkpoint is written after each."""
        for epoch in range(self.epoch, self.args.max_epoch):
            self.epoch = epoch
            set_loader_epoch(self.loader, epoch, skip_batches=self.step_in_epoch)
            yield epoch
            self.step_in_epoch = 0
            self.save_resume(epoch + 1, 0)

    def step(self, loss):
        """Backward and one optimiser step (with the grad scaler, the schedule and the EMA)."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.network)
        self.step_in_epoch, self.iteration = self.step_in_epoch + 1, self.iteration + 1

    def record(self, epoch, scalars, images, progress_loss=None):
        """After step(): progress bar, averaged log line every --log_interval iterations and at
        the end of each epoch, resume checkpoint every --save_interval iterations."""
        images = images * self.ctx.world_size
        self.images_since_log += images
        self.meter.update(scalars)
        now = time.perf_counter()
        self.progress.set_postfix(loss=f"{progress_loss if progress_loss is not None else 0:.3f}", ep=epoch,
                                  img_s=f"{images / max(now - self.last_time, 1e-9):.1f}")
        self.last_time = now
        self.progress.update(1)
        end_of_epoch = self.step_in_epoch == self.iterations_per_epoch
        if self.iteration % self.args.log_interval == 0 or end_of_epoch:
            self.logger.log(self.iteration, epoch, {**self.meter.means(), "lr": self.scheduler.get_last_lr()[0]},
                            images=self.images_since_log)
            self.images_since_log = 0
        if self.iteration % self.args.save_interval == 0 and not end_of_epoch:
            self.save_resume(epoch, self.step_in_epoch)

    def save_resume(self, epoch, step):
        save_resume(self.resume_file, self.network, self.optimizer, self.scheduler, self.scaler, self.ema,
                    epoch, step, self.iteration, self.loader.sampler, ctx=self.ctx)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        """Close the progress bar and logs also when the run stops on an error (NaN, Ctrl-C)."""
        self.progress.close()
        self.logger.close()
        return False

    def finish(self):
        """Write last.pth (and ema.pth) with config.json on rank 0, close logs, leave the group."""
        self.progress.close()
        if self.ctx.is_main:
            save_final(self.args.pred_dir, self.args.tag, self.network, self.config)
            if self.ema is not None:
                save_weights(self.ema.module, model_path(self.args.pred_dir, self.args.tag, "ema"))
            self.logger.info(f"[i] saved {model_path(self.args.pred_dir, self.args.tag)}")
        self.logger.close()
        cleanup_distributed()
        return {"tag": self.args.tag, "iterations": self.iteration,
                "weights": model_path(self.args.pred_dir, self.args.tag), "network": self.network,
                "rank": self.ctx.rank}
