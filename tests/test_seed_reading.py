"""tools/seeds/seed_jobs.py: the checks every conversion of seed files shares (size against the image,
class range), and the processing order of seed_inputs."""

import argparse
import os

import numpy as np
import pytest

from core.dataset_layout import SeedLayout, load_dataset_info
from core.errors import FormatError, MissingFileError
from core.io import save_seed
from tools.paths import predictions_dir
from tools.seeds.seed_jobs import read_foreground, seed_inputs

INFO = load_dataset_info("TOY")


@pytest.fixture(scope="module")
def toy(toy_dataset):
    root = toy_dataset(seed=4, num_train=3, num_train_aug=3, max_size=56)
    return root, SeedLayout(root, "train", INFO)


def test_read_foreground_returns_the_planes_and_refuses_misfits(toy, tmp_path):
    root, layout = toy
    image_id = layout.ids[0]
    height, width = layout.read_image(image_id).shape[:2]
    planes = np.random.default_rng(0).uniform(size=(2, height, width)).astype(np.float32)
    good = str(tmp_path / "good.pkl")
    save_seed(good, [0, 1, 5], planes, "rsepm")
    got, keys, image = read_foreground(good, None, layout, image_id, INFO.num_classes)
    np.testing.assert_array_equal(got, planes)
    assert keys.tolist() == [1, 5] and image.shape == (height, width, 3)
    # a real background channel of the seg dialect is dropped
    seg = str(tmp_path / "seg.pkl")
    save_seed(seg, [0, 3], planes, "seg")
    got, keys, _ = read_foreground(seg, None, layout, image_id, INFO.num_classes)
    np.testing.assert_array_equal(got, planes[1:])
    assert keys.tolist() == [3]
    small = str(tmp_path / "small.pkl")
    save_seed(small, [0, 1], planes[:1, :-1], "rsepm")
    with pytest.raises(
        FormatError,
        match=rf"small.pkl: seed size {width}x{height - 1} differs from its "
        rf"image {width}x{height}",
    ):
        read_foreground(small, None, layout, image_id, INFO.num_classes)
    outside = str(tmp_path / "outside.pkl")
    save_seed(outside, [0, 1, INFO.num_classes], planes, "rsepm")
    with pytest.raises(
        FormatError,
        match=rf"outside.pkl: class indices \[1, {INFO.num_classes}\] outside "
        rf"1..{INFO.num_classes - 1}",
    ):
        read_foreground(outside, None, layout, image_id, INFO.num_classes)


def test_seed_inputs_order_and_missing_folder(toy, tmp_path):
    root, layout = toy
    args = argparse.Namespace(
        root_dir=root,
        domain="train",
        single=False,
        reverse=False,
        max_image_pixels=1e8,
        pred_dir=str(tmp_path),
        folder="predictions",
        tag="t",
    )
    with pytest.raises(MissingFileError, match="seed folder not found"):
        seed_inputs(args, INFO)
    os.makedirs(predictions_dir(str(tmp_path), "t", "train"))
    _, seed_dir, ids = seed_inputs(args, INFO)
    assert ids == layout.ids and seed_dir == predictions_dir(str(tmp_path), "t", "train")
    args.reverse = True
    assert seed_inputs(args, INFO)[2] == layout.ids[::-1]
    args.single, args.reverse = True, False
    one_tag = [i for i in layout.ids if len(layout.read_tags(i, required=True)) == 1]
    assert seed_inputs(args, INFO)[2] == one_tag
