"""Seed inference: core/multiscale.py, tools/seeds/infer_loop.py, infer_rsepm.py and infer_seg.py
(docs/formats.md#experiment-folder, #seed-files and #inference).

The multi-scale average is checked against a slow reference written here: every one of the 8
passes runs on its own (batch of 1), with explicit floor sizes and resizes. The scripts run end to
end on a tiny TOY dataset with randomly initialised ResNet-18 networks, and their seed files are
compared with the same reference applied to the images read with PIL.
"""

import contextlib
import math
import os
import pickle
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import run_main
from PIL import Image
from torch import nn

import core.io
import infer_rsepm
import infer_seg
from core.multiscale import SCALES, multiscale_inference, rsepm_seed, seg_seed
from core.networks import RSEPM, DeepLabV2, DeepLabV3Plus
from core.weights import save_weights
from tools.args import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY_CLASSES = ["background", "disc", "square", "triangle", "ring", "cross"]
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
TAG = "R18@TOY@test"
FAST = ["--scales", "1.0,0.5"]
# The classifier rows of the RSEPM fixture network: classes 1 and 3 score ~1, the others ~0.
HIGH_CLASSES = [1, 3]


# ---------------------------------------------------------------------------------------------
# The independent reference
# ---------------------------------------------------------------------------------------------
def ref_resize(x, size, mode):
    if mode == "nearest":
        return F.interpolate(x, size=size, mode="nearest")
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


@torch.no_grad()
def reference_multiscale(
    model, image, kind, scales=SCALES, interpolation="nearest", same=True, class_fn="sigmoid", unflip=True
):
    """The 8-pass average, one pass at a time: image (3, H, W) -> probs (C+1, H, W), scores (C,).
    unflip=False leaves the flipped passes mirrored (a wrong variant, to show the test can fail)."""
    height, width = image.shape[-2:]
    if same:
        ref_size = (height, width)
    else:  # the model's output size at scale 1.0
        out = model(image[None])
        ref_size = tuple((out["seg"] if kind == "rsepm" else out).shape[-2:])
    passes, scores = [], []
    for scale in scales:
        size = (math.floor(height * scale), math.floor(width * scale))
        scaled = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)
        for flip in (False, True):
            out = model(scaled.flip(-1) if flip else scaled)
            logits = out["seg"] if kind == "rsepm" else out
            if same:
                logits = ref_resize(logits, size, interpolation)
            probs = ref_resize(torch.softmax(logits, dim=1), ref_size, interpolation)[0]
            passes.append(probs.flip(-1) if flip and unflip else probs)
            if kind == "rsepm":
                fn = torch.sigmoid if class_fn == "sigmoid" else (lambda t: torch.softmax(t, dim=1))
                scores.append(fn(out["logits"])[0])
    probs = torch.stack(passes).mean(dim=0)
    probs = F.interpolate(probs[None], size=(height, width), mode="bilinear", align_corners=False)[0]
    return probs, (torch.stack(scores).mean(dim=0) if scores else None)


class FakeNet(nn.Module):
    """Fixed 3x3 convolutions with random (so not mirror-symmetric) weights, then 4x4 average
    pooling: (B, 3, H, W) -> logits (B, classes, ceil(H/4), ceil(W/4)); kind 'rsepm' returns the
    RSEPM dict {'seg', 'logits' (B, classes-1), 'cam'}."""

    def __init__(self, kind, classes=5, seed=0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.kind = kind
        self.seg = nn.Conv2d(3, classes, 3, padding=1)
        self.cam = nn.Conv2d(3, classes - 1, 3, padding=1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator))
        self.eval()

    def forward(self, x):
        seg = F.avg_pool2d(self.seg(x), 4, ceil_mode=True)
        if self.kind == "seg":
            return seg
        cam = F.avg_pool2d(self.cam(x), 4, ceil_mode=True)
        return {"seg": seg, "logits": cam.mean(dim=(2, 3)), "cam": cam}


class CallCounter(nn.Module):
    """Records the input shape of every forward call of the wrapped model."""

    def __init__(self, model):
        super().__init__()
        self.model, self.shapes = model, []

    def forward(self, x):
        self.shapes.append(tuple(x.shape))
        return self.model(x)


def random_image(height=37, width=50, seed=1):
    return torch.randn(3, height, width, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# multiscale_inference against the reference
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["rsepm", "seg"])
@pytest.mark.parametrize("interpolation", ["nearest", "bilinear"])
@pytest.mark.parametrize("same", [True, False])
def test_multiscale_matches_the_one_pass_at_a_time_reference(kind, interpolation, same):
    model, image = FakeNet(kind), random_image()
    probs, scores = multiscale_inference(
        model, image, kind, interpolation=interpolation, same=same, with_scores=kind == "rsepm"
    )
    expected, expected_scores = reference_multiscale(model, image, kind, interpolation=interpolation, same=same)
    assert probs.shape == (5, 37, 50)
    assert torch.allclose(probs, expected, atol=1e-6, rtol=1e-5)
    assert torch.allclose(probs.sum(dim=0), torch.ones(37, 50), atol=1e-5)
    if kind == "rsepm":
        assert scores.shape == (4,)
        assert torch.allclose(scores, expected_scores, atol=1e-6, rtol=1e-5)
    else:
        assert scores is None


@pytest.mark.parametrize("scales", [(1.0,), (1.0, 0.75), (1.0, 0.5, 1.5, 2.0, 1.25)])
def test_other_scale_lists_match_the_reference(scales):
    model, image = FakeNet("rsepm", seed=3), random_image(41, 29, seed=4)
    probs, scores = multiscale_inference(
        model, image, "rsepm", scales=scales, interpolation="nearest", with_scores=True
    )
    expected, expected_scores = reference_multiscale(model, image, "rsepm", scales=scales)
    assert torch.allclose(probs, expected, atol=1e-6, rtol=1e-5)
    assert torch.allclose(scores, expected_scores, atol=1e-6, rtol=1e-5)


def test_the_flip_matters_so_the_reference_can_tell():
    """With these models, not undoing the flip gives a different answer; undoing it makes the
    average flip-equivariant (exactly so with bilinear resizing, which is mirror-symmetric)."""
    model, image = FakeNet("seg"), random_image()
    probs, _ = multiscale_inference(model, image, "seg", interpolation="bilinear")
    not_unflipped, _ = reference_multiscale(model, image, "seg", interpolation="bilinear", unflip=False)
    assert not torch.allclose(probs, not_unflipped, atol=1e-3)
    mirrored, _ = multiscale_inference(model, image.flip(-1), "seg", interpolation="bilinear")
    assert torch.allclose(mirrored.flip(-1), probs, atol=1e-6)


def test_class_scores_are_the_mean_of_the_eight_sigmoids_or_softmaxes():
    model, image = FakeNet("rsepm", seed=5), random_image(seed=6)
    by_hand = []
    for scale in SCALES:
        size = (math.floor(37 * scale), math.floor(50 * scale))
        x = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)
        by_hand += [model(x)["logits"][0], model(x.flip(-1))["logits"][0]]
    by_hand = torch.stack(by_hand)  # (8, C)
    _, sigmoid = multiscale_inference(model, image, "rsepm", with_scores=True)
    _, softmax = multiscale_inference(model, image, "rsepm", with_scores=True, class_fn="softmax")
    assert torch.allclose(sigmoid, torch.sigmoid(by_hand).mean(dim=0), atol=1e-6)
    assert torch.allclose(softmax, torch.softmax(by_hand, dim=1).mean(dim=0), atol=1e-6)
    assert not torch.allclose(sigmoid, softmax, atol=1e-3)


@pytest.mark.parametrize("kind", ["rsepm", "seg"])
def test_one_batched_forward_per_scale(kind):
    """Each scale is ONE forward of the image and its flip (batch 2) at floor(h*s) x floor(w*s)."""
    counter = CallCounter(FakeNet(kind))
    multiscale_inference(counter, random_image(37, 50), kind, with_scores=kind == "rsepm")
    assert counter.shapes == [(2, 3, 37, 50), (2, 3, 18, 25), (2, 3, 55, 75), (2, 3, 74, 100)]


def test_multiscale_on_a_real_rsepm_network_matches_the_reference():
    """The real network (BatchNorm in eval mode, so batch 2 = two batches of 1)."""
    torch.manual_seed(0)
    model = RSEPM("resnet18", num_classes=6).eval()
    image = random_image(45, 38, seed=7)
    probs, scores = multiscale_inference(model, image, "rsepm", interpolation="nearest", with_scores=True)
    expected, expected_scores = reference_multiscale(model, image, "rsepm")
    assert torch.allclose(probs, expected, atol=1e-5)
    assert torch.allclose(scores, expected_scores, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Seed dialects, by hand
# ---------------------------------------------------------------------------------------------
def test_rsepm_seed_keys_and_planes_by_hand():
    probs = torch.zeros(4, 2, 3)
    probs[1] = torch.tensor([[0.1, 0.2, 0.4], [0.0, 0.3, 0.2]])
    probs[2] = torch.tensor([[0.9, 0.9, 0.9], [0.9, 0.9, 0.9]])  # not a present class
    probs[3] = torch.tensor([[0.05, 0.0, 0.0], [0.0, 0.0, 0.025]])
    keys, seed = rsepm_seed(probs, [3, 1])
    assert keys.dtype == np.int64 and keys.tolist() == [0, 1, 3]
    assert seed.dtype == np.float32 and seed.shape == (2, 2, 3)
    expected = (
        np.array([[[0.1, 0.2, 0.4], [0.0, 0.3, 0.2]], [[0.05, 0.0, 0.0], [0.0, 0.0, 0.025]]])
        / np.array([0.40001, 0.05001])[:, None, None]
    )
    np.testing.assert_allclose(seed, expected, rtol=1e-6)


def test_rsepm_seed_without_classes():
    keys, seed = rsepm_seed(torch.rand(6, 5, 7), [])
    assert keys.tolist() == [0] and keys.dtype == np.int64
    assert seed.shape == (0, 5, 7) and seed.dtype == np.float32


def test_seg_seed_keeps_channels_reaching_005_with_raw_probabilities():
    probs = torch.tensor(
        [
            [[0.04, 0.01], [0.0, 0.02]],  # background below 0.05: dropped
            [[0.05, 0.0], [0.0, 0.0]],  # exactly 0.05: kept
            [[0.049, 0.02], [0.01, 0.0]],  # dropped
            [[0.861, 0.97], [0.99, 0.98]],
        ]
    )  # kept
    keys, seed = seg_seed(probs)
    assert keys.dtype == np.int64 and keys.tolist() == [1, 3]
    np.testing.assert_array_equal(seed, probs[[1, 3]].numpy())  # raw, not normalised
    probs[0, 1, 1] = 0.5  # now the background passes and comes first
    keys, seed = seg_seed(probs)
    assert keys.tolist() == [0, 1, 3]
    np.testing.assert_array_equal(seed, probs[[0, 1, 3]].numpy())


# ---------------------------------------------------------------------------------------------
# End to end on the TOY dataset
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy(toy_dataset):
    return toy_dataset(num_train=2, num_train_aug=4, num_validation=4, num_test=2, max_size=72)


def make_rsepm(num_classes=6, backbone="resnet18"):
    """Random RSEPM whose class logits are strongly positive for HIGH_CLASSES, negative otherwise
    (C5 is non-negative after the ReLU), so --conf_th picks a known set."""
    torch.manual_seed(0)
    net = RSEPM(backbone, num_classes=num_classes)
    with torch.no_grad():
        net.classifier.weight.fill_(-0.05)
        for c in HIGH_CLASSES:
            net.classifier.weight[c - 1] = 0.05
    return net.eval()


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Checkpoint files: the RSEPM network of make_rsepm and the two segmenters."""
    folder = tmp_path_factory.mktemp("weights")
    paths = {"rsepm": folder / "rsepm.pth"}
    save_weights(make_rsepm(), paths["rsepm"])
    for name, net in segmenters().items():
        paths[name] = folder / f"{name}.pth"
        save_weights(net, paths[name])
    return paths


def kaiming_heads(net, *names):
    for name in names:
        for m in getattr(net, name).modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                if m.bias is not None:
                    torch.nn.init.zeros_(m.bias)
    return net


def segmenters():
    """Random ResNet-18 DeepLabV3+ (class 3 pushed down, so it fails the 0.05 rule) and DeepLabV2
    (background pushed down, class 2 near the 0.05 line), TOY classes."""
    torch.manual_seed(1)
    # The heads are re-initialised kaiming-normal (zero bias) right after construction: the
    # pushes below were tuned on those weights (the networks themselves use PyTorch's default).
    v3 = kaiming_heads(DeepLabV3Plus("resnet18", num_classes=6), "aspp", "decoder")
    v2 = kaiming_heads(DeepLabV2("resnet18", num_classes=6), "aspp")
    with torch.no_grad():
        v3.decoder.classifier[4].weight[3] = -v3.decoder.classifier[4].weight[3].abs() - 0.05
        v2.aspp.aspp1.bias[0] = -40.0
        v2.aspp.aspp1.bias[2] = -1.0  # class 2 peaks between 0.04 and 0.055: kept in some images only
    return {"deeplabv3+": v3.eval(), "deeplabv2": v2.eval()}


def place_weights(pred_dir, source, tag=TAG):
    """Put a checkpoint at {pred_dir}/models/{tag}/last.pth (hard link: no copy of 70 MB)."""
    target = os.path.join(pred_dir, "models", tag, "last.pth")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
    return target


def rsepm_args(root, pred_dir, *extra, domain="validation"):
    return [
        "--root_dir",
        str(root),
        "--dataset",
        "TOY",
        "--domain",
        domain,
        "--tag",
        TAG,
        "--pred_dir",
        str(pred_dir),
        "--backbone",
        "resnet18",
        "--num_workers",
        "0",
        "--seed_format",
        "float32",
        *extra,
    ]


def seg_args(root, pred_dir, decoder, *extra):
    return [
        "--root_dir",
        str(root),
        "--dataset",
        "TOY",
        "--domain",
        "validation",
        "--tag",
        TAG,
        "--pred_dir",
        str(pred_dir),
        "--backbone",
        "resnet18",
        "--decoder",
        decoder,
        "--num_workers",
        "0",
        "--seed_format",
        "float32",
        *extra,
    ]


def out_dir(pred_dir, domain="validation"):
    return os.path.join(pred_dir, "predictions", TAG, domain)


def image_ids(root, domain):
    return sorted(f[:-4] for f in os.listdir(os.path.join(root, domain, "image")) if f.endswith(".jpg"))


def load_image(root, domain, image_id):
    """Normalised (3, H, W) float tensor straight from PIL, with the docs/formats.md#preprocessing constants."""
    rgb = np.array(Image.open(os.path.join(root, domain, "image", image_id + ".jpg")).convert("RGB"))
    return torch.from_numpy(((rgb / 255.0 - MEAN) / STD).transpose(2, 0, 1).astype(np.float32))


def xml_tags(root, domain, image_id):
    names = [n.text for n in ET.parse(os.path.join(root, domain, "xml", image_id + ".xml")).iter("name")]
    return sorted({TOY_CLASSES.index(n) for n in names})


def read_pickle(path):
    with open(path, "rb") as f:
        return pickle.load(f)  # files this test run wrote itself


def snapshot(folder):
    return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))}


def test_infer_rsepm_with_ground_truth_tags_matches_the_reference(toy, weights, tmp_path):
    """Default scales and --conf_th -1: keys = [0] + xml tags, seed = normalised reference probs."""
    place_weights(tmp_path, weights["rsepm"])
    summary = run_main(infer_rsepm, rsepm_args(toy, tmp_path))
    ids = image_ids(toy, "validation")
    assert summary["written"] == len(ids) == 4 and not summary["failed"]
    assert sorted(os.listdir(out_dir(tmp_path))) == [i + ".pkl" for i in ids]
    model = make_rsepm()
    for image_id in ids:
        stored = read_pickle(os.path.join(out_dir(tmp_path), image_id + ".pkl"))
        assert stored["dialect"] == "rsepm"
        tags = xml_tags(toy, "validation", image_id)
        assert stored["keys"].dtype == np.int64 and stored["keys"].tolist() == [0] + tags
        image = load_image(toy, "validation", image_id)
        assert stored["seed"].dtype == np.float32
        assert stored["seed"].shape == (len(tags),) + tuple(image.shape[1:])
        assert stored["seed"].min() >= 0 and stored["seed"].max() <= 1
        probs, _ = reference_multiscale(model, image, "rsepm", interpolation="nearest")
        planes = probs[tags]
        expected = planes / (planes.flatten(1).max(dim=1).values[:, None, None] + 1e-5)
        np.testing.assert_allclose(stored["seed"], expected.numpy(), atol=2e-5)


def test_conf_th_picks_classes_by_score(toy, weights, tmp_path):
    place_weights(tmp_path, weights["rsepm"])
    run_main(infer_rsepm, rsepm_args(toy, tmp_path, "--conf_th", "0.5", *FAST))
    model = make_rsepm()
    for image_id in image_ids(toy, "validation"):
        stored = read_pickle(os.path.join(out_dir(tmp_path), image_id + ".pkl"))
        image = load_image(toy, "validation", image_id)
        _, scores = reference_multiscale(model, image, "rsepm", scales=(1.0, 0.5))
        assert ((scores > 0.9) | (scores < 0.1)).all()  # far from the threshold: a robust check
        assert stored["keys"].tolist() == [0] + HIGH_CLASSES
        assert stored["seed"].shape == (2,) + tuple(image.shape[1:])


def test_images_that_keep_no_class_are_counted_and_most_of_them_warn(toy, weights, tmp_path, capsys):
    """--conf_th: the summary counts the images whose scores keep no class; a network that scores
    every class low (all classifier rows negative, as make_rsepm's low ones) keeps none anywhere."""
    place_weights(tmp_path, weights["rsepm"])
    summary = run_main(infer_rsepm, rsepm_args(toy, tmp_path, "--conf_th", "0.5", *FAST))
    count = len(image_ids(toy, "validation"))
    assert summary["no_class"] == 0 and summary["written"] == count
    assert f"0 of the {count} images kept no class" in capsys.readouterr().out
    model = make_rsepm()
    with torch.no_grad():
        model.classifier.weight.fill_(-0.05)
    low = tmp_path / "low.pth"
    save_weights(model, low)
    summary = run_main(infer_rsepm, rsepm_args(toy, tmp_path / "low", "--conf_th", "0.5", "--weights", str(low), *FAST))
    out = capsys.readouterr().out
    assert summary["no_class"] == count and f"{count} of the {count} images kept no class" in out
    assert "warning: most images kept no class" in out
    summary = run_main(infer_rsepm, rsepm_args(toy, tmp_path / "tags", "--weights", str(low), *FAST))
    assert "no_class" not in summary  # ground-truth tags: nothing to count


def test_train_aug_writes_into_the_train_folder(toy, weights, tmp_path):
    place_weights(tmp_path, weights["rsepm"])
    run_main(infer_rsepm, rsepm_args(toy, tmp_path, *FAST, domain="train_aug"))
    assert sorted(
        n
        for n in os.listdir(os.path.join(tmp_path, "predictions", TAG))
        if not n.endswith(".settings.json") and not n.endswith(".lock")
    ) == ["train"]
    assert sorted(os.listdir(out_dir(tmp_path, "train"))) == [i + ".pkl" for i in image_ids(toy, "train_aug")]


def test_test_split_needs_a_confidence_threshold(toy, weights, tmp_path):
    place_weights(tmp_path, weights["rsepm"])
    with pytest.raises(SystemExit) as error:
        cli(infer_rsepm.main, infer_rsepm.get_args_parser(), rsepm_args(toy, tmp_path, *FAST, domain="test"))
    assert error.value.code not in (0, None) and "--conf_th" in str(error.value.code)
    assert not os.path.exists(os.path.join(tmp_path, "predictions"))
    summary = run_main(infer_rsepm, rsepm_args(toy, tmp_path, "--conf_th", "0.3", *FAST, domain="test"))
    assert summary["written"] == 2
    for image_id in image_ids(toy, "test"):
        assert (
            read_pickle(os.path.join(out_dir(tmp_path, "test"), image_id + ".pkl"))["keys"].tolist()
            == [0] + HIGH_CLASSES
        )


def test_script_exit_status_and_message_from_the_command_line(toy, weights, tmp_path):
    place_weights(tmp_path, weights["rsepm"])
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="2")
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "infer_rsepm.py"), *rsepm_args(toy, tmp_path, domain="test")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "--conf_th" in proc.stderr and "Traceback" not in proc.stderr


def test_missing_checkpoint_names_the_path(toy, tmp_path):
    with pytest.raises(SystemExit) as error:
        cli(infer_rsepm.main, infer_rsepm.get_args_parser(), rsepm_args(toy, tmp_path))
    expected = os.path.join(str(tmp_path), "models", TAG, "last.pth")
    assert expected in str(error.value.code) and "not found" in str(error.value.code)
    with pytest.raises(SystemExit) as error:
        cli(
            infer_rsepm.main,
            infer_rsepm.get_args_parser(),
            rsepm_args(toy, tmp_path, "--weights", str(tmp_path / "nope.pth")),
        )
    assert str(tmp_path / "nope.pth") in str(error.value.code)
    assert not os.path.exists(os.path.join(tmp_path, "predictions"))


def test_checkpoint_of_another_network_names_the_keys(toy, weights, tmp_path):
    # ResNet-18 weights for a ResNet-34 network: blocks layer1.2 etc. are missing from the file
    with pytest.raises(SystemExit) as error:
        cli(
            infer_rsepm.main,
            infer_rsepm.get_args_parser(),
            rsepm_args(toy, tmp_path, "--weights", str(weights["rsepm"]), "--backbone", "resnet34"),
        )
    message = str(error.value.code)
    assert str(weights["rsepm"]) in message and "missing" in message and "model.layer1.2.conv1.weight" in message
    # 21-class (VOC) weights for the 6-class TOY dataset: mis-shaped heads
    voc = tmp_path / "voc.pth"
    save_weights(RSEPM("resnet18", num_classes=21), voc)
    with pytest.raises(SystemExit) as error:
        cli(infer_rsepm.main, infer_rsepm.get_args_parser(), rsepm_args(toy, tmp_path, "--weights", str(voc)))
    message = str(error.value.code)
    assert "mis-shaped" in message and "classifier.weight (file (20, 512, 1, 1), model (5, 512, 1, 1))" in message
    assert not os.path.exists(os.path.join(tmp_path, "predictions"))


def test_weights_flag_overrides_the_model_folder(toy, weights, tmp_path):
    summary = run_main(infer_rsepm, rsepm_args(toy, tmp_path, "--weights", str(weights["rsepm"]), *FAST))
    assert summary["written"] == 4
    assert not os.path.exists(os.path.join(tmp_path, "models"))


def test_inference_leaves_autograd_on_for_the_caller(toy, weights, tmp_path):
    """Called in-process (tests, notebooks, pipelines), the scripts must not switch autograd off
    globally."""
    assert torch.is_grad_enabled()
    run_main(infer_seg, seg_args(toy, tmp_path, "deeplabv2", "--weights", str(weights["deeplabv2"]), "--scales", "1.0"))
    assert torch.is_grad_enabled()


def test_corrupt_image_is_counted_listed_and_fails_the_run(toy, weights, tmp_path, capsys):
    root = tmp_path / "TOY"
    shutil.copytree(toy, root)
    ids = image_ids(root, "validation")
    bad = root / "validation" / "image" / (ids[1] + ".jpg")
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    place_weights(tmp_path, weights["rsepm"])
    argv = rsepm_args(root, tmp_path, *FAST)
    argv[argv.index("--num_workers") + 1] = "2"  # errors come back from DataLoader workers
    with pytest.raises(SystemExit) as error:
        cli(infer_rsepm.main, infer_rsepm.get_args_parser(), argv)
    assert error.value.code not in (0, None)
    err = capsys.readouterr().err
    assert error.value.code == 1 and "1 image(s) skipped:" in err and str(bad) in err
    assert sorted(os.listdir(out_dir(tmp_path))) == [i + ".pkl" for i in ids if i != ids[1]]


def test_resume_rewrites_only_missing_files_identically(toy, weights, tmp_path):
    place_weights(tmp_path, weights["rsepm"])
    argv = rsepm_args(toy, tmp_path, *FAST)
    run_main(infer_rsepm, argv)
    first = snapshot(out_dir(tmp_path))
    stats = {n: os.stat(os.path.join(out_dir(tmp_path), n)) for n in first}
    removed = sorted(first)[2]
    os.remove(os.path.join(out_dir(tmp_path), removed))
    summary = run_main(infer_rsepm, argv)
    assert summary["written"] == 1 and summary["skipped_existing"] == 3
    assert snapshot(out_dir(tmp_path)) == first  # byte-identical, the rewritten one included
    for name, before in stats.items():
        if name != removed:  # untouched: same inode, same modification time
            after = os.stat(os.path.join(out_dir(tmp_path), name))
            assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_interrupted_run_leaves_no_partial_file_and_resumes(toy, weights, tmp_path, monkeypatch):
    """A KeyboardInterrupt while the 3rd seed file is being written: atomic_output removes its
    temporary file, the 2 finished files stay, and a re-run completes the folder."""
    place_weights(tmp_path / "a", weights["rsepm"])
    place_weights(tmp_path / "b", weights["rsepm"])
    real, calls = core.io.atomic_output, []

    @contextlib.contextmanager
    def interrupted_third(path, mode="wb"):
        calls.append(path)
        with real(path, mode) as f:
            if len([c for c in calls if str(c).endswith(".pkl")]) == 3:  # the settings record is written first
                f.write(b"\x80\x04partial")  # half a pickle already on disk
                raise KeyboardInterrupt
            yield f

    monkeypatch.setattr(core.io, "atomic_output", interrupted_third)
    with pytest.raises(KeyboardInterrupt):
        run_main(infer_rsepm, rsepm_args(toy, tmp_path / "a", *FAST))
    monkeypatch.undo()
    ids = image_ids(toy, "validation")
    assert sorted(os.listdir(out_dir(tmp_path / "a"))) == [i + ".pkl" for i in ids[:2]]  # no temp file
    assert run_main(infer_rsepm, rsepm_args(toy, tmp_path / "a", *FAST))["written"] == 2
    run_main(infer_rsepm, rsepm_args(toy, tmp_path / "b", *FAST))  # never interrupted
    for image_id in ids:
        a = read_pickle(os.path.join(out_dir(tmp_path / "a"), image_id + ".pkl"))
        b = read_pickle(os.path.join(out_dir(tmp_path / "b"), image_id + ".pkl"))
        assert np.array_equal(a["keys"], b["keys"]) and np.array_equal(a["seed"], b["seed"])


@pytest.mark.parametrize(
    "text, value",
    [
        ("true", True),
        ("TRUE", True),
        ("Yes", True),
        ("1", True),
        ("false", False),
        ("False", False),
        ("NO", False),
        ("0", False),
    ],
)
def test_boolean_flags_accept_the_usual_spellings(text, value):
    args = infer_rsepm.get_args_parser().parse_args(
        ["--same", text, "--reverse", text, "--single", text, "--shuffle", text, "--use_cam", text, "--debug", text]
    )
    assert (args.same, args.reverse, args.single, args.shuffle, args.use_cam, args.debug) == (value,) * 6
    assert infer_seg.get_args_parser().parse_args(["--reverse", text]).reverse is value


def test_boolean_flags_reject_other_words():
    with pytest.raises(SystemExit) as error:
        infer_rsepm.get_args_parser().parse_args(["--same", "maybe"])
    assert error.value.code == 2


def test_original_defaults(tmp_path):
    """The published defaults; the network flags take them when no config.json is beside the weights."""
    from tools.seeds.infer_loop import resolve_network_args

    args = infer_rsepm.get_args_parser().parse_args([])
    resolve_network_args(args, str(tmp_path / "last.pth"), {"backbone": "resnet50"})
    assert (
        args.gpus,
        args.root_dir,
        args.dataset,
        args.domain,
        args.backbone,
        args.conf_th,
        args.strategy,
        args.pred_dir,
        args.same,
        args.interpolation,
        args.class_fn,
        args.scales,
    ) == (
        "0",
        "../VOC2012/",
        "VOC",
        "train",
        "resnet50",
        -1,
        "last",
        "./experiments/",
        True,
        "nearest",
        "sigmoid",
        (1.0, 0.5, 1.5, 2.0),
    )
    args = infer_seg.get_args_parser().parse_args([])
    resolve_network_args(args, str(tmp_path / "last.pth"), infer_seg.NETWORK_DEFAULTS)
    assert (args.backbone, args.decoder, args.output_stride, args.tag) == (
        "resnet101",
        "deeplabv3+",
        8,
        "ResNet101@VOC@DeepLabv3+@MS@RSCM",
    )


@pytest.mark.parametrize("decoder", ["deeplabv3+", "deeplabv2"])
def test_infer_seg_writes_seg_dialect_seeds(toy, weights, tmp_path, decoder):
    place_weights(tmp_path, weights[decoder])
    summary = run_main(infer_seg, seg_args(toy, tmp_path, decoder, *FAST))
    assert summary["written"] == 4
    model, kept = segmenters()[decoder], []
    for image_id in image_ids(toy, "validation"):
        stored = read_pickle(os.path.join(out_dir(tmp_path), image_id + ".pkl"))
        assert stored["dialect"] == "seg"
        image = load_image(toy, "validation", image_id)
        probs, _ = reference_multiscale(model, image, "seg", scales=(1.0, 0.5), interpolation="bilinear")
        peak = probs.flatten(1).max(dim=1).values
        assert ((peak - 0.05).abs() > 1e-4).all()  # no channel on the edge of the rule
        keep = torch.nonzero(peak >= 0.05).flatten().tolist()
        assert stored["keys"].dtype == np.int64 and stored["keys"].tolist() == keep
        assert stored["seed"].shape == (len(keep),) + tuple(image.shape[1:])
        np.testing.assert_allclose(stored["seed"], probs[keep].numpy(), atol=2e-5)
        kept.append(keep)
    if decoder == "deeplabv3+":  # class 3 pushed far down: never kept; the background is
        assert all(3 not in keep and 0 in keep for keep in kept)
    else:  # background pushed far down: never kept; class 2 near the 0.05 line: sometimes
        assert all(0 not in keep for keep in kept)
        assert any(2 in keep for keep in kept) and not all(2 in keep for keep in kept)
