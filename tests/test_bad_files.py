"""One corrupt training image is a counted skip in every trainer (core/train_datasets.py): the run
finishes, saves its weights, then ends with DatasetError naming the file (TrainingRun.raise_if_skipped);
every kind of bad file (a decompression bomb, too many pixels, a truncated JPEG, an xml with inf) is
listed once, with or without loader workers."""

import os
import shutil

import numpy as np
import pytest
from helpers import quick_rsepm_argv, read_run_log, run_main
from scipy.ndimage import uniform_filter

import train_affinity
import train_rsepm
import train_seg
from core.dataset_layout import SeedLayout, load_dataset_info
from core.errors import DatasetError
from core.io import save_seed
from tools.paths import model_dir, model_path, predictions_dir
from tools.seeds import relation_cache

SEED_TAG = "ResNet18@TOY@RS+EPM@gt-seeds"
INFO = load_dataset_info("TOY")


def test_a_corrupt_training_image_is_skipped_and_counted_by_every_trainer(toy_dataset, tmp_path):
    root, pred = str(tmp_path / "TOY"), str(tmp_path / "exp")
    shutil.copytree(toy_dataset(max_size=48), root)
    layout = SeedLayout(root, "train_aug", INFO)
    # train_affinity's seeds (blurred ground-truth planes) and their relation-label maps, made while
    # every image is good: the cache then holds a map for the image corrupted below
    for image_id in layout.ids:
        gt = layout.read_mask(image_id)
        classes = sorted(int(c) for c in np.unique(gt) if 0 < c < 255)
        planes = (
            np.stack([uniform_filter((gt == c).astype(np.float32), 5) for c in classes])
            if classes
            else np.zeros((0,) + gt.shape, np.float32)
        )
        save_seed(
            os.path.join(predictions_dir(pred, SEED_TAG, "train_aug"), image_id + ".pkl"),
            [0] + classes,
            planes,
            "rsepm",
        )
    relation_cache.make_ir_labels(
        layout,
        predictions_dir(pred, SEED_TAG, "train_aug"),
        relation_cache.ir_labels_dir(pred, SEED_TAG, "train_aug"),
        SEED_TAG,
        INFO.palette,
        crf=False,
        num_workers=0,
        progress=False,
    )
    tagged = [i for i in layout.ids if layout.read_tags(i)]
    bad = layout.image_path(tagged[0])
    with open(bad, "r+b") as f:
        f.truncate(os.path.getsize(bad) * 2 // 3)  # a JPEG cut short: the header reads, the pixels do not

    # one epoch of one batch holding every image each trainer keeps, so the bad one is met once
    common = [
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
        "--crop_size",
        "32",
        "--num_workers",
        "0",
        "--max_epoch",
        "1",
        "--vis_images",
        "0",
        "--pred_dir",
        pred,
    ]
    image_flags = ["--min_image_size", "32", "--max_image_size", "48"]
    runs = {
        "rsepm": (
            train_rsepm,
            image_flags
            + [
                "--batch_size",
                str(len(tagged)),
                "--rs_start",
                "1",
                "--mix",
                "none",
                "--pamr_iterations",
                "1",
                "--pamr_dilations",
                "1",
            ],
        ),
        "seg": (train_seg, image_flags + ["--batch_size", str(len(layout.ids)), "--label_tag", "gt"]),
        "affinity": (
            train_affinity,
            ["--batch_size", str(len(layout.ids)), "--seed_tag", SEED_TAG, "--rw_radius", "4", "--ir_crf", "false"],
        ),
    }
    for tag, (script, flags) in runs.items():
        with pytest.raises(DatasetError) as info:
            run_main(script, common + flags + ["--tag", tag])
        message = str(info.value)
        assert f"saved {model_path(pred, tag)}, but skipped 1 bad file(s): {bad}: " in message, (tag, message)
        assert "truncated" in message and "(2x)" not in message, (tag, message)
        assert os.path.isfile(model_path(pred, tag)), tag


@pytest.fixture(scope="module")
def toy(toy_dataset):
    return toy_dataset(max_size=48)


def png_header(width, height):
    """The first bytes of a PNG that claims width x height (no pixel data follows)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


@pytest.mark.parametrize("workers", [0, 1])  # 1: the dataset sits under build_loader's worker wrapper
def test_bad_files_are_skipped_counted_and_listed_after_the_weights_are_saved(toy, tmp_path, workers):
    import multiprocessing
    import shutil

    from core.errors import DatasetError

    root = str(tmp_path / "TOY")
    shutil.copytree(toy, root)
    images = os.path.join(root, "train_aug", "image")
    ids = sorted(f[:-4] for f in os.listdir(images))
    with open(os.path.join(images, ids[0] + ".jpg"), "wb") as f:
        f.write(png_header(100_000, 100_000))  # PIL's DecompressionBombError
    with open(os.path.join(images, ids[1] + ".jpg"), "wb") as f:
        f.write(png_header(10_000, 6_000))  # 60 M pixels: above --max_image_pixels 50e6
    path = os.path.join(images, ids[2] + ".jpg")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) * 2 // 3)  # a JPEG cut short: the header reads, the pixels do not
    xml = os.path.join(root, "train_aug", "xml", ids[3] + ".xml")
    with open(xml) as f:
        text = f.read()
    with open(xml, "w") as f:
        f.write(_with_inf(text))
    with pytest.raises(DatasetError) as info:
        # batch 7: the one batch of an epoch holds every tagged image, so each bad one is met
        train_rsepm.main(
            train_rsepm.get_args_parser().parse_args(
                quick_rsepm_argv(
                    root, tmp_path / "out", "--log_interval", "1", "--batch_size", "7", "--num_workers", str(workers)
                )
            )
        )
    message = str(info.value)
    # the error's traceback still holds the loader: its worker must have been ended all the same
    assert not multiprocessing.active_children()
    assert "skipped 4 bad file(s)" in message, message
    for i in ids[:4]:
        assert i in message
    assert "decompression bomb" in message and "more than the limit of 50,000,000 (--max_image_pixels)" in message
    assert "truncated" in message and ids[3] + ".xml: <" in message and "not a finite pixel coordinate" in message
    directory = model_dir(str(tmp_path / "out"), "t")
    assert os.path.isfile(os.path.join(directory, "last.pth"))  # saved before the error
    assert "(2x)" in message  # met in both epochs, listed once
    assert [r["iteration"] for r in read_run_log(tmp_path / "out")] == [1, 2]


def _with_inf(text):
    start = text.index("<xmin>") + len("<xmin>")
    return text[:start] + "inf" + text[text.index("</xmin>") :]
