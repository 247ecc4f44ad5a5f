"""core/rsepm.py: one RS+EPM training step (docs/method.md#training-iteration) on random tensors,
tiny ResNet-18."""

import copy

import pytest
import torch

import core.rsepm as rsepm
from core.networks import RSEPM
from core.rsepm import RSEPMConfig, RSEPMTraining
from core.targets import IGNORE_INDEX, certain_filter, random_partner, resize_nearest, valid_cells

NUM_CLASSES = 6  # TOY: background + 5
FAST = dict(pamr_iterations=2, pamr_dilations=(1, 2))
SIZE = 32


@pytest.fixture(scope="module")
def network():
    torch.manual_seed(0)
    return RSEPM("resnet18", NUM_CLASSES)


@pytest.fixture()
def batch():
    """4 images (B, 3, 32, 32), tags (B, 5) with 1-2 classes each, valid (B, 32, 32): image 1 has
    its right half padded and image 2 its bottom 12 rows, the others are whole."""
    g = torch.Generator().manual_seed(1)
    images = torch.randn(4, 3, SIZE, SIZE, generator=g)
    tags = torch.zeros(4, NUM_CLASSES - 1)
    tags[0, 0] = tags[1, 2] = tags[1, 4] = tags[2, 1] = tags[3, 3] = tags[3, 0] = 1
    valid = torch.ones(4, SIZE, SIZE, dtype=torch.bool)
    valid[1, :, 16:] = False
    valid[2, 20:, :] = False
    images[~valid[:, None].expand_as(images)] = 0.0  # padding is 0 after normalisation
    return images, tags, valid


def step_module(network, teacher=None, **config):
    module = RSEPMTraining(copy.deepcopy(network), RSEPMConfig(**{**FAST, **config}), teacher=teacher)
    return module.train()


def spy(monkeypatch, name):
    """Replace core.rsepm.<name> by a wrapper that records each call's arguments and result."""
    original = getattr(rsepm, name)
    calls = []

    def wrapper(*args, **kwargs):
        result = original(*args, **kwargs)
        calls.append({"args": args, "kwargs": kwargs, "result": result})
        return result

    monkeypatch.setattr(rsepm, name, wrapper)
    return calls


def spy_forward(module, calls, label):
    """Record (label, with_features, training) for every forward of `module`."""
    original = module.forward

    def forward(x, with_features=False):
        calls.append((label, with_features, module.training))
        return original(x, with_features=with_features)

    module.forward = forward  # an instance attribute wins over the class method in __call__


def assert_every_parameter_has_a_gradient(module):
    missing = [n for n, p in module.network.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing[:5]} ({len(missing)} parameters)"


def stride4_valid(valid):
    """The batch fixture's valid masks at stride 4 (8 x 8), checked against the hand count."""
    valid4 = resize_nearest(valid, (SIZE // 4, SIZE // 4))
    expected = torch.ones(4, 8, 8, dtype=torch.bool)
    expected[1, :, 4:] = False  # columns 16.. of 32
    expected[2, 5:, :] = False  # rows 20.. of 32
    assert torch.equal(valid4, expected)
    return valid4


def backward(out):
    sum(v for k, v in out.items() if k in rsepm.LOSS_TERMS).backward()


# --- before rs_start ---------------------------------------------------------------------------
def test_before_recurseed_only_cls_but_every_parameter_gets_a_gradient(network, batch):
    module = step_module(network)
    out = module(*batch, use_rs=False, use_mix=True)  # the mix never runs without RS targets
    assert set(out) == {"cls"}
    assert out["cls"].ndim == 0 and torch.isfinite(out["cls"])
    backward(out)
    # DDP runs without find_unused_parameters: the decoder must be in the graph (zero-weighted)
    assert_every_parameter_has_a_gradient(module)
    decoder_grads = torch.cat([p.grad.flatten() for p in module.network.decoder.parameters()])
    assert decoder_grads.abs().max() == 0


def test_cls_is_the_soft_margin_loss_of_the_cam_mean_inside_the_valid_box(network, batch):
    images, tags, valid = batch
    module = step_module(network)
    out = module(images, tags, valid)
    cam = module.network(images)["cam"]
    # brute force: the CAM cell (16 x 16 pixels) weighs with its fraction of valid pixels
    weight = valid.float().reshape(4, 2, 16, 2, 16).mean(dim=(2, 4))[:, None]  # (B, 1, 2, 2)
    logits = (cam * weight).sum(dim=(2, 3)) / weight.sum(dim=(2, 3))
    expected = torch.nn.functional.multilabel_soft_margin_loss(logits, tags)
    torch.testing.assert_close(out["cls"], expected, rtol=1e-5, atol=1e-6)


# --- RecurSeed ---------------------------------------------------------------------------------
def test_recurseed_adds_rec_seg_and_label_fractions(network, batch):
    module = step_module(network)
    out = module(*batch, use_rs=True)
    assert set(out) == {"cls", "rec", "seg", "certain", "ignored", "no_fg"}
    assert all(torch.isfinite(v) and v.ndim == 0 for v in out.values())
    assert float(out["certain"] + out["ignored"]) == pytest.approx(1.0, abs=1e-6)
    assert not out["certain"].requires_grad and not out["ignored"].requires_grad
    backward(out)
    assert_every_parameter_has_a_gradient(module)


def test_recurseed_target_is_the_certain_filter_of_the_online_network_with_padding_ignored(network, batch, monkeypatch):
    images, tags, valid = batch
    seg_calls = spy(monkeypatch, "segmentation_loss")
    module = step_module(network, cf_fg_th=0.5, cf_bg_th=0.2)
    out = module(images, tags, valid, use_rs=True)
    ((logits, labels),) = [c["args"] for c in seg_calls]
    assert labels.shape == (4, SIZE // 4, SIZE // 4) == logits.shape[:1] + logits.shape[2:]

    # independent recomputation: a second forward of the same network (train-mode BN uses the
    # batch statistics, the CAM and backbone maps do not pass through dropout)
    with torch.no_grad():
        source = module.network(images, with_features=True)
        m_rs = module.recur_seed(images, source, tags, valid)
    valid4 = stride4_valid(valid)
    expected = certain_filter(m_rs, tags, 0.5, 0.2)
    assert torch.equal(labels[valid4], expected[valid4])
    assert (labels[~valid4] == IGNORE_INDEX).all()
    # the whole images hold certain pixels, and the stats count valid pixels only
    assert (labels[0] != IGNORE_INDEX).any()
    certain = ((labels != IGNORE_INDEX) & valid4).sum() / valid4.sum()
    assert float(out["certain"]) == pytest.approx(float(certain), abs=1e-6)
    # untagged classes never appear as labels
    for b in range(4):
        present = set(labels[b][(labels[b] != 0) & (labels[b] != IGNORE_INDEX)].tolist())
        assert present <= {int(k) + 1 for k in torch.nonzero(tags[b]).flatten()}


def test_rec_target_is_recurseed_map(network, batch, monkeypatch):
    rec_calls = spy(monkeypatch, "reconstruction_loss")
    module = step_module(network)
    module(*batch, use_rs=True)
    ((cam, target, tags, valid),) = [c["args"] for c in rec_calls]
    assert torch.equal(valid, batch[2])  # L_rec ignores the padding too
    assert cam.requires_grad and not target.requires_grad
    assert target.shape == (4, NUM_CLASSES - 1, SIZE // 4, SIZE // 4)
    assert target.min() >= 0 and target.max() <= 1
    assert (target[~tags.bool()] == 0).all()  # only the tagged classes carry a target


# --- EdgePredictMix ----------------------------------------------------------------------------
def test_mix_adds_rec_mix_and_seg_mix_and_cls_mix_only_with_its_weight(network, batch):
    module = step_module(network, w_cls_mix=0.0)  # the default is 1.0 (docs/method.md#total-loss)
    out = module(*batch, use_rs=True, use_mix=True, seed=3)
    assert set(out) == {"cls", "rec", "seg", "rec_mix", "seg_mix", "certain", "ignored", "no_fg", "pasted_pixels"}
    backward(out)
    assert_every_parameter_has_a_gradient(module)
    module = step_module(network, w_cls_mix=0.5)
    out = module(*batch, use_rs=True, use_mix=True, seed=3)
    assert set(out) >= {"rec_mix", "seg_mix", "cls_mix"}
    assert torch.isfinite(out["cls_mix"]) and out["cls_mix"].requires_grad


def test_mix_none_adds_nothing(network, batch, monkeypatch):
    mix_calls = spy(monkeypatch, "mix_batch")
    out = step_module(network, mix="none")(*batch, use_rs=True, use_mix=True)
    assert set(out) == {"cls", "rec", "seg", "certain", "ignored", "no_fg"}
    assert mix_calls == []


def test_mix_partner_is_a_function_of_the_seed(network, batch, monkeypatch):
    mix_calls = spy(monkeypatch, "mix_batch")
    module = step_module(network)
    for seed in (7, 7, 8, 9, 10, 11):
        module(*batch, use_rs=True, use_mix=True, seed=seed)
    perms = [c["args"][4] for c in mix_calls]
    assert torch.equal(perms[0], perms[1])
    for seed, perm in zip((7, 7, 8, 9, 10, 11), perms):
        expected = random_partner(4, torch.Generator().manual_seed(seed))
        assert torch.equal(perm, expected)
        assert (perm != torch.arange(4)).all()  # nobody is mixed with itself
    assert len({tuple(p.tolist()) for p in perms}) > 1


def test_mixed_images_and_targets_follow_the_edge_predict_labels(network, batch, monkeypatch):
    images, tags, valid = batch
    mix_calls = spy(monkeypatch, "mix_batch")
    ep_calls = spy(monkeypatch, "edge_predict")
    seg_calls = spy(monkeypatch, "segmentation_loss")
    step_module(network)(images, tags, valid, use_rs=True, use_mix=True, seed=5)
    assert len(ep_calls) == 1
    (mixed_images, labels_mix, _, tags_mix) = mix_calls[0]["result"]
    m_ep = mix_calls[0]["args"][1]
    # the edge-predict labels, with the padding ignored, are what gets pasted
    valid4 = stride4_valid(valid)
    expected = ep_calls[0]["result"].masked_fill(~valid4, IGNORE_INDEX)
    assert torch.equal(m_ep, expected)
    # the second segmentation loss trains on the mixed labels
    assert torch.equal(seg_calls[1]["args"][1], labels_mix)
    assert mixed_images.shape == images.shape


def test_collapse_statistics_against_a_count_of_the_targets(network, batch, monkeypatch):
    """no_fg = share of images whose RS target keeps no certain foreground; pasted_pixels = mean
    pasted region per image in input pixels (stride-4 labels: 16 input pixels each). Counted here
    with loops over the images from the spied targets."""
    images, tags, valid = batch
    filter_calls = spy(monkeypatch, "certain_filter")
    mix_calls = spy(monkeypatch, "mix_batch")
    out = step_module(network)(images, tags, valid, use_rs=True, use_mix=True, seed=5)
    target = filter_calls[0]["result"].masked_fill(~stride4_valid(valid), IGNORE_INDEX)
    empty = [not any(0 < int(v) < IGNORE_INDEX for v in target[i].flatten()) for i in range(4)]
    assert float(out["no_fg"]) == pytest.approx(sum(empty) / 4)
    m_ep = mix_calls[0]["args"][1]
    pasted = [sum(1 for v in m_ep[i].flatten() if 0 < int(v) < IGNORE_INDEX) * 16 for i in range(4)]
    assert float(out["pasted_pixels"]) == pytest.approx(sum(pasted) / 4)
    # a certain-filter threshold no score reaches: no image keeps a foreground pixel
    out = step_module(network, cf_fg_th=0.999999)(images, tags, valid, use_rs=True)
    assert float(out["no_fg"]) == 1.0


def test_certainmix_uses_the_certain_filter_not_edge_predict(network, batch, monkeypatch):
    ep_calls = spy(monkeypatch, "edge_predict")
    cf_calls = spy(monkeypatch, "certain_filter")
    out = step_module(network, mix="certainmix")(*batch, use_rs=True, use_mix=True, seed=1)
    assert {"rec_mix", "seg_mix"} <= set(out) and all(torch.isfinite(v) for v in out.values())
    assert ep_calls == []
    assert len(cf_calls) == 2  # RS target, then the decoder's foreground channels
    decoder_fg = cf_calls[1]["args"][0]
    assert decoder_fg.shape == (4, NUM_CLASSES - 1, SIZE // 4, SIZE // 4)


# --- teacher -----------------------------------------------------------------------------------
def test_teacher_generates_the_targets_and_stays_in_eval_mode(network, batch, monkeypatch):
    images, tags, valid = batch
    teacher = copy.deepcopy(network).eval().requires_grad_(False)
    with torch.no_grad():  # a teacher that differs from the online network
        for p in teacher.parameters():
            p.mul_(1.5)
    module = step_module(network, teacher=teacher)
    module.train()  # as the script does every epoch: must not put the teacher in train mode
    calls = []
    spy_forward(module.network, calls, "online")
    spy_forward(teacher, calls, "teacher")
    seg_calls = spy(monkeypatch, "segmentation_loss")
    mix_label_calls = []
    original_mix_labels = module.mix_labels
    module.mix_labels = lambda *a: mix_label_calls.append(a) or original_mix_labels(*a)

    out = module(images, tags, valid, use_rs=True, use_mix=True, seed=2)
    assert calls == [("online", False, True), ("teacher", ("C4", "C5"), False), ("online", False, True)]
    backward(out)
    assert all(p.grad is None for p in teacher.parameters())
    assert_every_parameter_has_a_gradient(module)

    # the RS target and the mix labels come from the teacher's outputs
    with torch.no_grad():
        source = teacher(images, with_features=True)
        expected = certain_filter(module.recur_seed(images, source, tags, valid), tags)
    valid4 = stride4_valid(valid)
    assert torch.equal(seg_calls[0]["args"][1][valid4], expected[valid4])
    assert torch.equal(mix_label_calls[0][1], source["seg"])


# --- SCG grid, padding and precision ------------------------------------------------------------
def test_scg_gets_the_valid_cells_of_the_cam_grid(network, batch, monkeypatch):
    images, tags, valid = batch
    scg_calls = spy(monkeypatch, "scg_maps")
    step_module(network)(images, tags, valid, use_rs=True)
    (call,) = scg_calls
    features, cam = call["args"][:2]
    cells = call["kwargs"]["valid"]
    assert [f.shape[1] for f in features] == [256, 512]  # resnet18 C4, C5
    assert cam.shape == (4, NUM_CLASSES - 1, 2, 2)
    # the 32 x 32 crops on the 2 x 2 CAM grid: image 1's right half and image 2's bottom
    # 12 rows (3/4 of the bottom cells) are padding
    expected = torch.ones(4, 2, 2, dtype=torch.bool)
    expected[1, :, 1] = False
    expected[2, 1, :] = False
    assert torch.equal(cells, expected)
    assert (cam[~expected[:, None].expand_as(cam)] == 0).all()
    assert (call["result"][~expected[:, None].expand_as(cam)] == 0).all()


def test_scg_on_the_c3_grid_with_chosen_feature_maps(network, batch, monkeypatch):
    images, tags, valid = batch
    scg_calls = spy(monkeypatch, "scg_maps")
    module = step_module(network, scg_features=("C1", "C2", "C3", "C4", "C5"), scg_grid="c3")
    out = module(images, tags, valid, use_rs=True)
    assert torch.isfinite(out["rec"]) and torch.isfinite(out["seg"])
    (call,) = scg_calls
    features, cam = call["args"][:2]
    assert [f.shape[1] for f in features] == [64, 64, 128, 256, 512]
    assert cam.shape == (4, NUM_CLASSES - 1, 4, 4)  # stride 8 of 32
    assert torch.equal(call["kwargs"]["valid"], valid_cells(valid, (4, 4)))
    # the CAM is resized to the C3 grid before the max normalisation (released inference code)
    with torch.no_grad():
        raw = module.network(images)["cam"]
    up = torch.nn.functional.interpolate(raw, size=(4, 4), mode="bilinear", align_corners=False)
    expected = rsepm.normalize_cam(up, tags, valid=valid_cells(valid, (4, 4)))
    torch.testing.assert_close(cam, expected, atol=1e-5, rtol=0)


def test_config_rejects_unknown_feature_maps_and_grids():
    with pytest.raises(ValueError, match="scg_features"):
        RSEPMConfig(scg_features=("C6",))
    with pytest.raises(ValueError, match="scg_grid"):
        RSEPMConfig(scg_grid="c4")
    assert RSEPMConfig(scg_features=["C3"], scg_grid="c3").feature_names() == ("C3",)
    assert RSEPMConfig(scg_grid="c3").feature_names() == ("C4", "C5", "C3")


def test_targets_under_cpu_bf16_autocast_equal_float32(network, batch):
    images, tags, valid = batch
    module = step_module(network).eval()
    with torch.no_grad():
        source = module.network(images, with_features=True)
        expected = module.recur_seed(images, source, tags, valid)
        expected_mix = module.mix_labels(images, source["seg"], tags)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = module.recur_seed(images, source, tags, valid)
            got_mix = module.mix_labels(images, source["seg"], tags)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    assert torch.equal(got_mix, expected_mix)
