"""Training datasets on a tiny seed layout: skipped images are counted, bad masks are named."""

import os
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from ddp_worker import write_tiny_layout

from core.dataset_layout import DatasetInfo, SeedLayout, parse_xml_tags
from core.errors import DatasetError
from core.io import save_mask
from core.train_datasets import ClassificationDataset, SegmentationDataset
from core.transforms import TrainTransform

INFO = DatasetInfo("TOY")


def small_transform():
    return TrainTransform(crop_size=32, min_size=30, max_size=56)


@pytest.fixture
def layout(tmp_path):
    write_tiny_layout(str(tmp_path / "data"), count=6, untagged=(1, 4))
    return SeedLayout(str(tmp_path / "data"), "train", INFO)


def write_pseudo_masks(layout, folder, ids, size_of=None):
    os.makedirs(folder, exist_ok=True)
    for image_id in ids:
        height, width = (size_of or {}).get(image_id, (40, 48))
        save_mask(os.path.join(folder, image_id + ".png"), np.ones((height, width), np.uint8), INFO.palette)


def test_untagged_images_are_skipped_and_counted(layout):
    dataset = ClassificationDataset(layout, small_transform(), seed=0)
    assert dataset.skipped_untagged == 2
    assert dataset.untagged_ids == ["img_001", "img_004"]
    assert dataset.ids == ["img_000", "img_002", "img_003", "img_005"]
    assert "skipped 2 without tags (img_001, img_004)" in dataset.summary()


def test_classification_item_has_the_xml_tags(layout):
    dataset = ClassificationDataset(layout, small_transform(), seed=0)
    item = dataset[2]
    assert item["id"] == "img_003" and item["index"] == 2
    expected = np.zeros(INFO.num_foreground, np.float32)
    expected[np.array(parse_xml_tags(layout.xml_path("img_003"), INFO.class_dict)) - 1] = 1
    assert torch.equal(item["tags"], torch.from_numpy(expected))
    assert item["image"].shape == (3, 32, 32) and item["valid"].shape == (32, 32)


def test_all_untagged_is_an_error(tmp_path):
    write_tiny_layout(str(tmp_path), count=2, untagged=(0, 1))
    with pytest.raises(DatasetError, match="no usable image"):
        ClassificationDataset(SeedLayout(str(tmp_path), "train", INFO), small_transform())


def test_augmentation_depends_on_seed_epoch_index_only(layout):
    a = ClassificationDataset(layout, small_transform(), seed=3)
    b = ClassificationDataset(layout, small_transform(), seed=3)
    first = a[1]["image"]
    a[0], a[3]  # other samples in between change nothing
    assert torch.equal(a[1]["image"], first) and torch.equal(b[1]["image"], first)
    a.set_epoch(1)
    assert not torch.equal(a[1]["image"], first)
    b.seed = 4
    assert not torch.equal(b[1]["image"], first)


def test_ground_truth_masks_when_no_mask_dir(layout):
    dataset = SegmentationDataset(layout, None, small_transform())
    assert len(dataset) == 6 and dataset.skipped_missing == 0 and dataset.skipped_size_mismatch == 0
    item = dataset[0]
    labels = set(np.unique(layout.read_mask("img_000")).tolist()) | {255}
    assert set(item["mask"].unique().tolist()) <= labels


def test_missing_pseudo_masks_raise_with_count_and_ids(layout, tmp_path):
    folder = str(tmp_path / "pseudo")
    write_pseudo_masks(layout, folder, ["img_000", "img_002", "img_003", "img_005"])
    with pytest.raises(DatasetError) as error:
        SegmentationDataset(layout, folder, small_transform())
    message = str(error.value)
    assert "2 of 6" in message and "img_001, img_004" in message and folder in message


def test_missing_pseudo_masks_skipped_when_allowed(layout, tmp_path):
    folder = str(tmp_path / "pseudo")
    write_pseudo_masks(layout, folder, ["img_000", "img_002", "img_003", "img_005"])
    dataset = SegmentationDataset(layout, folder, small_transform(), allow_missing=True)
    assert dataset.ids == ["img_000", "img_002", "img_003", "img_005"]
    assert dataset.skipped_missing == 2 and dataset.missing_ids == ["img_001", "img_004"]
    assert torch.all(dataset[0]["mask"][dataset[0]["valid"]] == 1)  # read from the pseudo folder


def test_missing_pseudo_folder_is_an_error(layout, tmp_path):
    with pytest.raises(DatasetError, match="pseudo-mask folder not found"):
        SegmentationDataset(layout, str(tmp_path / "nowhere"), small_transform())


def test_size_mismatch_is_excluded_named_and_counted(layout, tmp_path):
    folder = str(tmp_path / "pseudo")
    write_pseudo_masks(layout, folder, layout.ids, size_of={"img_003": (40, 47)})
    dataset = SegmentationDataset(layout, folder, small_transform())
    assert "img_003" not in dataset.ids and len(dataset) == 5
    assert dataset.skipped_size_mismatch == 1
    assert dataset.mismatched == [("img_003", "48x40", "47x40")]
    assert "img_003 (image 48x40, mask 47x40)" in dataset.summary()


def test_out_of_range_label_names_the_file(layout, tmp_path):
    folder = str(tmp_path / "pseudo")
    write_pseudo_masks(layout, folder, layout.ids)
    save_mask(os.path.join(folder, "img_002.png"), np.full((40, 48), 9, np.uint8), INFO.palette)
    dataset = SegmentationDataset(layout, folder, small_transform())
    with pytest.raises(DatasetError, match=r"img_002\.png: label\(s\) \[9\]"):
        dataset.load(2)
    # in a run the item is a skip marker that the collate drops and lists (core/train_datasets.py)
    assert dataset[2]["skip"] == "img_002" and "img_002.png: label(s) [9]" in dataset[2]["problem"]


def test_corrupt_mask_header_names_the_file(layout, tmp_path):
    folder = str(tmp_path / "pseudo")
    write_pseudo_masks(layout, folder, layout.ids)
    with open(os.path.join(folder, "img_005.png"), "wb") as f:
        f.write(b"not a png")
    with pytest.raises(DatasetError, match=r"img_005\.png: corrupt or truncated image"):
        SegmentationDataset(layout, folder, small_transform())


def test_batches_collate_through_workers(layout):
    dataset = SegmentationDataset(layout, None, small_transform())
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, num_workers=2)
    batch = next(iter(loader))
    assert batch["image"].shape == (3, 3, 32, 32) and batch["mask"].shape == (3, 32, 32)
    assert batch["box"].shape == (3, 4) and batch["id"] == ["img_000", "img_001", "img_002"]
    assert torch.equal(batch["image"][1], dataset[1]["image"])  # same crop in a worker


def test_tiny_layout_xml_matches_masks(layout):
    # the helper's annotations are what the tests rely on: tags = classes visible in the mask
    # (an object fully covered by a later one may add a tag without pixels, so check inclusion)
    for image_id in layout.ids:
        tags = set(layout.read_tags(image_id))
        in_mask = set(np.unique(layout.read_mask(image_id)).tolist()) - {0}
        assert in_mask <= tags
        assert ET.parse(layout.xml_path(image_id)).getroot().find("size/width").text == "48"
