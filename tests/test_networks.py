"""Backbone and network tests: checkpoint key names/shapes, strides/dilations, forward shapes.

References are independent of core/: torchvision's own ResNets (key names, and forward
outputs after a one-line stride/dilation fix), hand-written head key tables from
docs/formats.md#networks-and-checkpoints, and hand-worked output sizes.
"""

import functools
import hashlib
import io
import pickle
import types
import urllib.error

import pytest
import torch
import torchvision

from core import resnet
from core.errors import CheckpointError
from core.networks import RSEPM, DeepLabV2, DeepLabV3Plus, build_network, split_parameters
from core.resnet import build_resnet

torch.set_num_threads(2)
VOC = 21


# ---------------------------------------------------------------------------------------------
# (a) key names and shapes against torchvision + the docs/formats.md#networks-and-checkpoints head tables
# ---------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _torchvision_shapes(depth):
    state = getattr(torchvision.models, f"resnet{depth}")().state_dict()
    return tuple((k, tuple(v.shape)) for k, v in state.items())


def torchvision_backbone_shapes(depth):
    """'model.'-prefixed torchvision ResNet keys without fc -> shape."""
    return {"model." + k: shape for k, shape in _torchvision_shapes(depth) if not k.startswith("fc.")}


def conv_block(prefix, conv_shape):
    """Keys of one ConvBlock (conv without bias + BatchNorm with num_batches_tracked)."""
    n = conv_shape[0]
    return {
        f"{prefix}.conv.weight": conv_shape,
        f"{prefix}.bn.weight": (n,),
        f"{prefix}.bn.bias": (n,),
        f"{prefix}.bn.running_mean": (n,),
        f"{prefix}.bn.running_var": (n,),
        f"{prefix}.bn.num_batches_tracked": (),
    }


def aspp_v3_shapes():
    shapes = {}
    shapes.update(conv_block("aspp.aspp1", (256, 2048, 1, 1)))
    shapes.update(conv_block("aspp.aspp2", (256, 2048, 3, 3)))
    shapes.update(conv_block("aspp.aspp3", (256, 2048, 3, 3)))
    shapes.update(conv_block("aspp.aspp4", (256, 2048, 3, 3)))
    shapes.update(conv_block("aspp.global_avg_pool.1", (256, 2048, 1, 1)))
    shapes.update(conv_block("aspp.block.0", (256, 1280, 1, 1)))
    return shapes


def decoder_shapes(low, classes):
    shapes = {}
    shapes.update(conv_block("decoder.low_block", (low, 256, 1, 1)))
    shapes.update(conv_block("decoder.classifier.0", (256, 256 + low, 3, 3)))
    shapes.update(conv_block("decoder.classifier.2", (256, 256, 3, 3)))
    shapes["decoder.classifier.4.weight"] = (classes, 256, 3, 3)
    return shapes


def model_shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def rsepm50():
    torch.manual_seed(0)
    return RSEPM("resnet50", num_classes=VOC).eval()


def test_rsepm_keys_match_official_layout(rsepm50):
    expected = torchvision_backbone_shapes(50)
    expected["classifier.weight"] = (20, 2048, 1, 1)
    expected.update(aspp_v3_shapes())
    expected.update(decoder_shapes(low=256, classes=21))
    got = model_shapes(rsepm50)
    assert got == expected
    assert len(got) == 374


def test_deeplabv3plus_keys_match_official_layout():
    expected = torchvision_backbone_shapes(101)
    expected.update(aspp_v3_shapes())
    expected.update(decoder_shapes(low=48, classes=21))
    got = model_shapes(DeepLabV3Plus("resnet101", num_classes=VOC))
    assert got == expected
    assert len(got) == 679


def test_deeplabv2_keys_match_official_layout():
    expected = torchvision_backbone_shapes(101)
    for i in range(1, 5):
        expected[f"aspp.aspp{i}.weight"] = (21, 2048, 3, 3)
        expected[f"aspp.aspp{i}.bias"] = (21,)
    model = DeepLabV2("resnet101", num_classes=VOC)
    assert model_shapes(model) == expected
    assert len(expected) == 632
    rates = [getattr(model.aspp, f"aspp{i}").dilation for i in range(1, 5)]
    assert rates == [(6, 6), (12, 12), (18, 18), (24, 24)]


def test_every_batchnorm_tracks_batches():
    model = RSEPM("resnet18", num_classes=6)
    bns = [n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    keys = model.state_dict()
    assert bns and all(f"{n}.num_batches_tracked" in keys for n in bns)


# ---------------------------------------------------------------------------------------------
# (b) strides, dilations, paddings and output sizes
# ---------------------------------------------------------------------------------------------
# Hand-written per docs/formats.md#networks-and-checkpoints: (stride, dilation) of every block's 3x3 conv(s).
R50_BLOCKS = {
    16: {
        "layer1": [(1, 1)] * 3,
        "layer2": [(2, 1)] + [(1, 1)] * 3,
        "layer3": [(2, 1)] + [(1, 1)] * 5,
        "layer4": [(1, 1)] * 3,
    },
    8: {
        "layer1": [(1, 1)] * 3,
        "layer2": [(2, 1)] + [(1, 1)] * 3,
        "layer3": [(1, 1)] + [(1, 2)] * 5,
        "layer4": [(1, 1)] + [(1, 4)] * 2,
    },
}
R18_BLOCKS = {
    16: {"layer1": [(1, 1)] * 2, "layer2": [(2, 1), (1, 1)], "layer3": [(2, 1), (1, 1)], "layer4": [(1, 1)] * 2},
    8: {"layer1": [(1, 1)] * 2, "layer2": [(2, 1), (1, 1)], "layer3": [(1, 1), (1, 2)], "layer4": [(1, 1), (1, 4)]},
}


@pytest.mark.parametrize("name,table", [("resnet50", R50_BLOCKS), ("resnet18", R18_BLOCKS)])
@pytest.mark.parametrize("os_", [16, 8])
def test_block_strides_and_dilations(name, table, os_):
    net = build_resnet(name, output_stride=os_)
    for layer, blocks in table[os_].items():
        modules = list(getattr(net, layer))
        assert len(modules) == len(blocks)
        for block, (stride, dilation) in zip(modules, blocks):
            if name == "resnet50":  # Bottleneck: the stride sits on the 3x3 conv2
                convs = [(block.conv2, stride)]
                assert block.conv1.stride == block.conv3.stride == (1, 1)
            else:  # BasicBlock: stride on conv1, the dilation rule on both 3x3 convs
                convs = [(block.conv1, stride), (block.conv2, 1)]
            for conv, s in convs:
                assert conv.kernel_size == (3, 3)
                assert conv.stride == (s, s)
                assert conv.dilation == (dilation, dilation)
                assert conv.padding == (dilation, dilation)
            if block.downsample is not None:
                assert block.downsample[0].stride == (stride, stride)


@pytest.mark.parametrize("os_", [16, 8])
def test_every_3x3_conv_pads_by_its_dilation(os_):
    net = build_resnet("resnet50", output_stride=os_)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 16
    assert all(c.padding == c.dilation for c in convs)


def test_other_output_strides_are_rejected():
    with pytest.raises(ValueError, match="output_stride"):
        build_resnet("resnet18", output_stride=32)
    with pytest.raises(ValueError, match="resnet152"):
        build_resnet("resnet152")


# 65x97 input, hand-worked: conv1 (k7 s2 p3) 33x49, maxpool (k3 s2 p1) 17x25,
# each stride-2 stage ceil-halves: 9x13, 5x7.
SIZES_65x97 = {16: [(17, 25), (17, 25), (9, 13), (5, 7), (5, 7)], 8: [(17, 25), (17, 25), (9, 13), (9, 13), (9, 13)]}


@pytest.mark.parametrize("os_", [16, 8])
def test_feature_sizes_for_odd_input(os_):
    net = build_resnet("resnet18", output_stride=os_).eval()
    with torch.no_grad():
        feats = net(torch.randn(1, 3, 65, 97))
    assert [tuple(f.shape[2:]) for f in feats] == SIZES_65x97[os_]
    assert [f.shape[1] for f in feats] == [64, 64, 128, 256, 512]


def torchvision_features(tv, x):
    x = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
    c2 = tv.layer1(x)
    c3 = tv.layer2(c2)
    c4 = tv.layer3(c3)
    return c4, tv.layer4(c4)


def test_os8_first_block_rule_differs_from_torchvision():
    """torchvision's replace_stride_with_dilation dilates layer4's first block by 2; ours by 1.

    Same weights: outputs differ; after setting that one conv to dilation 1 they agree exactly,
    which also checks the rest of our OS8 network against torchvision's forward.
    """
    torch.manual_seed(0)
    ours = build_resnet("resnet50", output_stride=8).eval()
    tv = torchvision.models.resnet50(replace_stride_with_dilation=[False, True, True]).eval()
    tv.load_state_dict(ours.state_dict(), strict=False)  # fc stays random, unused
    assert tv.layer4[0].conv2.dilation == (2, 2)
    assert ours.layer4[0].conv2.dilation == (1, 1)
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        c4, c5 = ours(x)[3:]
        tv_c4, tv_c5 = torchvision_features(tv, x)
        assert torch.allclose(c4, tv_c4, atol=1e-5)
        assert not torch.allclose(c5, tv_c5, atol=1e-3)
        tv.layer4[0].conv2.dilation = (1, 1)
        tv.layer4[0].conv2.padding = (1, 1)
        assert torch.allclose(c5, torchvision_features(tv, x)[1], atol=1e-5)


def test_os16_matches_torchvision_with_stride_one_layer4():
    torch.manual_seed(0)
    ours = build_resnet("resnet50", output_stride=16).eval()
    tv = torchvision.models.resnet50().eval()
    tv.load_state_dict(ours.state_dict(), strict=False)
    tv.layer4[0].conv2.stride = (1, 1)
    tv.layer4[0].downsample[0].stride = (1, 1)
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        assert torch.allclose(ours(x)[4], torchvision_features(tv, x)[1], atol=1e-5)


# ---------------------------------------------------------------------------------------------
# (c) basic-block backbones
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,depth", [("resnet18", 18), ("resnet34", 34)])
def test_basic_block_backbones_build_and_run(name, depth):
    net = build_resnet(name, output_stride=8).eval()
    assert net.channels == {"C1": 64, "C2": 64, "C3": 128, "C4": 256, "C5": 512}
    assert model_shapes(net) == {k[len("model.") :]: v for k, v in torchvision_backbone_shapes(depth).items()}
    with torch.no_grad():
        feats = net(torch.randn(1, 3, 32, 32))
    assert [tuple(f.shape) for f in feats] == [
        (1, 64, 8, 8),
        (1, 64, 8, 8),
        (1, 128, 4, 4),
        (1, 256, 4, 4),
        (1, 512, 4, 4),
    ]


def test_bottleneck_channels(rsepm50):
    assert rsepm50.model.channels == {"C1": 64, "C2": 256, "C3": 512, "C4": 1024, "C5": 2048}


# ---------------------------------------------------------------------------------------------
# (d) forward shapes of the three models
# ---------------------------------------------------------------------------------------------
def test_rsepm_forward_outputs(rsepm50):
    model = rsepm50
    with torch.no_grad():
        out = model(torch.randn(2, 3, 65, 97), with_features=True)
    assert type(out) is dict
    assert out["cam"].shape == (2, 20, 5, 7)
    assert out["seg"].shape == (2, 21, 17, 25)
    assert out["C4"].shape == (2, 1024, 5, 7) and out["C5"].shape == (2, 2048, 5, 7)
    # class logits = spatial mean of the CAM, computed by hand
    cam = out["cam"]
    by_hand = torch.stack([cam[:, :, i, j] for i in range(5) for j in range(7)]).sum(0) / 35
    assert torch.allclose(out["logits"], by_hand, atol=1e-5)
    with torch.no_grad():
        assert set(model(torch.randn(1, 3, 32, 32))) == {"logits", "cam", "seg"}
        named = model(torch.randn(1, 3, 64, 64), with_features=("C1", "C3"))
    assert set(named) == {"logits", "cam", "seg", "C1", "C3"}
    assert named["C1"].shape == (1, 64, 16, 16) and named["C3"].shape == (1, 512, 8, 8)


def test_rsepm_cam_is_a_bias_free_1x1_conv_on_c5():
    model = RSEPM("resnet18", num_classes=6).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = model(x, with_features=True)
        by_hand = torch.einsum("kc,bchw->bkhw", model.classifier.weight[:, :, 0, 0], out["C5"])
    assert model.classifier.bias is None
    assert torch.allclose(out["cam"], by_hand, atol=1e-5)


def test_deeplab_forward_shapes():
    x = torch.randn(1, 3, 65, 97)
    with torch.no_grad():
        assert DeepLabV3Plus("resnet18", num_classes=6).eval()(x).shape == (1, 6, 17, 25)
        assert DeepLabV2("resnet18", num_classes=6).eval()(x).shape == (1, 6, 9, 13)
        assert DeepLabV2("resnet18", num_classes=6, output_stride=16).eval()(x).shape == (1, 6, 5, 7)


def test_aspp_rates_follow_output_stride():
    for os_, rates in [(16, [6, 12, 18]), (8, [12, 24, 36])]:
        aspp = DeepLabV3Plus("resnet18", num_classes=6, output_stride=os_).aspp
        got = [getattr(aspp, f"aspp{i}").conv.dilation[0] for i in (2, 3, 4)]
        assert got == rates
        assert [getattr(aspp, f"aspp{i}").conv.padding[0] for i in (2, 3, 4)] == rates


def test_build_network_defaults_and_errors():
    assert build_network("rsepm", "resnet18", 6).model.output_stride == 16
    assert build_network("DeepLabV3+", "resnet18", 6).model.output_stride == 8
    assert build_network("deeplabv2", "resnet18", 6, output_stride=16).model.output_stride == 16
    with pytest.raises(ValueError, match="unet"):
        build_network("unet", "resnet18", 6)
    with pytest.raises(ValueError, match="vgg16"):
        build_network("rsepm", "vgg16", 6)


# ---------------------------------------------------------------------------------------------
# initialisation and optimiser groups
# ---------------------------------------------------------------------------------------------
def test_new_layers_keep_pytorch_default_initialisation():
    # nn.Conv2d's default: kaiming_uniform_(a=sqrt(5)), i.e. U(-b, b) with b = 1 / sqrt(fan_in),
    # std b / sqrt(3); kaiming normal (relu) would give std sqrt(2 / fan_in), 2.45x larger.
    torch.manual_seed(0)
    model = RSEPM("resnet18", num_classes=6)
    for weight, fan_in in [
        (model.classifier.weight, 512),
        (model.decoder.classifier[0].conv.weight, (256 + 256) * 9),
        (model.aspp.aspp2.conv.weight, 512 * 9),
    ]:
        bound = 1.0 / fan_in**0.5
        assert weight.abs().max() <= bound
        assert abs(weight.std().item() / (bound / 3**0.5) - 1) < 0.05
    bn = model.aspp.block[0].bn
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)
    # the segmenters too (the released DeepLab layers set no initialisation either)
    aspp = DeepLabV2("resnet18", num_classes=6).aspp.aspp1
    bound = 1.0 / (512 * 9) ** 0.5
    assert aspp.weight.abs().max() <= bound and aspp.bias.abs().max() <= bound
    assert aspp.bias.abs().max() > 0  # default bias init is uniform, not zero
    w = DeepLabV3Plus("resnet18", num_classes=6).decoder.low_block.conv.weight  # fan_in 64
    assert abs(w.std().item() / (1 / (3 * 64) ** 0.5) - 1) < 0.1


def test_split_parameters_groups():
    model = torch.nn.DataParallel(RSEPM("resnet18", num_classes=6))
    groups = split_parameters(model)
    tv = dict(torchvision.models.resnet18().named_parameters())
    n_backbone_w = sum(p.ndim > 1 for k, p in tv.items() if not k.startswith("fc."))
    n_backbone_b = sum(p.ndim == 1 for k, p in tv.items() if not k.startswith("fc."))
    # head: classifier + 6 ASPP convs + 3 decoder ConvBlocks + final conv = 11 weights; 9 BNs
    assert [len(g) for g in groups] == [n_backbone_w, n_backbone_b, 11, 18]
    all_ids = [id(p) for g in groups for p in g]
    assert sorted(all_ids) == sorted(id(p) for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# (f) pretrained weights: ImageNet offline and local files
# ---------------------------------------------------------------------------------------------
def test_imagenet_offline_gives_actionable_error(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache, whatever this machine holds

    def offline(self, *args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(torchvision.models.ResNet18_Weights, "get_state_dict", offline)
    with pytest.raises(RuntimeError) as info:
        build_resnet("resnet18", pretrained="imagenet")
    message = str(info.value)
    assert "could not be downloaded" in message
    assert f"{torch.hub.get_dir()}/checkpoints/resnet18-f37072fd.pth" in message
    assert "--pretrained PATH" in message


def test_imagenet_weights_load_without_fc(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache: the download path is taken
    reference = torchvision.models.resnet18().state_dict()
    monkeypatch.setattr(torchvision.models.ResNet18_Weights, "get_state_dict", lambda self, *a, **k: reference)
    net = build_resnet("resnet18", pretrained="imagenet")
    for key, value in net.state_dict().items():
        assert torch.equal(value, reference[key])


@pytest.mark.parametrize("pretrained", [None, "none"])
def test_no_download_without_imagenet(monkeypatch, pretrained):
    def forbidden(self, *args, **kwargs):
        raise AssertionError("must not download")

    monkeypatch.setattr(torchvision.models.ResNet18_Weights, "get_state_dict", forbidden)
    build_network("rsepm", "resnet18", 6, pretrained=pretrained)


def test_local_pretrained_file_loads(tmp_path):
    reference = torchvision.models.resnet18().state_dict()
    path = tmp_path / "r18.pth"
    torch.save({"module." + k: v for k, v in reference.items()}, path)
    model = RSEPM("resnet18", num_classes=6, pretrained=str(path))
    for key, value in model.model.state_dict().items():
        assert torch.equal(value, reference[key])


def test_local_pretrained_file_of_wrong_depth_is_rejected(tmp_path):
    path = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), path)
    with pytest.raises(CheckpointError) as info:
        build_resnet("resnet18", pretrained=str(path))
    message = str(info.value)
    assert str(path) in message
    assert "unexpected" in message and "layer1.2.conv1.weight" in message  # resnet34's 3rd block


# the ImageNet cache: a file there cannot run code, and its name holds its hash
class _MakesMarker:
    """Unpickling this object calls open(marker, 'w'): a file appears if the loader runs code."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def sha256_prefix(data, length=8):
    return hashlib.sha256(data).hexdigest()[:length]


def tiny_state_bytes():
    buffer = io.BytesIO()
    torch.save({"conv1.weight": torch.arange(6.0).view(1, 1, 2, 3), "bn1.bias": torch.tensor([0.5, -2.0])}, buffer)
    return buffer.getvalue()


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty torch hub cache under tmp_path; returns its checkpoints folder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    return folder


def fake_weights(monkeypatch, filename):
    """Point the ImageNet weights of every backbone at `filename`; a download would fail loudly."""

    def no_download(*args, **kwargs):
        raise AssertionError("nothing may be downloaded when the file is in the cache")

    weights = types.SimpleNamespace(url=f"https://download.pytorch.org/models/{filename}", get_state_dict=no_download)
    monkeypatch.setattr(resnet, "imagenet_weights", lambda name: weights)


def test_crafted_pickle_under_the_official_name_is_refused_without_running(hub, tmp_path):
    marker = tmp_path / "code_ran"
    path = hub / "resnet18-f37072fd.pth"  # torchvision's real file name for ResNet-18
    data = pickle.dumps(_MakesMarker(str(marker)))
    path.write_bytes(data)
    assert resnet.imagenet_cache_path("resnet18") == str(path)
    with pytest.raises(CheckpointError) as info:
        resnet.build_resnet("resnet18", pretrained="imagenet")
    message = str(info.value)
    assert str(path) in message
    assert "f37072fd" in message and sha256_prefix(data) in message
    assert "Delete it" in message and "download.pytorch.org" in message
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_crafted_pickle_with_a_matching_hash_is_still_not_unpickled(hub, tmp_path, monkeypatch):
    """The hash check alone is not the guard: the file is read with weights_only=True."""
    marker = tmp_path / "code_ran"
    data = pickle.dumps(_MakesMarker(str(marker)))
    filename = f"resnet18-{sha256_prefix(data)}.pth"
    (hub / filename).write_bytes(data)
    fake_weights(monkeypatch, filename)
    with pytest.raises(CheckpointError) as info:
        resnet.imagenet_state_dict("resnet18")
    assert str(hub / filename) in str(info.value)
    assert not marker.exists()


def test_file_named_with_its_own_hash_loads(hub, monkeypatch):
    data = tiny_state_bytes()
    filename = f"resnet18-{sha256_prefix(data)}.pth"
    (hub / filename).write_bytes(data)
    fake_weights(monkeypatch, filename)
    state = resnet.imagenet_state_dict("resnet18")
    assert sorted(state) == ["bn1.bias", "conv1.weight"]
    assert state["conv1.weight"].flatten().tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert state["bn1.bias"].tolist() == [0.5, -2.0]


def test_valid_weights_with_a_wrong_hash_are_refused_with_what_to_do(hub, monkeypatch):
    data = tiny_state_bytes()
    wrong = "0" * 8 if sha256_prefix(data) != "0" * 8 else "1" * 8
    filename = f"resnet18-{wrong}.pth"
    (hub / filename).write_bytes(data)
    fake_weights(monkeypatch, filename)
    with pytest.raises(CheckpointError) as info:
        resnet.imagenet_state_dict("resnet18")
    message = str(info.value)
    assert f"sha256 starts with {sha256_prefix(data)}, expected {wrong}" in message
    assert str(hub / filename) in message and "Delete it" in message


def test_offline_without_the_file_says_where_to_put_it(hub, monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    weights = types.SimpleNamespace(
        url="https://download.pytorch.org/models/resnet18-f37072fd.pth", get_state_dict=offline
    )
    monkeypatch.setattr(resnet, "imagenet_weights", lambda name: weights)
    with pytest.raises(RuntimeError) as info:
        resnet.imagenet_state_dict("resnet18")
    assert str(hub / "resnet18-f37072fd.pth") in str(info.value)


# ---------------------------------------------------------------------------------------------
# channel order inside the heads (the official weights depend on it)
# ---------------------------------------------------------------------------------------------
def test_decoder_concatenates_aspp_channels_first():
    model = DeepLabV3Plus("resnet18", num_classes=6).eval()
    decoder = model.decoder
    with torch.no_grad():
        decoder.classifier[0].conv.weight[:, :256] = 0  # silence the ASPP part only
        low = torch.randn(1, 64, 16, 16)
        a = decoder(torch.randn(1, 256, 4, 4), low)
        b = decoder(torch.randn(1, 256, 4, 4), low)
    assert torch.equal(a, b)


def test_aspp_concatenates_branches_in_order():
    aspp = DeepLabV3Plus("resnet18", num_classes=6).aspp.eval()
    x = torch.randn(1, 512, 6, 6)
    with torch.no_grad():
        aspp.block[0].conv.weight[:, 256:] = 0  # keep only aspp1's channels
        before = aspp(x)
        for name in ("aspp2", "aspp3", "aspp4"):
            getattr(aspp, name).conv.weight.normal_()
        aspp.global_avg_pool[1].conv.weight.normal_()
        assert torch.equal(before, aspp(x))
        aspp.aspp1.conv.weight.normal_()
        assert not torch.allclose(before, aspp(x))
