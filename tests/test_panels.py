"""TensorBoard panels, IoU tables and hparams (issue 22 item 1): the colour helpers against hand
values, then 2-epoch toy runs of each training script read back with tensorboard's
EventAccumulator: the tags, sizes and steps of the images, that the learned maps change between
epochs, that --vis_images 0 writes none, the IoU text and the flags as hparams."""

import io
import os

import numpy as np
import pytest
from helpers import run_main
from PIL import Image
from scipy.ndimage import uniform_filter
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

import train_affinity
import train_rsepm
import train_seg
from core.dataset_layout import SeedLayout, load_dataset_info, normalize_image
from core.errors import UsageError
from core.io import IGNORE_COLOR, read_mask, save_mask, save_seed
from tools import drawing
from tools.engine import panels
from tools.paths import model_dir, predictions_dir, pseudo_labels_dir
from tools.pool import set_threads
from tools.seeds.relation_cache import ir_labels_dir

INFO = load_dataset_info("TOY")
COMMON = [
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
    "--num_workers",
    "0",
    "--log_interval",
    "1",
    "--max_epoch",
    "2",
]
IMAGE_FLAGS = ["--crop_size", "32", "--min_image_size", "32", "--max_image_size", "64", "--batch_size", "4"]


@pytest.fixture(scope="module")
def toy(toy_dataset):
    return toy_dataset(num_validation=3)


def events(pred_dir, tag):
    acc = EventAccumulator(
        os.path.join(model_dir(str(pred_dir), tag), "logs"), size_guidance={"images": 0, "tensors": 0, "scalars": 0}
    )
    return acc.Reload()


def images(acc):
    """tag -> [(step, RGB uint8 array)]."""
    return {
        tag: [
            (e.step, np.array(Image.open(io.BytesIO(e.encoded_image_string)).convert("RGB"))) for e in acc.Images(tag)
        ]
        for tag in acc.Tags()["images"]
    }


def jpeg(root, split, image_id):
    return np.array(Image.open(os.path.join(root, split, "image", image_id + ".jpg")).convert("RGB"))


def palette_colours(labels):
    return {tuple(INFO.colors[c]) if c != 255 else tuple(IGNORE_COLOR) for c in labels}


def colours(image):
    return {tuple(int(v) for v in c) for c in np.unique(image.reshape(-1, 3), axis=0)}


# --- colours, hand-worked -----------------------------------------------------------------------
def test_colour_helpers_against_hand_values():
    labels = np.array([[0, 1], [255, 2]], np.uint8)
    out = drawing.colorize(labels, INFO.palette)
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    assert [tuple(out[0, 0]), tuple(out[0, 1]), tuple(out[1, 0]), tuple(out[1, 1])] == [
        tuple(INFO.colors[0]),
        tuple(INFO.colors[1]),
        (224, 224, 192),
        tuple(INFO.colors[2]),
    ]
    # jet: dark blue (0), blue (1/8), cyan (3/8), yellow (5/8), red (7/8), dark red (1); NaN counts as 0
    hot = drawing.heat(np.array([[0.0, 0.125, 0.375, 0.625, 0.875, 1.0, np.nan]]))
    assert [tuple(int(v) for v in hot[0, i]) for i in range(7)] == [
        (0, 0, 128),
        (0, 0, 255),
        (0, 255, 255),
        (255, 255, 0),
        (255, 0, 0),
        (128, 0, 0),
        (0, 0, 128),
    ]
    grey = np.full((1, 2, 3), 100, np.uint8)
    assert drawing.overlay(grey, np.array([[0.0, 1.0]])).tolist() == [[[50, 50, 114], [114, 50, 50]]]
    image = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    assert np.array_equal(panels.denormalize(normalize_image(image)), image)
    table = panels.iou_table(np.array([0.5, np.nan, 0.123]), ["background", "a", "b"])
    assert table.splitlines() == [
        "| class | IoU (%) |",
        "|---|---|",
        "| background | 50.0 |",
        "| a | n/a |",
        "| b | 12.3 |",
    ]


def test_large_images_are_shrunk_to_the_panel_side():
    big = np.zeros((600, 1024, 3), np.uint8)
    assert panels.shrink(big, Image.BOX).shape == (300, 512, 3)
    assert panels.shrink(np.zeros((40, 50), np.uint8), Image.BOX).shape == (40, 50)


# --- drawing, against brute force and hand-worked layouts ------------------------------------------
def test_outline_matches_a_brute_force_loop():
    rng = np.random.default_rng(3)
    region = uniform_filter(rng.random((17, 23)), 5) > 0.5
    image = rng.integers(0, 256, (17, 23, 3), dtype=np.uint8)
    out = drawing.outline(image, region)
    expected = image.copy()
    for y in range(17):
        for x in range(23):
            near = [
                bool(region[v, u]) if 0 <= v < 17 and 0 <= u < 23 else None
                for v, u in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1))
            ]
            if region[y, x] and any(n is False for n in near):  # inside, touching outside (not the border)
                expected[y, x] = (0, 0, 0)
            elif not region[y, x] and any(n is True for n in near):  # outside, touching the region
                expected[y, x] = drawing.OUTLINE
    assert np.array_equal(out, expected) and region.any() and (~region).any()


def test_legend_entries_and_strip():
    maps = [np.array([[0, 3], [255, 3]], np.uint8), None, np.array([[2]], np.uint8)]
    entries = drawing.legend_entries(maps, INFO.palette, INFO.class_names, always=(0, 4))
    assert entries == [(INFO.class_names[c], tuple(INFO.colors[c])) for c in (0, 2, 3, 4)] + [
        ("ignore", tuple(IGNORE_COLOR))
    ]
    strip = drawing.legend_strip(entries, 400)
    assert strip.shape[1] == 400 and strip.dtype == np.uint8
    for name, colour in entries:  # every swatch: a SWATCH x SWATCH square of exactly its colour
        hit = np.all(strip == np.array(colour, np.uint8), axis=-1)
        assert hit.sum() >= (drawing.SWATCH - 2) ** 2, name
    narrow = drawing.legend_strip(entries, 120)  # wraps onto more lines, keeps every swatch
    assert narrow.shape[0] > strip.shape[0] and narrow.shape[1] == 120


def test_composite_layout():
    tiles = [(f"t{k}", np.full((30, 40, 3), 10 * k, np.uint8)) for k in range(8)]
    picture = drawing.composite(tiles, columns=3)
    P, T = drawing.PAD, drawing.TITLE_HEIGHT
    assert picture.shape == (P + 3 * (T + 30 + P), P + 3 * (40 + P), 3)
    for k in range(8):  # tile k at row k // 3, column k % 3, under its title
        y, x = P + (k // 3) * (T + 30 + P) + T, P + (k % 3) * (40 + P)
        assert np.all(picture[y : y + 30, x : x + 40] == 10 * k), k
    stripes = np.zeros((600, 300, 3), np.uint8)
    stripes[::2] = (200, 10, 10)  # a label map of one-pixel stripes: an area filter would mix them
    small = lambda labels: drawing.composite([("t", stripes, labels)])[P + T : P + T + 256, P : P + 128]  # noqa: E731
    assert colours(small(True)) == {(0, 0, 0), (200, 10, 10)} and len(colours(small(False))) > 2
    big = drawing.composite([("big", np.zeros((600, 300, 3), np.uint8))], [("a", (1, 2, 3))])
    strip = drawing.legend_strip([("a", (1, 2, 3))], P + 128 + P)
    assert big.shape[1] == P + 128 + P and np.array_equal(big[-strip.shape[0] :], strip)


def test_default_picks_spread_over_the_classes():
    class Layout:
        split_dir, info = "x", type("I", (), {"num_classes": 5})()

        def read_tags(self, image_id, required=None):
            return {"a": [1], "b": [1], "c": [1, 2], "d": [3], "e": [], "f": [4, 1]}[image_id]

    order = panels.spread_over_classes(Layout(), list("abcdef"), 4)
    # a (first); then the first image with an unshown tag: c (2); then d (3); then f (4); the rest follow
    assert order == list("acdfbe")
    assert panels.spread_over_classes(Layout(), list("abcdef"), 6)[-1] == "e"  # untagged last


def test_mix_panel_is_this_image_with_the_partners_region_pasted_and_outlined():
    """mix_parts on a stub step whose mix labels give the partner a known rectangle of class 2: the
    picture is this pick's image outside the rectangle, the partner's inside, outlined on its border;
    the title counts the rectangle's pixels; the target is this pick's labels with the rectangle."""
    import torch

    from core.rsepm import RSEPMConfig

    rng = np.random.default_rng(0)
    shape = (16, 20)
    images = [rng.integers(0, 256, (*shape, 3), dtype=np.uint8) for _ in range(2)]
    picks = [panels.Pick(f"p{k}", im, normalize_image(im), [k + 1]) for k, im in enumerate(images)]
    box = (slice(4, 11), slice(6, 15))  # the partner's region: 7 x 9 pixels

    class Step:
        config, teacher = RSEPMConfig(mix="epm"), None

        @staticmethod
        def network(x, with_features=None):
            return {"seg": torch.zeros(x.shape[0], INFO.num_classes, *x.shape[-2:])}

        @staticmethod
        def recur_seed(x, source, tags):
            return torch.zeros(x.shape[0], INFO.num_foreground, *x.shape[-2:])

        @staticmethod
        def mix_labels(x, seg, tags):
            labels = torch.zeros(x.shape[0], *x.shape[-2:], dtype=torch.long)
            labels[0, :3, :3] = 1  # this pick's own foreground stays under the paste's outside
            labels[1][box] = 2
            return labels

    drawing = panels.RSEPMPanels(Step, picks, INFO, torch.device("cpu"))
    (_, mixed), (_, target) = drawing.mix_parts(picks[0])
    region = np.zeros(shape, bool)
    region[box] = True
    assert mixed.title == f"mix + p1: {region.sum()} px"
    ring = np.zeros(shape, bool)  # the outline: the region's edge and the pixels just outside it
    ring[3:12, 5:16] = True
    ring[5:10, 7:14] = False
    ring[[3, 3, 11, 11], [5, 15, 5, 15]] = False  # 4-neighbour outline: the diagonal corners are not on it
    assert np.array_equal(mixed.picture[~ring & ~region], images[0][~ring & ~region])
    assert np.array_equal(mixed.picture[region & ~ring], images[1][region & ~ring])
    assert np.all(mixed.picture[region & ring] == 0) and np.all(mixed.picture[ring & ~region] == 255)
    expected = np.zeros(shape, np.uint8)
    expected[:3, :3], expected[box] = 1, 2
    assert np.array_equal(target.labels, expected)


# --- train_rsepm.py -------------------------------------------------------------------------------
def classes_shown(picture):
    """Class indices (and 255) whose palette colour appears in an RGB label picture."""
    lookup = {tuple(INFO.colors[c]): c for c in range(INFO.num_classes)}
    lookup[tuple(IGNORE_COLOR)] = 255
    return {lookup[c] for c in colours(picture) if c in lookup}


def composite_size(shape, tiles):
    """(H, W) of a composite of `tiles` tiles of an image of `shape` (smaller than TILE_SIDE), legend
    excluded."""
    P, T, C = drawing.PAD, drawing.TITLE_HEIGHT, drawing.COLUMNS
    rows = -(-tiles // C)
    return P + rows * (T + shape[0] + P), P + min(tiles, C) * (shape[1] + P)


def check_composite(picture, shape, tiles, legend_classes):
    """Size, tile grid and the legend strip (exactly the strip of `legend_classes`) of a composite."""
    height, width = composite_size(shape, tiles)
    names = {255: "ignore", **dict(enumerate(INFO.class_names))}
    strip = drawing.legend_strip(
        [(names[c], tuple(IGNORE_COLOR) if c == 255 else tuple(INFO.colors[c])) for c in sorted(legend_classes)], width
    )
    assert picture.shape == (height + strip.shape[0], width, 3)
    assert np.array_equal(picture[height:], strip)


def test_rsepm_panels_text_and_hparams(toy, tmp_path):
    pred = tmp_path / "exp"
    layout = SeedLayout(toy, "validation", INFO)
    ids = layout.ids[1:3]  # chosen by --vis_ids
    run_main(
        train_rsepm,
        [
            "--root_dir",
            toy,
            *COMMON,
            *IMAGE_FLAGS,
            "--rs_start",
            "2",
            "--mix_start",
            "2",
            "--pamr_iterations",
            "2",
            "--pamr_dilations",
            "1,2",
            "--pred_dir",
            str(pred),
            "--val_every",
            "1",
            "--val_images",
            "3",
            "--vis_ids",
            ",".join(ids),
            "--tag",
            "r",
        ],
    )
    acc = events(pred, "r")
    got = images(acc)
    expected = {}
    for image_id in ids:
        names = [INFO.class_names[c] for c in layout.read_tags(image_id)]
        assert names
        expected[f"panels/{image_id}"] = [2, 4]  # each validation (2 iterations per epoch)
        expected[f"parts/{image_id}/image"] = [2]  # drawn once
        expected[f"parts/{image_id}/ground_truth"] = [2]
        expected[f"parts/{image_id}/seed"] = [2, 4]
        for name in names:
            expected[f"parts/{image_id}/cam_{name}"] = [2, 4]
            expected[f"parts/{image_id}/scg_{name}"] = [4]  # RecurSeed from epoch 2
        expected[f"parts/{image_id}/rs_target"] = [4]
        expected[f"parts/{image_id}/mix_image"] = [4]  # the mix from epoch 2
        expected[f"parts/{image_id}/mix_target"] = [4]
    assert {tag: [s for s, _ in got[tag]] for tag in got} == expected

    for image_id, partner in zip(ids, ids[::-1]):
        image = jpeg(toy, "validation", image_id)
        part = lambda name, k=0: got[f"parts/{image_id}/{name}"][k][1]  # noqa: E731
        assert np.array_equal(part("image"), image)  # lossless, the file's pixels
        for tag, drawn in got.items():
            if tag.startswith(f"parts/{image_id}/"):
                assert all(a.shape == image.shape for _, a in drawn), tag
        tags = layout.read_tags(image_id)
        assert np.array_equal(
            part("ground_truth"),
            np.array(Image.open(os.path.join(toy, "validation", "mask", image_id + ".png")).convert("RGB")),
        )
        assert colours(part("seed", -1)) <= palette_colours([0, *tags])
        assert colours(part("rs_target")) <= palette_colours([0, 255, *tags])
        name = INFO.class_names[tags[0]]
        first, second = part(f"cam_{name}", 0), part(f"cam_{name}", 1)
        assert not np.array_equal(first, second)  # the CAM moved with one epoch of training
        mix_classes = [0, 255, *tags, *layout.read_tags(partner)]
        assert classes_shown(part("mix_target")) <= set(mix_classes)

        # the composite: image, ground truth, a CAM and an SCG per tag, RS target, seed, mix, mix target
        (_, before), (_, after) = got[f"panels/{image_id}"]
        shown = set().union(
            *(classes_shown(part(n)) for n in ("ground_truth", "rs_target", "mix_target")),
            classes_shown(part("seed", -1)),
        )
        check_composite(after, image.shape, 6 + 2 * len(tags), shown | {0, *tags})
        shown_before = classes_shown(part("ground_truth")) | classes_shown(part("seed", 0))
        check_composite(before, image.shape, 3 + len(tags), shown_before | {0, *tags})  # epoch 1: no RS, no mix
        P, T = drawing.PAD, drawing.TITLE_HEIGHT
        assert np.array_equal(before[P + T : P + T + image.shape[0], P : P + image.shape[1]], image)  # tile 1
        assert not np.array_equal(
            before[: composite_size(image.shape, 3 + len(tags))[0]],
            after[: composite_size(image.shape, 3 + len(tags))[0], : before.shape[1]],
        )

    texts = acc.Tensors("val/seed_IoU/text_summary")
    assert [t.step for t in texts] == [2, 4]
    table = texts[-1].tensor_proto.string_val[0].decode()
    rows = [line.split(" | ")[0][2:] for line in table.splitlines()[4:]]
    assert table.startswith("threshold 0.") and rows == INFO.class_names

    content = acc.PluginTagToContent("hparams")
    start = HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["vis_images"].number_value == 2 and start.hparams["mix"].string_value == "epm"
    assert start.hparams["pamr_dilations"].string_value == "[1, 2]"
    experiment = HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    metrics = {m.name.tag for m in experiment.metric_infos}
    assert {"train/val_seed_mIoU", "train/total", "train/pasted_pixels"} <= metrics
    assert all(tag in acc.Tags()["scalars"] for tag in metrics)  # the plugin reads their last values


def test_vis_ids_outside_the_split_is_refused(toy, tmp_path):
    with pytest.raises(UsageError, match="no_such_image"):
        run_main(
            train_rsepm,
            [
                "--root_dir",
                toy,
                *COMMON,
                *IMAGE_FLAGS,
                "--pred_dir",
                str(tmp_path),
                "--mix",
                "none",
                "--val_every",
                "1",
                "--vis_ids",
                "no_such_image",
                "--tag",
                "v",
            ],
        )


def test_rsepm_without_validation_draws_training_images_each_epoch_and_zero_draws_none(toy, tmp_path):
    pred = tmp_path / "exp"
    argv = ["--root_dir", toy, *COMMON, *IMAGE_FLAGS, "--max_epoch", "1", "--mix", "none", "--pred_dir", str(pred)]
    run_main(train_rsepm, argv + ["--vis_images", "1", "--tag", "one"])
    first = SeedLayout(toy, "train_aug", INFO).ids[0]  # the first pick of the spread
    got = images(events(pred, "one"))
    assert {tag.split("/")[1] for tag in got} == {first} and [s for s, _ in got[f"panels/{first}"]] == [2]
    run_main(train_rsepm, argv + ["--vis_images", "0", "--tag", "none"])
    acc = events(pred, "none")
    assert acc.Tags()["images"] == [] and "train/total" in acc.Tags()["scalars"]


# --- train_seg.py ---------------------------------------------------------------------------------
def test_seg_panels(toy, tmp_path):
    pred = tmp_path / "exp"
    out = pseudo_labels_dir(str(pred), "labels", "train_aug")
    os.makedirs(out)
    ids = SeedLayout(toy, "train_aug", INFO).ids
    for image_id in ids:  # the ground truth without its ignore band: a pseudo mask that differs from it
        gt = read_mask(os.path.join(toy, "train_aug", "mask", image_id + ".png"))
        save_mask(os.path.join(out, image_id + ".png"), np.where(gt == 255, 0, gt).astype(np.uint8), INFO.palette)
    run_main(
        train_seg,
        [
            "--root_dir",
            toy,
            *COMMON,
            *IMAGE_FLAGS,
            "--label_tag",
            "labels",
            "--output_stride",
            "16",
            "--pred_dir",
            str(pred),
            "--val_every",
            "1",
            "--val_images",
            "2",
            "--vis_images",
            "1",
            "--tag",
            "s",
        ],
    )
    acc = events(pred, "s")
    got = images(acc)
    first = ids[0]  # the pseudo masks exist for the training split only: panels come from it
    assert {tag: [s for s, _ in got[tag]] for tag in got} == {
        f"panels/{first}": [2, 4],
        f"parts/{first}/image": [2],
        f"parts/{first}/pseudo_mask": [2],
        f"parts/{first}/ground_truth": [2],
        f"parts/{first}/prediction": [2, 4],
        f"parts/{first}/foreground": [2, 4],
    }
    image = jpeg(toy, "train_aug", first)
    assert all(a.shape == image.shape for tag, drawn in got.items() if tag.startswith("parts/") for _, a in drawn)
    part = lambda name, k=0: got[f"parts/{first}/{name}"][k][1]  # noqa: E731
    for name, path in (
        ("pseudo_mask", os.path.join(out, first + ".png")),
        ("ground_truth", os.path.join(toy, "train_aug", "mask", first + ".png")),
    ):
        in_file = np.array(Image.open(path).convert("RGB"))  # each file's own palette
        assert np.array_equal(part(name), in_file), name
    assert not np.array_equal(part("pseudo_mask"), part("ground_truth"))
    assert all(colours(a) <= palette_colours(range(INFO.num_classes)) for _, a in got[f"parts/{first}/prediction"])
    before, after = part("foreground", 0), part("foreground", 1)  # the argmax of 2 toy epochs may not move yet
    assert not np.array_equal(before, after)
    for k, (_, picture) in enumerate(got[f"panels/{first}"]):  # image | pseudo mask | gt | prediction | fg
        shown = (
            {0}
            | classes_shown(part("pseudo_mask"))
            | classes_shown(part("ground_truth"))
            | classes_shown(part("prediction", k))
        )
        check_composite(picture, image.shape, 5, shown)
    assert [t.step for t in acc.Tensors("val/IoU/text_summary")] == [2, 4]


# --- train_affinity.py ----------------------------------------------------------------------------
def test_affinity_panels(toy_dataset, tmp_path):
    root, pred, seed_tag = toy_dataset(), str(tmp_path / "exp"), "seeds"
    layout = SeedLayout(root, "train_aug", INFO)
    for image_id in layout.ids:  # seeds of the ground-truth classes: blurred class planes
        gt = layout.read_mask(image_id)
        classes = sorted(int(c) for c in np.unique(gt) if 0 < c < 255)
        planes = np.stack([uniform_filter((gt == c).astype(np.float32), 5) for c in classes])
        save_seed(
            os.path.join(predictions_dir(pred, seed_tag, "train_aug"), image_id + ".pkl"),
            [0] + classes,
            planes,
            "rsepm",
        )
    run_main(
        train_affinity,
        [
            "--root_dir",
            root,
            *COMMON,
            "--crop_size",
            "64",
            "--rw_radius",
            "5",
            "--batch_size",
            "4",
            "--seed_tag",
            seed_tag,
            "--ir_crf",
            "false",
            "--lr",
            "0.5",
            "--pred_dir",
            pred,
            "--vis_images",
            "2",
            "--tag",
            "a",
        ],
    )
    got = images(events(pred, "a"))
    expected = {}
    for image_id in panels.spread_over_classes(layout, layout.ids, 2)[:2]:
        expected.update(
            {
                f"panels/{image_id}": [2, 4],
                f"parts/{image_id}/image": [2],
                f"parts/{image_id}/relation_labels": [2],
                f"parts/{image_id}/boundary": [2, 4],
            }
        )
        (_, before), (_, after) = got[f"parts/{image_id}/boundary"]
        image = jpeg(root, "train_aug", image_id)
        assert before.shape == image.shape and not np.array_equal(before, after)
        labels = got[f"parts/{image_id}/relation_labels"][0][1]
        in_file = os.path.join(ir_labels_dir(pred, seed_tag, "train_aug"), image_id + ".png")
        assert np.array_equal(labels, np.array(Image.open(in_file).convert("RGB")))
        (_, first), (_, second) = got[f"panels/{image_id}"]
        check_composite(first, image.shape, 3, {0} | classes_shown(labels))
        assert not np.array_equal(first, second)
    assert {tag: [s for s, _ in got[tag]] for tag in got} == expected


def test_vis_images_is_range_checked(capsys):
    with pytest.raises(SystemExit):
        train_seg.get_args_parser().parse_args(["--label_tag", "x", "--vis_images", "65"])
    assert "--vis_images" in capsys.readouterr().err


def test_panels_leave_forked_workers_able_to_start(toy):
    """Drawing in the main process must not leave a thread pool that a forked worker then waits
    on forever (OpenCV's resize did, in tools/pool.py's set_threads): a worker pool started after
    the panel helpers have run (large image, mask, heat map) runs and returns."""
    import multiprocessing

    panels.shrink(np.random.default_rng(0).integers(0, 256, (900, 1200, 3), dtype=np.uint8), Image.BOX)
    image_id = SeedLayout(toy, "train_aug", INFO).ids[0]
    assert panels.read_label_map(os.path.join(toy, "train_aug", "mask", image_id + ".png"), (20, 30)).shape == (20, 30)
    drawing.heat(np.random.default_rng(1).random((300, 400)))
    with multiprocessing.get_context("fork").Pool(1, initializer=set_threads, initargs=(1,)) as pool:
        assert pool.apply_async(abs, (-3,)).get(timeout=60) == 3


def test_vis_images_may_change_on_resume():
    """How a run reports, not what it learns: resume.pth does not record it."""
    from tools.engine.resume_state import run_settings

    args = train_seg.get_args_parser().parse_args(["--label_tag", "x", "--vis_images", "7"])
    assert "vis_images" not in run_settings(args) and "lr" in run_settings(args)
