"""The affinity network: the authors' key layout, output grid, frozen backbone, flip averaging."""

import functools

import pytest
import torch
import torchvision

from core.affinity import AffinityNet
from core.randomwalk import PairGrid
from core.relations import boundary_loss, relation_labels


@functools.lru_cache(maxsize=None)
def backbone_shapes(depth):
    """torchvision ResNet keys without fc, under 'model.' -> shape."""
    state = getattr(torchvision.models, f"resnet{depth}")().state_dict()
    return {"model." + k: tuple(v.shape) for k, v in state.items() if not k.startswith("fc.")}


def edge_shapes(prefix_of):
    """The edge branch of the authors' AffinityNet (32 channels per level, GroupNorm)."""
    shapes = {}
    for level, channels in enumerate((64, 256, 512, 1024, 2048)):
        p = prefix_of(level)
        shapes[f"{p}.0.weight"] = (32, channels, 1, 1)
        shapes[f"{p}.1.weight"] = (32,)
        shapes[f"{p}.1.bias"] = (32,)
    p = prefix_of(5)
    shapes[f"{p}.weight"] = (1, 160, 1, 1)
    shapes[f"{p}.bias"] = (1,)
    return shapes


@pytest.fixture(scope="module")
def net50():
    torch.manual_seed(0)
    return AffinityNet("resnet50").eval()


def test_keys_match_authors_layout(net50):
    expected = backbone_shapes(50)
    named = edge_shapes(lambda i: f"fc_edge{i + 1}")
    listed = edge_shapes(lambda i: f"edge_layers.{i}")
    got = {k: tuple(v.shape) for k, v in net50.state_dict().items()}
    assert got == {**expected, **named, **listed}
    assert len(got) == 318 + 17 + 17  # torchvision ResNet-50 has 320 keys with fc
    # the edge keys come after the backbone, named ones first, as the authors' modules are registered
    assert list(got)[318:] == list(named) + list(listed)


def test_forward_gives_stride4_boundary(net50):
    x = torch.randn(2, 3, 64, 64)
    logits = net50(x)
    assert logits.shape == (2, 1, 16, 16)
    prob = net50.predict_boundary(x)
    assert prob.shape == (2, 16, 16) and prob.min() >= 0 and prob.max() <= 1
    # sizes that are not multiples of 16 still land on ceil(H/4) x ceil(W/4)
    assert net50(torch.randn(1, 3, 70, 50)).shape == (1, 1, 18, 13)


def test_predict_boundary_averages_the_mirror(net50):
    # IRN's procedure written out: flip, zero-pad both right/bottom to 64, one forward, crop to the
    # image's ceil(H/4) x ceil(W/4) cells, flip the mirror's map back, average the logits
    x = torch.randn(1, 3, 30, 45)
    pair = torch.zeros(2, 3, 64, 64)
    pair[0, :, :30, :45] = x[0]
    pair[1, :, :30, :45] = x[0].flip(-1)
    with torch.no_grad():
        logits = net50(pair)[:, 0, :8, :12]
    expected = torch.sigmoid((logits[0] + logits[1].flip(-1)) / 2)
    torch.testing.assert_close(net50.predict_boundary(x, pad_to=64)[0], expected, rtol=1e-5, atol=1e-6)
    # without padding the network sees another canvas, and the map differs
    assert not torch.allclose(net50.predict_boundary(x, pad_to=0)[0], expected, atol=1e-4)


def cell_means(x):
    """Each stride-4 cell's own mean (no context), ceil(H/4) x ceil(W/4) cells as the network gives."""
    h, w = x.shape[-2:]
    x = torch.nn.functional.pad(x, (0, -w % 4, 0, -h % 4))
    return torch.nn.functional.avg_pool2d(x.mean(1, keepdim=True), 4)


class CellMeanNet(AffinityNet):
    """A padding-independent stand-in for the boundary network, with AffinityNet's inference."""

    def __init__(self):
        torch.nn.Module.__init__(self)

    def forward(self, x):
        return cell_means(x)


@pytest.mark.parametrize("size", [(37, 50), (512, 300), (600, 130)])
def test_padding_changes_nothing_on_the_image_cells(size):
    # with a network that ignores context, the padded map on the image's cells must be the
    # unpadded one: the pad sits right/bottom only, the mirror is padded after the flip, and the
    # crop keeps exactly the cells of the image; a side above 512 is never cut
    h, w = size
    x = torch.randn(2, 3, h, w)
    got = CellMeanNet().predict_boundary(x)
    assert got.shape == (2, -(-h // 4), -(-w // 4))
    # independent reference: the cell means of the image and of its mirror, averaged as logits
    ref_plain = cell_means(x)[:, 0]
    ref_mirror = cell_means(x.flip(-1))[:, 0].flip(-1)
    torch.testing.assert_close(got, torch.sigmoid((ref_plain + ref_mirror) / 2), rtol=1e-5, atol=1e-6)


def test_weights_load_strictly_into_a_new_network():
    torch.manual_seed(0)
    source = AffinityNet("resnet18")
    torch.manual_seed(1)
    other = AffinityNet("resnet18")
    other.load_state_dict(source.state_dict(), strict=True)
    for key, value in other.state_dict().items():
        assert torch.equal(value, source.state_dict()[key])
    assert torch.equal(other.fc_edge3[0].weight, other.edge_layers[2][0].weight)


def test_only_the_edge_branch_trains():
    torch.manual_seed(0)
    net = AffinityNet("resnet18").train()
    assert not net.model.training and net.fc_edge1.training
    stats = {k: v.clone() for k, v in net.model.state_dict().items()}
    params = net.trainable_parameters()
    assert len(params) == 17 and all(p.requires_grad for p in params)
    assert not any(p.requires_grad for p in net.model.parameters())

    x = torch.randn(2, 3, 64, 64)
    labels = torch.zeros(2, 16, 16, dtype=torch.int64)
    labels[:, :, 8:] = 1
    grid = PairGrid(4, (16, 16))
    bg_pos, fg_pos, neg = relation_labels(labels, grid=grid)
    optimiser = torch.optim.SGD(params, lr=1e-3)
    losses = []
    for _ in range(3):
        loss = boundary_loss(grid.affinity(torch.sigmoid(net(x))), bg_pos, fg_pos, neg)["total"]
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(p.grad is None for p in net.model.parameters())
    for key, value in net.model.state_dict().items():  # BatchNorm statistics untouched
        assert torch.equal(value, stats[key]), key
