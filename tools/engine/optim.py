"""The optimisation step's parts: SGD with its parameter groups, the poly schedule and the EMA of
the weights (docs/method.md#optimisation, docs/method.md#ema). Mixed precision is
tools/engine/amp.py; the NaN/inf check of each step's losses is part of its recording
(tools/engine/runlog.py)."""

import copy
import math

import torch

from core.weights import unwrap

GROUP_NAMES = ("backbone_weight", "backbone_bias_bn", "head_weight", "head_bias_bn")


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
    groups = [
        {"params": list(params), "lr": group_lr, "weight_decay": group_wd, "name": name}
        for params, (group_lr, group_wd), name in zip(param_groups, settings, GROUP_NAMES)
    ]
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)


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
