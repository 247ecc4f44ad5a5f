"""The uint8 seed format across the stages: inference writes (and records) it, and the conversion
of its seeds gives the masks of the float32 seeds. The format itself (round trip within 1/510,
size guards, corrupt files) is checked in test_io.py."""

import os
import pickle

import numpy as np
from mini_data import smooth_planes

from core.io import save_seed


def test_inference_writes_uint8_seeds_and_the_conversion_gives_the_float32_masks(toy_dataset, tmp_path):
    """infer_rsepm --seed_format uint8 writes (and records) the format; the CRF conversion of seeds
    with structure (a trained network's are decisive: 99.997 % equal on the toy run) gives the masks
    of the float32 seeds. A random network's near-uniform planes would flip on every tie."""
    import json

    import torch
    from helpers import run_main

    import convert_seed_to_pseudo_masks as convert
    import infer_rsepm
    from core.dataset_layout import SeedLayout, load_dataset_info
    from core.io import read_json, read_mask
    from core.networks import RSEPM
    from core.weights import save_weights
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
            save_seed(
                os.path.join(predictions_dir(exp, "s", "validation"), image_id + ".pkl"),
                [0, 1, 4],
                smooth_planes(2, h, w, seed=k),
                "rsepm",
                fmt,
            )
        run_main(
            convert,
            common + ["--tag", "s", "--pred_dir", exp, "--folder", "predictions", "--bg_th", "0.5", "--mode", "argmax"],
        )
        out = pseudo_labels_dir(exp, "s", "validation")
        masks[fmt] = np.concatenate([read_mask(os.path.join(out, n)).ravel() for n in sorted(os.listdir(out))])
    assert masks["float32"].size > 1000 and len(np.unique(masks["float32"])) == 3  # background and both classes
    assert (masks["float32"] == masks["uint8"]).mean() > 0.999
