"""Counted FLOPs of the networks as the scripts run them, for the model-FLOP utilisation (MFU) that
the training log line shows on CUDA (tools/engine/runlog.py) and tools/gpu/gpu_check.py reports.

The counts come from torch.utils.flop_counter.FlopCounterMode (convolutions and matrix
products, 2 FLOPs per multiply-add; element-wise work such as PAMR's affinities is not counted,
as is usual for MFU) over one real forward and backward on random inputs, with the weights the
scripts would build. They do not depend on the precision, so they are counted in float32.
"""

import torch
from torch.utils.flop_counter import FlopCounterMode

from core.multiscale import multiscale_inference
from core.networks import RSEPM, build_network
from core.rsepm import LOSS_TERMS, RSEPMTraining

# Dense (no sparsity) tensor-core peak TFLOP/s per autocast mode, from NVIDIA's data sheets. For
# --amp off the peak is TF32's: cuDNN runs float32 convolutions in TF32 by default on these GPUs.
# The first name that occurs in torch.cuda.get_device_name() wins, so specific names come first.
PEAK_TFLOPS = (
    ("H100 PCIe", {"off": 378.0, "bf16": 756.0, "fp16": 756.0}),
    ("H100 NVL", {"off": 417.5, "bf16": 835.0, "fp16": 835.0}),
    ("H200", {"off": 494.7, "bf16": 989.4, "fp16": 989.4}),
    ("H100", {"off": 494.7, "bf16": 989.4, "fp16": 989.4}),  # SXM
    ("A100", {"off": 156.0, "bf16": 312.0, "fp16": 312.0}),
)


def peak_tflops(device_name, amp):
    """Peak TFLOP/s of `device_name` for autocast mode `amp` ("off", "bf16", "fp16"); None when the
    device is not in the table (the CPU included)."""
    for name, peaks in PEAK_TFLOPS:
        if name.lower() in (device_name or "").lower():
            return peaks[amp]
    return None


def _count(fn):
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def rsepm_train_flops(config, backbone, num_classes, crop, device, batch=2):
    """FLOPs per image of one RS+EPM training step (forward with RS and the mix, backward) at
    crop x crop; counted on `batch` images (the mix pairs images, so at least 2)."""
    torch.manual_seed(0)
    step = RSEPMTraining(RSEPM(backbone, num_classes, output_stride=16), config).to(device).train()
    images = torch.randn(batch, 3, crop, crop, device=device)
    tags = torch.zeros(batch, num_classes - 1, device=device)  # foreground classes only
    tags[torch.arange(batch), torch.arange(batch) % (num_classes - 1)] = 1.0
    valid = torch.ones(batch, crop, crop, dtype=torch.bool, device=device)
    weights = config.weights()

    def run():
        out = step(images, tags, valid, use_rs=True, use_mix=True, seed=0)
        sum(weights[k] * out[k].float().mean() for k in LOSS_TERMS if k in out).backward()

    return _count(run) / batch


def seg_train_flops(decoder, backbone, num_classes, output_stride, crop, device, loss_fn, batch=2):
    """FLOPs per image of one segmentation training step (forward, loss_fn(logits, masks), backward)."""
    torch.manual_seed(0)
    network = build_network(decoder, backbone, num_classes, output_stride=output_stride).to(device).train()
    images = torch.randn(batch, 3, crop, crop, device=device)
    masks = torch.randint(0, num_classes, (batch, crop, crop), device=device)
    return _count(lambda: loss_fn(network(images), masks).backward()) / batch


@torch.no_grad()
def inference_flops(network, kind, height, width, scales, device, **options):
    """FLOPs of multiscale_inference (every scale and its flip) on one (3, height, width) image."""
    network = network.to(device).eval()
    image = torch.randn(3, height, width, device=device)
    return _count(lambda: multiscale_inference(network, image, kind, scales=scales, **options))
