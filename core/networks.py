"""Networks: the single-stage RSEPM model and the DeepLabV3+ / DeepLabV2 segmenters.

Parameter names and shapes match the official checkpoints (docs/formats.md#networks-and-checkpoints); the key
counts for VOC (21 classes) are RSEPM/R50 374, DeepLabV3+/R101 679, DeepLabV2/R101 632.
Every constructor takes `num_classes` INCLUDING background (21 for VOC, 6 for TOY).

Initialisation: the backbone is ImageNet (or torchvision's random init); the new layers (CAM
classifier, ASPP, decoder, DeepLabV2 classifier) keep PyTorch's default initialisation, as in the
authors' released network code, which sets none of its own (docs/method.md#network).
"""

import torch
import torch.nn.functional as F
from torch import nn

from core.resnet import ARCHITECTURES, build_resnet
from core.weights import unwrap

ASPP_RATES = {16: (6, 12, 18), 8: (12, 24, 36)}
DEEPLABV2_RATES = (6, 12, 18, 24)
FEATURE_SIZE = 256
DEFAULT_OUTPUT_STRIDE = {"rsepm": 16, "deeplabv3+": 8, "deeplabv2": 8}


def resize_bilinear(x, size):
    """(B, C, h, w) -> (B, C, *size), bilinear, align_corners=False."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ConvBlock(nn.Module):
    """Conv (no bias) + BatchNorm + ReLU; keys `conv.weight`, `bn.*`."""

    def __init__(self, in_channels, out_channels, kernel_size, padding=0, dilation=1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))


class ASPP(nn.Module):
    """DeepLabV3 atrous spatial pyramid pooling on C5: (B, in, h, w) -> (B, 256, h, w)."""

    def __init__(self, in_channels, output_stride=16, out_channels=FEATURE_SIZE):
        super().__init__()
        if output_stride not in ASPP_RATES:
            raise ValueError(f"output_stride must be one of {sorted(ASPP_RATES)}, got {output_stride!r}")
        r2, r3, r4 = ASPP_RATES[output_stride]
        self.aspp1 = ConvBlock(in_channels, out_channels, 1)
        self.aspp2 = ConvBlock(in_channels, out_channels, 3, padding=r2, dilation=r2)
        self.aspp3 = ConvBlock(in_channels, out_channels, 3, padding=r3, dilation=r3)
        self.aspp4 = ConvBlock(in_channels, out_channels, 3, padding=r4, dilation=r4)
        self.global_avg_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), ConvBlock(in_channels, out_channels, 1))
        self.block = nn.Sequential(ConvBlock(out_channels * 5, out_channels, 1), nn.Dropout(0.5))

    def forward(self, x):
        pooled = resize_bilinear(self.global_avg_pool(x), x.shape[2:])
        branches = [self.aspp1(x), self.aspp2(x), self.aspp3(x), self.aspp4(x), pooled]
        return self.block(torch.cat(branches, dim=1))


class Decoder(nn.Module):
    """DeepLabV3+ decoder: ASPP output (B, 256, h, w) + C2 (B, in, H/4, W/4) -> (B, classes, H/4, W/4)."""

    def __init__(self, low_in_channels, num_classes, low_channels, feature_size=FEATURE_SIZE):
        super().__init__()
        self.low_block = ConvBlock(low_in_channels, low_channels, 1)
        self.classifier = nn.Sequential(
            ConvBlock(feature_size + low_channels, feature_size, 3, padding=1),
            nn.Dropout(0.5),
            ConvBlock(feature_size, feature_size, 3, padding=1),
            nn.Dropout(0.1),
            nn.Conv2d(feature_size, num_classes, 3, padding=1, bias=False),
        )

    def forward(self, x, low):
        low = self.low_block(low)
        x = resize_bilinear(x, low.shape[2:])
        # ASPP channels first: the official weights' first classifier conv expects this order
        return self.classifier(torch.cat((x, low), dim=1))


class RSEPM(nn.Module):
    """Single-stage RS+EPM network (docs/method.md#network): CAM head on C5 + DeepLabV3+ head.

    Attributes: model (backbone), classifier (1x1 conv C5 -> num_classes-1, no bias),
    aspp, decoder (low_channels 256, outputs num_classes incl. background).
    """

    def __init__(self, backbone="resnet50", num_classes=21, output_stride=16, pretrained=None):
        super().__init__()
        self.model = build_resnet(backbone, output_stride, pretrained)
        channels = self.model.channels
        self.classifier = nn.Conv2d(channels["C5"], num_classes - 1, 1, bias=False)
        self.aspp = ASPP(channels["C5"], output_stride)
        self.decoder = Decoder(channels["C2"], num_classes, low_channels=FEATURE_SIZE)

    def forward(self, x, with_features=False):
        """x (B, 3, H, W) -> dict (a plain dict, so DataParallel can gather it):

        'cam' (B, C, h, w) raw CAM logits at the backbone's output stride (C foreground classes),
        'logits' (B, C) spatial mean of 'cam', 'seg' (B, C+1, H/4, W/4) decoder logits;
        with_features: False, True ('C4' and 'C5'), or a sequence of names among 'C1'..'C5':
        those backbone maps too (for SCG; only the ones asked for, as DataParallel gathers them).
        """
        maps = dict(zip(("C1", "C2", "C3", "C4", "C5"), self.model(x)))
        cam = self.classifier(maps["C5"])
        out = {"logits": cam.mean(dim=(2, 3)), "cam": cam, "seg": self.decoder(self.aspp(maps["C5"]), maps["C2"])}
        if with_features:
            names = ("C4", "C5") if with_features is True else tuple(with_features)
            out.update({name: maps[name] for name in names})
        return out


class DeepLabV3Plus(nn.Module):
    """DeepLabV3+ (ASPP on C5, decoder with C2 projected to 48 channels)."""

    def __init__(self, backbone="resnet101", num_classes=21, output_stride=8, pretrained=None):
        super().__init__()
        self.model = build_resnet(backbone, output_stride, pretrained)
        channels = self.model.channels
        self.aspp = ASPP(channels["C5"], output_stride)
        self.decoder = Decoder(channels["C2"], num_classes, low_channels=48)

    def forward(self, x):
        """x (B, 3, H, W) -> logits (B, num_classes, H/4, W/4)."""
        _, c2, _, _, c5 = self.model(x)
        return self.decoder(self.aspp(c5), c2)


class DeepLabV2ASPP(nn.Module):
    """DeepLabV2 ASPP: four dilated 3x3 convs with bias on C5, summed."""

    def __init__(self, in_channels, num_classes, rates=DEEPLABV2_RATES):
        super().__init__()
        for index, rate in enumerate(rates, start=1):
            setattr(
                self, f"aspp{index}", nn.Conv2d(in_channels, num_classes, 3, padding=rate, dilation=rate, bias=True)
            )
        self.num_branches = len(rates)

    def forward(self, x):
        return sum(getattr(self, f"aspp{i}")(x) for i in range(1, self.num_branches + 1))


class DeepLabV2(nn.Module):
    """DeepLabV2: ASPP classifier on C5; logits at the backbone's output stride."""

    def __init__(self, backbone="resnet101", num_classes=21, output_stride=8, pretrained=None):
        super().__init__()
        self.model = build_resnet(backbone, output_stride, pretrained)
        self.aspp = DeepLabV2ASPP(self.model.channels["C5"], num_classes)

    def forward(self, x):
        """x (B, 3, H, W) -> logits (B, num_classes, H/os, W/os)."""
        return self.aspp(self.model(x)[-1])


NETWORKS = {"rsepm": RSEPM, "deeplabv3+": DeepLabV3Plus, "deeplabv2": DeepLabV2}


def build_network(kind, backbone, num_classes, output_stride=None, pretrained=None):
    """Build 'rsepm', 'deeplabv3+' or 'deeplabv2' (case-insensitive).

    num_classes includes background; output_stride None -> 16 for rsepm, 8 for the others.
    """
    key = str(kind).lower()
    if key not in NETWORKS:
        raise ValueError(f"unknown network {kind!r}; choose one of {sorted(NETWORKS)}")
    if backbone not in ARCHITECTURES:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {sorted(ARCHITECTURES)}")
    if output_stride is None:
        output_stride = DEFAULT_OUTPUT_STRIDE[key]
    return NETWORKS[key](backbone=backbone, num_classes=num_classes, output_stride=output_stride, pretrained=pretrained)


def split_parameters(model):
    """Four optimiser groups (docs/method.md#optimisation), trainable parameters only:

    (backbone weights, backbone biases + BN, head weights, head biases + BN).
    Backbone = parameters under the `model` attribute; weights = tensors with 2+ dims.
    """
    groups = ([], [], [], [])
    for name, param in unwrap(model).named_parameters():
        if not param.requires_grad:
            continue
        index = (0 if name.startswith("model.") else 2) + (0 if param.ndim > 1 else 1)
        groups[index].append(param)
    return groups
