"""The optimisation step's parts: SGD with its parameter groups, the poly schedule, the EMA of the
weights, mixed precision and the NaN/inf check (docs/method.md#optimisation, docs/method.md#ema).

NaN/inf pattern: check_finite raises before backward(), so a bad step never reaches the weights,
and tools.checkpoints.save_resume refuses weights that are not finite; the script lets the error end
the run (exit status non-zero) and does NOT save on the way out. resume.pth (written atomically)
then still holds the last good state, ready for --resume once the cause is fixed (e.g. a lower --lr).
"""
import contextlib
import copy
import math

import torch
import torch.distributed as dist

from core.checkpoint import unwrap
from core.errors import ProjectError, UsageError

GROUP_NAMES = ("backbone_weight", "backbone_bias_bn", "head_weight", "head_bias_bn")
AMP_MODES = ("auto", "bf16", "fp16", "off")


# ---------------------------------------------------------------------------------------------
# Optimisation
# ---------------------------------------------------------------------------------------------
def build_optimizer(param_groups, lr, weight_decay, momentum=0.9, nesterov=True, head_lr_mult=10.0):
    """SGD over the four groups of core.networks.split_parameters (docs/method.md#optimisation).

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


EMA_RAMP = 2000.0  # updates over which the decay ramps up (released tools/ai/torch_utils.py ModelEMA)


def ema_decay_at(decay, updates):
    """Decay of the `updates`-th update: decay * (1 - exp(-updates / EMA_RAMP)) (docs/method.md#ema)."""
    return decay * (1.0 - math.exp(-updates / EMA_RAMP))


class ModelEMA:
    """Exponential moving average of a model's weights, with the authors' ramped decay
    (docs/method.md#ema): the u-th update (u = 1, 2, ...) does ema = d(u) * ema + (1 - d(u)) * w
    with d(u) = ema_decay_at(decay, u), so early on the average follows the network closely.

    As in the authors' ModelEMA, every floating tensor of the state_dict (parameters and BN
    running statistics) is averaged and integer buffers (num_batches_tracked) keep the value they
    had when the copy was made. `module` is an eval-mode copy of the unwrapped model without
    gradients, usable as the teacher (--teacher ema). `updates` is part of state_dict(), so a
    resumed run continues the ramp where it stopped.
    """

    def __init__(self, model, decay=0.999):
        self.module = copy.deepcopy(unwrap(model)).eval().requires_grad_(False)
        self.decay = decay
        self.updates = 0

    def current_decay(self):
        """The decay the last update used (0 before any update)."""
        return ema_decay_at(self.decay, self.updates)

    @torch.no_grad()
    def update(self, model):
        self.updates += 1
        decay = self.current_decay()
        source = unwrap(model).state_dict()
        floats, targets = [], []
        for name, value in self.module.state_dict().items():
            if value.is_floating_point():
                floats.append(value)
                targets.append(source[name].detach())
        torch._foreach_mul_(floats, decay)
        torch._foreach_add_(floats, targets, alpha=1.0 - decay)

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
            raise UsageError("--amp fp16 needs a CUDA device; use bf16 or off on CPU")
        return torch.float16
    raise UsageError(f"unknown --amp mode {mode!r}; choose one of {AMP_MODES}")


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
# Sanity checks
# ---------------------------------------------------------------------------------------------
class NonFiniteError(ProjectError, RuntimeError):
    """A loss term or a weight is NaN or infinite; the message says which and where (and the
    scripts print it as one line: the cause is the settings or the data, not the code)."""


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
