"""Full precision for target generation (docs/method.md#scg, precision paragraph).

Training may run under torch.autocast (bf16/fp16). The targets (CAM normalisation, SCG, PAMR,
certain filter, edge predict, mix labels) must not: inside autocast a matrix product of two
float32 tensors still runs in bf16, which moves M_scg by tenths and flips a few percent of the
certain-filter labels. Every target function is therefore wrapped by `float32_targets`, which
turns autocast off for the device of its tensors; the functions also cast their inputs with
.float() themselves.
"""

import functools

import torch


def _device_type(args, kwargs):
    for value in list(args) + list(kwargs.values()):
        if torch.is_tensor(value):
            return value.device.type
        if isinstance(value, (list, tuple)) and value and torch.is_tensor(value[0]):
            return value[0].device.type
    return "cpu"


def autocast_off(device_type):
    """A context in which autocast is disabled on `device_type` ('cpu', 'cuda', ...)."""
    if not torch.amp.is_autocast_available(device_type):
        return torch.autocast("cpu", enabled=False)  # nothing to turn off on that device
    return torch.autocast(device_type=device_type, enabled=False)


def float32_targets(function):
    """Decorator: run `function` with autocast disabled on the device of its first tensor
    argument (a list of tensors counts by its first element), whatever the caller's state."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with autocast_off(_device_type(args, kwargs)):
            return function(*args, **kwargs)

    return wrapper
