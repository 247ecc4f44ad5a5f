"""The affinity (class-boundary) network of the multi-stage path (docs/method.md#random-walk).

IRN's boundary branch (Ahn, Cho and Kwak, CVPR 2019) on a frozen ResNet: each of the five
backbone maps C1..C5 goes through a 1x1 convolution to 32 channels, GroupNorm (4 groups) and
ReLU, the coarser ones upsampled to the stride-4 grid of C1/C2; the 160 concatenated channels
give one boundary logit per stride-4 cell. The backbone is pretrained and never trained: its
BatchNorm stays in eval mode, its parameters do not require gradients and its maps are
detached, so only the 17 tensors of the edge branch learn (IRN trains them at the base lr).

Parameter names follow the `AffinityNet` of the authors' network file without the
displacement branch and without path-index buffers (docs/formats.md#networks-and-checkpoints):
    model.*                    the ResNet (torchvision names, output stride 16: layer4 stride 1)
    fc_edge{1..5}.0.weight     1x1 convolutions C1..C5 -> 32 channels, no bias
    fc_edge{1..5}.1.weight/bias  GroupNorm(4, 32, eps=1e-3)
    fc_edge6.weight/bias       1x1 convolution 160 -> 1
    edge_layers.{0..5}.*       the same six modules listed again (the authors keep them in a
                               ModuleList, so their state_dict names every tensor twice)
"""

import torch
import torch.nn.functional as F
from torch import nn

from core.resnet import build_resnet

EDGE_CHANNELS = 32
GROUPS = 4
GN_EPS = 1e-3
# upsampling of C3, C4, C5 to the stride-4 grid (backbone at output stride 16)
EDGE_UPSAMPLING = (1, 1, 2, 4, 4)
# Inference canvas: IRN's EdgeDisplacement (crop_size 512) and the authors' inference network pad to
# it, the size of the training crops, so the boundary map sees borders as it learnt them.
PAD_SIZE = 512
STRIDE = 4


def _edge_block(in_channels, scale):
    layers = [nn.Conv2d(in_channels, EDGE_CHANNELS, 1, bias=False), nn.GroupNorm(GROUPS, EDGE_CHANNELS, eps=GN_EPS)]
    if scale > 1:
        # the upsampling sits between the norm and the ReLU, as in IRN; it has no parameters,
        # so the key indices (0 conv, 1 norm) stay the same for every block
        layers.append(nn.Upsample(scale_factor=scale, mode="bilinear", align_corners=False))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class AffinityNet(nn.Module):
    """Frozen ResNet + IRN boundary branch.

    Args:
        backbone: resnet18/34/50/101 (IRN and the authors: resnet50).
        pretrained: as core.resnet.build_resnet ('imagenet', a local file, or None).
    forward(x): (B, 3, H, W) normalised images -> (B, 1, ceil(H/4), ceil(W/4)) boundary logits.
    """

    def __init__(self, backbone="resnet50", pretrained=None):
        super().__init__()
        self.model = build_resnet(backbone, output_stride=16, pretrained=pretrained)
        for param in self.model.parameters():
            param.requires_grad_(False)
        channels = [self.model.channels[f"C{i}"] for i in range(1, 6)]
        for index, (c, scale) in enumerate(zip(channels, EDGE_UPSAMPLING), start=1):
            setattr(self, f"fc_edge{index}", _edge_block(c, scale))
        self.fc_edge6 = nn.Conv2d(EDGE_CHANNELS * 5, 1, 1, bias=True)
        self.edge_layers = nn.ModuleList(
            [self.fc_edge1, self.fc_edge2, self.fc_edge3, self.fc_edge4, self.fc_edge5, self.fc_edge6]
        )
        self.model.eval()

    def train(self, mode=True):
        """Train mode for the edge branch only; the backbone's BatchNorm keeps its statistics."""
        super().train(mode)
        self.model.eval()
        return self

    def trainable_parameters(self):
        """The parameters IRN trains: the edge branch, one group at the base lr (list)."""
        return list(self.edge_layers.parameters())

    def forward(self, x):
        """(B, 3, H, W) -> (B, 1, h, w) boundary logits, (h, w) = size of C2 = ceil(H/4), ceil(W/4)."""
        with torch.no_grad():
            features = self.model(x)
        # the upsampled coarse maps can overshoot the stride-4 grid by a cell; crop as IRN does
        height, width = features[1].shape[2:]
        edges = [block(f.detach())[..., :height, :width] for block, f in zip(self.edge_layers[:5], features)]
        return self.fc_edge6(torch.cat(edges, dim=1))

    @torch.no_grad()
    def predict_boundary(self, images, pad_to=PAD_SIZE):
        """Boundary probabilities as IRN's inference computes them (docs/method.md#random-walk).

        The image and its mirror are zero-padded on the right and bottom to at least
        pad_to x pad_to (a larger side keeps its size: nothing is cropped), run in one forward,
        cut back to the image's stride-4 cells, and their logits (the mirror's flipped back)
        averaged before the sigmoid. pad_to=0: no padding.
        Args:
            images: (B, 3, H, W) normalised images (zero = the mean colour).
        Returns:
            (B, ceil(H/4), ceil(W/4)) probabilities in [0, 1].
        """
        height, width = images.shape[-2:]
        pair = torch.cat([images, images.flip(-1)])  # flip before padding: both padded right/bottom
        pair = F.pad(pair, (0, max(0, pad_to - width), 0, max(0, pad_to - height)))
        cells = (-(-height // STRIDE), -(-width // STRIDE))
        logits = self.forward(pair)[:, 0, : cells[0], : cells[1]]
        count = images.shape[0]
        return torch.sigmoid(logits[:count] / 2 + logits[count:].flip(-1) / 2)
