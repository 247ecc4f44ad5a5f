"""The one ResNet backbone of the project (docs/formats.md#networks-and-checkpoints).

Parameter names follow torchvision (conv1, bn1, layer1..layer4, downsample.0/1) without `fc`,
so torchvision ImageNet weights and the official checkpoints load strictly.

Strides and dilations of layer1..layer4 by output stride (OS):
    OS16: strides 1,2,2,1, dilation 1 everywhere (layer4 keeps stride 16, not dilated).
    OS8:  strides 1,2,1,1, dilation 2 in layer3 and 4 in layer4, except the FIRST block of
          every layer, which keeps dilation 1. Padding = dilation.
The first-block rule differs from torchvision's `replace_stride_with_dilation` (which gives
layer4's first block dilation 2); the official weights were trained with ours.
"""

import hashlib
import os
from urllib.parse import urlparse

import torch
from torch import nn

from core.errors import CheckpointError, SetupError
from core.weights import describe_mismatch, read_state_dict

# per output stride: (strides of layer1..4, dilations of layer1..4 after their first block)
LAYER_SETTINGS = {16: ((1, 2, 2, 1), (1, 1, 1, 1)), 8: ((1, 2, 1, 1), (1, 1, 2, 4))}
PLANES = (64, 128, 256, 512)


def conv3x3(in_channels, out_channels, stride=1, dilation=1):
    """3x3 convolution without bias; padding = dilation keeps the size at stride 1."""
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


def conv1x1(in_channels, out_channels, stride=1):
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual (ResNet-18/34). The stride sits on conv1."""

    expansion = 1

    def __init__(self, in_channels, planes, stride=1, dilation=1, downsample=None):
        super().__init__()
        self.conv1 = conv3x3(in_channels, planes, stride, dilation)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes, 1, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 with a residual (ResNet-50/101). The stride sits on the 3x3 conv."""

    expansion = 4

    def __init__(self, in_channels, planes, stride=1, dilation=1, downsample=None):
        super().__init__()
        self.conv1 = conv1x1(in_channels, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


ARCHITECTURES = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
}


def make_layer(block, in_channels, planes, num_blocks, stride, dilation):
    """One ResNet stage as nn.Sequential; the first block has dilation 1 (module docstring)."""
    out_channels = planes * block.expansion
    downsample = None
    if stride != 1 or in_channels != out_channels:
        downsample = nn.Sequential(conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels))
    blocks = [block(in_channels, planes, stride, 1, downsample)]
    blocks += [block(out_channels, planes, 1, dilation) for _ in range(num_blocks - 1)]
    return nn.Sequential(*blocks)


class ResNet(nn.Module):
    """ResNet trunk without the classifier; forward returns the five feature maps.

    Attributes: conv1, bn1, relu, maxpool, layer1..layer4, `channels` (dict C1..C5 -> channels),
    `output_stride`.
    """

    def __init__(self, block, num_blocks, output_stride=16):
        super().__init__()
        if output_stride not in LAYER_SETTINGS:
            raise ValueError(f"output_stride must be one of {sorted(LAYER_SETTINGS)}, got {output_stride!r}")
        strides, dilations = LAYER_SETTINGS[output_stride]
        self.output_stride = output_stride
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_channels = 64
        for index, (planes, count, stride, dilation) in enumerate(zip(PLANES, num_blocks, strides, dilations), start=1):
            setattr(self, f"layer{index}", make_layer(block, in_channels, planes, count, stride, dilation))
            in_channels = planes * block.expansion
        self.channels = {"C1": 64}
        self.channels.update({f"C{i + 2}": p * block.expansion for i, p in enumerate(PLANES)})
        self._init_weights()

    def _init_weights(self):
        # torchvision's initialisation, so random-init runs match a torchvision ResNet's.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        """x (B, 3, H, W) -> (C1, C2, C3, C4, C5).

        C1 (B, 64, H/4, W/4) after maxpool, C2 = layer1 (/4), C3 = layer2 (/8),
        C4 = layer3 (/16, or /8 at OS8), C5 = layer4 (/16 or /8). Sizes round up (ceil).
        """
        c1 = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(c1)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return c1, c2, c3, c4, c5


def build_resnet(name, output_stride=16, pretrained=None):
    """Build resnet18/34/50/101 at output stride 16 or 8.

    pretrained: None or 'none' -> random initialisation; 'imagenet' -> torchvision's
    IMAGENET1K_V1 weights (downloaded into torch's hub cache if absent); any other string ->
    a local torchvision-style ResNet state_dict file (`fc.*` ignored, `module.` accepted).
    Nothing is downloaded unless 'imagenet' is asked for.
    """
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(ARCHITECTURES)}")
    block, num_blocks = ARCHITECTURES[name]
    model = ResNet(block, num_blocks, output_stride)
    if pretrained is not None and str(pretrained).lower() != "none":
        if str(pretrained).lower() == "imagenet":
            state = imagenet_state_dict(name)
        else:
            state = read_state_dict(pretrained)
        load_backbone_state(model, state, source=pretrained)
    return model


def imagenet_weights(name):
    """torchvision's ImageNet weights enum entry (IMAGENET1K_V1 for every depth)."""
    import torchvision  # imported here: it costs about 2 s at start-up and only training needs it

    enum = getattr(torchvision.models, f"ResNet{name[len('resnet') :]}_Weights")
    return enum.IMAGENET1K_V1


def imagenet_cache_path(name):
    """Where torch looks for the downloaded ImageNet file of backbone `name`."""
    filename = os.path.basename(urlparse(imagenet_weights(name).url).path)
    return os.path.join(torch.hub.get_dir(), "checkpoints", filename)


def imagenet_state_dict(name):
    """torchvision's ImageNet state_dict, loaded safely; SetupError saying what to do otherwise.

    The file in torch's hub cache is checked against the sha256 prefix in its torchvision name
    (resnet50-0676ba61.pth) before it is read, and read with weights_only=True, so a file placed
    there by hand cannot run code. A download is hash-checked the same way by torch.
    """
    weights = imagenet_weights(name)
    path = imagenet_cache_path(name)
    if os.path.isfile(path):
        check_file_hash(path, weights.url)
        return read_state_dict(path)
    try:
        return weights.get_state_dict(progress=True, check_hash=True, weights_only=True)
    except Exception as e:  # offline: URLError; bad download: RuntimeError (hash) or UnpicklingError
        raise SetupError(
            f"the ImageNet weights of {name} could not be downloaded from {weights.url} ({e}). "
            f"Place that file at {path} (where torch looks for it), or pass "
            f"a local torchvision ResNet state_dict file with --pretrained PATH."
        ) from e


def check_file_hash(path, url):
    """Check the sha256 of `path` against the hex prefix in its name (torchvision's `name-<hash>.pth`).

    Raises CheckpointError naming the file, both prefixes and what to do (`url`: the official
    download) on a mismatch.
    """
    match = torch.hub.HASH_REGEX.search(os.path.basename(path))
    if match is None or not match.group(1):
        raise CheckpointError(f"{path}: the file name carries no hash prefix to check")
    expected = match.group(1)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    found = digest.hexdigest()[: len(expected)]
    if found != expected:
        raise CheckpointError(
            f"{path}: sha256 starts with {found}, expected {expected} (the prefix in the official file "
            f"name): the file is damaged or not the official one, and is not loaded. Delete it (the "
            f"next run downloads the official file again), or replace it by the official file from {url}"
        )


def load_backbone_state(model, state, source):
    """Load a torchvision ResNet state_dict strictly into `model`, ignoring its `fc.*` keys."""
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    problem = describe_mismatch(model.state_dict(), state)
    if problem:
        raise CheckpointError(f"{source}: not a matching ResNet state_dict for this backbone: {problem}")
    model.load_state_dict(state, strict=True)
