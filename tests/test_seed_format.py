"""The uint8 seed format: planes rounded to multiples of 1/255 and deflated. It reads back within
1/510, the authors' float32 files still read, its size guards hold, and the conversion of its
seeds gives the masks of the float32 seeds."""
import os
import pickle
import zlib

import numpy as np
import pytest

from core.errors import FormatError
from core.io import load_seed, save_seed


def smooth_planes(k=2, h=60, w=80, seed=0):
    """k foreground planes of a softmax over k + 1 smooth logit fields: class probabilities with
    borders a few pixels wide, as a trained network's seeds."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    logits = np.stack([12 * np.sin(6 * x * rng.uniform(0.5, 2) + 4 * y * rng.uniform(0.5, 2) + rng.uniform(0, 6))
                       for _ in range(k + 1)])
    probabilities = np.exp(logits - logits.max(0))
    return (probabilities / probabilities.sum(0))[1:].astype(np.float32)


@pytest.mark.parametrize("fmt, one, dtype", [("uint8", 255, np.uint8), ("uint16", 65535, np.uint16)])
def test_round_trip_within_half_a_step_and_much_smaller(tmp_path, fmt, one, dtype):
    planes = smooth_planes()
    save_seed(tmp_path / "a.pkl", [0, 3, 5], planes, "rsepm")
    save_seed(tmp_path / "b.pkl", [0, 3, 5], planes, "rsepm", fmt)
    a, b = load_seed(tmp_path / "a.pkl"), load_seed(tmp_path / "b.pkl")
    assert a["keys"].tolist() == b["keys"].tolist() == [0, 3, 5] and b["dialect"] == "rsepm"
    assert b["seed"].dtype == np.float32 and b["seed"].shape == planes.shape
    assert np.abs(b["seed"] - planes).max() <= 1 / (2 * one) + 1e-7
    # by hand: the stored bytes are round(one x v), deflated
    with open(tmp_path / "b.pkl", "rb") as f:
        stored = pickle.load(f)
    assert zlib.decompress(stored[f"seed_{fmt}"]) == np.rint(planes.astype(np.float64) * one).astype(dtype).tobytes()
    assert os.path.getsize(tmp_path / "b.pkl") * 2 < os.path.getsize(tmp_path / "a.pkl")
    # the authors' form is what float32 writes: "seed" is the array itself
    with open(tmp_path / "a.pkl", "rb") as f:
        assert np.array_equal(pickle.load(f)["seed"], planes)


def write(path, content):
    with open(path, "wb") as f:
        pickle.dump(content, f, protocol=4)


def test_size_guards_and_corrupt_files(tmp_path):
    keys = np.array([0, 1], np.int64)
    huge = tmp_path / "huge.pkl"  # a few bytes that claim 4 GB of planes
    write(huge, {"keys": keys, "seed_uint8": zlib.compress(b"\0" * 10), "shape": [1, 40000, 25000]})
    with pytest.raises(FormatError, match="decode to more than"):
        load_seed(huge, max_bytes=1 << 30)
    bomb = tmp_path / "bomb.pkl"  # inflates beyond its shape: stopped at the shape
    write(bomb, {"keys": keys, "seed_uint8": zlib.compress(b"\0" * 10_000_000), "shape": [1, 10, 10]})
    with pytest.raises(FormatError, match="for a shape of 100"):
        load_seed(bomb)
    corrupt = tmp_path / "corrupt.pkl"
    write(corrupt, {"keys": keys, "seed_uint8": b"not deflated", "shape": [1, 2, 2]})
    with pytest.raises(FormatError, match="corrupt uint8 seed"):
        load_seed(corrupt)
    shapeless = tmp_path / "shapeless.pkl"
    write(shapeless, {"keys": keys, "seed_uint8": zlib.compress(b"\0" * 4), "shape": "2x2"})
    with pytest.raises(FormatError, match="needs 'shape'"):
        load_seed(shapeless)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        save_seed(tmp_path / "x.pkl", [0, 1], np.full((1, 2, 2), 1.5, np.float32), "rsepm", "uint8")


def test_inference_writes_uint8_seeds_and_the_conversion_gives_the_float32_masks(toy_dataset, tmp_path):
    """infer_rsepm --seed_format uint8 writes (and records) the format; the CRF conversion of seeds
    with structure (a trained network's are decisive: 99.997 % equal on the toy run) gives the masks
    of the float32 seeds. A random network's near-uniform planes would flip on every tie."""
    import json
    import torch
    import convert_seed_to_pseudo_masks as convert
    import infer_rsepm
    from core.weights import save_weights
    from core.dataset_layout import SeedLayout, load_dataset_info
    from core.io import read_json, read_mask
    from core.networks import RSEPM
    from helpers import run_main
    from tools.paths import model_dir, model_path, predictions_dir, pseudo_labels_dir
    root = toy_dataset(num_validation=3)
    pred = str(tmp_path / "infer")
    torch.manual_seed(0)
    save_weights(RSEPM("resnet18", num_classes=6), model_path(pred, "t"))
    with open(os.path.join(model_dir(pred, "t"), "config.json"), "w") as f:
        json.dump({"args": {"backbone": "resnet18"}}, f)
    common = ["--root_dir", root, "--dataset", "TOY", "--domain", "validation", "--num_workers", "0", "--gpus", "cpu"]
    run_main(infer_rsepm, common + ["--tag", "t", "--pred_dir", pred, "--scales", "1.0", "--seed_format", "uint8"])
    assert read_json(predictions_dir(pred, "t", "validation") + ".settings.json")["seed_format"] == "uint8"
    folder = predictions_dir(pred, "t", "validation")
    assert all("seed_uint8" in pickle.load(open(os.path.join(folder, n), "rb")) for n in os.listdir(folder))
    layout = SeedLayout(root, "validation", load_dataset_info("TOY"))
    masks = {}
    for fmt in ("float32", "uint8"):
        exp = str(tmp_path / fmt)
        for k, image_id in enumerate(layout.ids):
            h, w = layout.read_image(image_id).shape[:2]
            save_seed(os.path.join(predictions_dir(exp, "s", "validation"), image_id + ".pkl"), [0, 1, 4],
                      smooth_planes(2, h, w, seed=k), "rsepm", fmt)
        run_main(convert, common + ["--tag", "s", "--pred_dir", exp, "--folder", "predictions", "--bg_th", "0.5",
                                    "--mode", "argmax"])
        out = pseudo_labels_dir(exp, "s", "validation")
        masks[fmt] = np.concatenate([read_mask(os.path.join(out, n)).ravel() for n in sorted(os.listdir(out))])
    assert masks["float32"].size > 1000 and len(np.unique(masks["float32"])) == 3  # background and both classes
    assert (masks["float32"] == masks["uint8"]).mean() > 0.999
