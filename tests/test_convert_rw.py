"""convert_seed_to_pseudo_masks.py --mode rw: masks against a brute-force random walk (dense
transition matrix), worker processes, error reporting, and train_seg.py on the @rw masks."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import run_main

import convert_seed_to_pseudo_masks as convert
import train_seg
from core.affinity import AffinityNet
from core.dataset_layout import SeedLayout, load_dataset_info, normalize_image
from core.errors import ProjectError
from core.io import load_seed, read_mask, save_seed, write_json
from core.randomwalk import dense_affinity, transition_matrix
from core.weights import save_weights
from tools.paths import model_dir, model_path, predictions_dir, pseudo_labels_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TAG = "ResNet18@TOY@RS+EPM@seeds"
INFO = load_dataset_info("TOY")
TRAIN_CROP = 64  # the affinity net's training crop in its config.json
CANVAS = TRAIN_CROP  # the canvas of the boundary map: the network's own training crop, as IRN pads


@pytest.fixture(scope="module")
def setup(tmp_path_factory, toy_dataset):
    """6 train_aug images, noisy seeds of their classes, a random affinity net (resnet18)."""
    root = toy_dataset(seed=1, num_train=3, num_train_aug=6, max_size=60)
    pred = str(tmp_path_factory.mktemp("rw") / "exp")
    layout = SeedLayout(root, "train_aug", INFO)
    rng = np.random.default_rng(0)
    for image_id in layout.ids:
        gt = layout.read_mask(image_id)
        classes = sorted(int(c) for c in np.unique(gt) if 0 < c < 255)
        planes = np.stack([(gt == c) * 0.7 + rng.uniform(0, 0.3, gt.shape) for c in classes]).astype(np.float32)
        save_seed(
            os.path.join(predictions_dir(pred, TAG, "train_aug"), image_id + ".pkl"), [0] + classes, planes, "rsepm"
        )
    torch.manual_seed(3)
    net = AffinityNet("resnet18")
    with torch.no_grad():
        net.fc_edge6.bias.fill_(0.5)  # strong boundaries: masks with background and several classes
    save_weights(net, model_path(pred, "aff"))
    write_json(
        os.path.join(model_dir(pred, "aff"), "config.json"), {"args": {"backbone": "resnet18", "crop_size": TRAIN_CROP}}
    )
    return root, pred, layout, net.eval()


def argv(root, pred, *extra):
    return [
        "--root_dir",
        root,
        "--dataset",
        "TOY",
        "--domain",
        "train_aug",
        "--folder",
        "predictions",
        "--tag",
        TAG,
        "--pred_dir",
        pred,
        "--gpus",
        "cpu",
        "--mode",
        "rw",
        "--affinity_tag",
        "aff",
        *extra,
    ]


def brute_force_mask(net, image, planes, keys, radius=5, beta=10, exp_times=8, bg=0.25, crf=False):
    """IRN's make_sem_seg_labels written out with the dense N x N matrix and an explicit
    stride-4 average of the seed (padding by repetition), independent of random_walk_labels;
    crf=True: the walked planes through pydensecrf's calls written out here (DeepLab's settings).
    The boundary map as IRN's EdgeDisplacement: image and mirror on a zero CANVAS x CANVAS canvas
    (a larger side keeps its length)."""
    H, W = image.shape[:2]
    h, w = (H + 3) // 4, (W + 3) // 4
    with torch.no_grad():
        x = normalize_image(image)
        pair = torch.zeros(2, 3, max(CANVAS, H), max(CANVAS, W))
        pair[0, :, :H, :W], pair[1, :, :H, :W] = x, x.flip(-1)
        logits = net(pair)[:, 0, :h, :w]
        edge = torch.sigmoid(logits[0] / 2 + logits[1].flip(-1) / 2).double()
    padded = np.pad(planes, ((0, 0), (0, 4 * h - H), (0, 4 * w - W)), mode="edge")
    small = padded.reshape(len(keys), h, 4, w, 4).mean(axis=(2, 4))
    scores = torch.from_numpy(small).double().reshape(len(keys), -1) * (1 - edge).reshape(1, -1)
    walked = (scores @ transition_matrix(dense_affinity(edge, radius), beta, exp_times)).reshape(-1, h, w)
    up = torch.nn.functional.interpolate(walked[None], scale_factor=4, mode="bilinear", align_corners=False)[
        0, :, :H, :W
    ]
    up = up / up.max()
    full = torch.cat([torch.full_like(up[:1], bg), up]).numpy()
    if crf:
        import pydensecrf.densecrf as dcrf

        model = dcrf.DenseCRF2D(W, H, len(full))
        model.setUnaryEnergy(
            np.ascontiguousarray(-np.log(np.clip(full, 1e-5, 1)).reshape(len(full), -1), dtype=np.float32)
        )
        model.addPairwiseGaussian(sxy=1, compat=3)
        model.addPairwiseBilateral(sxy=67, srgb=3, rgbim=np.array(image, dtype=np.uint8, order="C"), compat=4)
        full = np.asarray(model.inference(10)).reshape(len(full), H, W)
    return np.concatenate([[0], keys])[full.argmax(0)]


def test_masks_match_a_brute_force_random_walk_with_one_or_two_workers(setup, tmp_path):
    root, pred, layout, net = setup
    summary = run_main(convert, argv(root, pred, "--num_workers", "1"))
    mask_dir = pseudo_labels_dir(pred, TAG + "@rw", "train_aug")
    assert summary["written"] == 6 and not summary["failed"] and summary["output_dir"] == mask_dir
    agreement = []
    for image_id in layout.ids:
        seed = load_seed(os.path.join(predictions_dir(pred, TAG, "train_aug"), image_id + ".pkl"))
        expected = brute_force_mask(net, layout.read_image(image_id), seed["seed"].astype(np.float64), seed["keys"][1:])
        got = read_mask(os.path.join(mask_dir, image_id + ".png"))
        agreement.append((got == expected).mean())
    # float32 sparse products against float64 dense squaring: a tie-level pixel may differ
    assert min(agreement) > 0.995
    # two worker processes (each loads the network once) write the same files
    other = str(tmp_path / "exp2")
    os.makedirs(other)
    for name in ("predictions", "models"):
        os.symlink(os.path.join(pred, name), os.path.join(other, name))
    assert run_main(convert, argv(root, other, "--num_workers", "2"))["written"] == 6
    for image_id in layout.ids:
        np.testing.assert_array_equal(
            read_mask(os.path.join(pseudo_labels_dir(other, TAG + "@rw", "train_aug"), image_id + ".png")),
            read_mask(os.path.join(mask_dir, image_id + ".png")),
        )


def test_rw_crf_refines_the_walked_scores_with_the_dense_crf(setup, tmp_path):
    root, pred, layout, net = setup
    other = str(tmp_path / "exp")
    os.makedirs(other)
    for name in ("predictions", "models"):
        os.symlink(os.path.join(pred, name), os.path.join(other, name))
    summary = run_main(convert, argv(root, other, "--num_workers", "1", "--exp_times", "3", "--rw_crf", "true"))
    assert summary["written"] == 6 and not summary["failed"]
    mask_dir = pseudo_labels_dir(other, TAG + "@rw", "train_aug")
    agreement, changed = [], []
    for image_id in layout.ids:
        seed = load_seed(os.path.join(predictions_dir(pred, TAG, "train_aug"), image_id + ".pkl"))
        image = layout.read_image(image_id)
        planes = seed["seed"].astype(np.float64)
        expected = brute_force_mask(net, image, planes, seed["keys"][1:], exp_times=3, crf=True)
        got = read_mask(os.path.join(mask_dir, image_id + ".png"))
        agreement.append((got == expected).mean())
        changed.append((expected != brute_force_mask(net, image, planes, seed["keys"][1:], exp_times=3)).mean())
    assert min(agreement) > 0.995
    assert max(changed) > 0.01  # the CRF did move pixels: the test can tell the two modes apart
    # the record says the CRF was on: the plain walk is refused in this folder without --overwrite
    with pytest.raises(ProjectError, match="crf"):
        run_main(convert, argv(root, other, "--num_workers", "1", "--exp_times", "3"))


def test_problems_are_reported(setup, tmp_path):
    root, pred, layout, _ = setup
    other = str(tmp_path / "exp")
    seeds = predictions_dir(other, TAG, "train_aug")
    os.makedirs(seeds)
    os.symlink(os.path.join(pred, "models"), os.path.join(other, "models"))
    for image_id in layout.ids[1:]:
        os.symlink(
            os.path.join(predictions_dir(pred, TAG, "train_aug"), image_id + ".pkl"),
            os.path.join(seeds, image_id + ".pkl"),
        )
    with open(os.path.join(seeds, layout.ids[0] + ".pkl"), "wb") as f:
        f.write(b"\x80\x04truncated")
    # one bad seed file: the others are written, the bad one listed, exit status 1
    run = subprocess.run(
        [sys.executable, "convert_seed_to_pseudo_masks.py", *argv(root, other, "--num_workers", "1")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1
    assert f"{layout.ids[0]}: {os.path.join(seeds, layout.ids[0] + '.pkl')}" in run.stderr
    assert "wrote 5 masks" in run.stdout
    # no affinity weights, or weights of another backbone: one clear line, nothing written
    with pytest.raises(ProjectError, match="aff-missing/last.pth: affinity weights not found"):
        run_main(convert, argv(root, other)[:-1] + ["aff-missing"])
    with pytest.raises(ProjectError, match=r"last.pth: does not fit AffinityNet"):
        run_main(convert, argv(root, other, "--affinity_backbone", "resnet34"))
    with pytest.raises(ProjectError, match="--mode rw needs --affinity_tag"):
        run_main(convert, argv(root, other)[:-2])


def test_train_seg_takes_the_rw_masks(setup):
    root, pred, layout, _ = setup
    run_main(convert, argv(root, pred, "--num_workers", "1"))
    result = train_seg.main(
        train_seg.get_args_parser().parse_args(
            [
                "--root_dir",
                root,
                "--dataset",
                "TOY",
                "--domain",
                "train_aug",
                "--gpus",
                "cpu",
                "--backbone",
                "resnet18",
                "--pretrained",
                "none",
                "--output_stride",
                "16",
                "--crop_size",
                "32",
                "--min_image_size",
                "32",
                "--max_image_size",
                "48",
                "--batch_size",
                "6",
                "--num_workers",
                "0",
                "--max_epoch",
                "1",
                "--label_tag",
                TAG + "@rw",
                "--pred_dir",
                pred,
            ]
        )
    )
    assert result["iterations"] == 1 and os.path.isfile(result["weights"])


def test_rw_masks_of_other_walk_settings_are_refused_unless_overwrite(setup, tmp_path):
    root, pred, layout, _ = setup
    other = str(tmp_path / "exp")
    os.makedirs(os.path.dirname(predictions_dir(other, TAG, "train_aug")))
    os.symlink(predictions_dir(pred, TAG, "train_aug"), predictions_dir(other, TAG, "train_aug"))
    os.symlink(os.path.join(pred, "models"), os.path.join(other, "models"))
    assert run_main(convert, argv(root, other, "--exp_times", "2", "--num_workers", "1"))["written"] == 6
    # the same settings resume (nothing to do); other settings would mix two walks in one folder
    assert run_main(convert, argv(root, other, "--exp_times", "2", "--num_workers", "1"))["written"] == 0
    with pytest.raises(ProjectError, match="exp_times"):
        run_main(convert, argv(root, other, "--exp_times", "3", "--num_workers", "1"))
    summary = run_main(convert, argv(root, other, "--exp_times", "3", "--num_workers", "1", "--overwrite", "true"))
    assert summary["written"] == 6


@pytest.mark.parametrize("crop, canvas", [(64, 64), (96, 96), (512, 512), (640, 640), (None, 512), ("96", 512)])
def test_the_canvas_is_the_networks_own_training_crop(tmp_path, crop, canvas):
    """IRN pads to the crop it trained on; no (or no usable) record: 512, the published crop."""
    from types import SimpleNamespace

    from tools.seeds.rw_convert import affinity_canvas

    if crop is not None:
        write_json(os.path.join(model_dir(str(tmp_path), "aff"), "config.json"), {"args": {"crop_size": crop}})
    args = SimpleNamespace(pred_dir=str(tmp_path), affinity_tag="aff", affinity_weights="", affinity_backbone="")
    assert affinity_canvas(args) == canvas


def test_the_canvas_of_weights_given_by_path_is_read_beside_them(tmp_path):
    from types import SimpleNamespace

    from tools.seeds.rw_convert import affinity_canvas

    weights = tmp_path / "elsewhere" / "last.pth"
    weights.parent.mkdir()
    weights.write_bytes(b"x")
    args = SimpleNamespace(
        pred_dir=str(tmp_path), affinity_tag="aff", affinity_weights=str(weights), affinity_backbone=""
    )
    assert affinity_canvas(args) == 512  # foreign weights: nothing recorded beside them
    write_json(str(tmp_path / "elsewhere" / "config.json"), {"args": {"crop_size": 96}})
    assert affinity_canvas(args) == 96
