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
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        plain = net50(x)[0, 0]
        mirrored = net50(x.flip(-1))[0, 0].flip(-1)
    expected = torch.sigmoid((plain + mirrored) / 2)
    torch.testing.assert_close(net50.predict_boundary(x)[0], expected, rtol=1e-5, atol=1e-6)


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
