"""Mixed precision of a training run: the autocast dtype of --amp, the autocast context and the
grad scaler (fp16 only)."""

import contextlib

import torch

from core.errors import UsageError
from tools.args import AMP_MODES


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
