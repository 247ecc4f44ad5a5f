"""Throughput of tools/builders/prepare_voc.py and tools/builders/prepare_coco.py on synthetic official layouts.

    python tools/bench/bench_prepare.py --images 300 --num_workers 2 --repeat 3

Builds, in a temporary folder, a VOC 2012 devkit + SegmentationClassAug + VOC2012test and a
COCO 2014 root (train2014, val2014, instances json with polygons, RLE and crowd regions) at the
real image sizes (500x375, 640x480), then times each builder: a cold build with --link copy, a
cold build with --link hardlink, and a re-run on the finished output (everything skipped,
verification only), --repeat times each into fresh folders. Prints files written per second and
images per second (build + verify) from the fastest run, and the median run's time.
"""

import contextlib
import io
import json
import os
import statistics
import sys
import tempfile
import time

import cv2
import numpy as np
from PIL import Image

if __package__ in (None, ""):  # run as a file, python tools/GROUP/NAME.py: the repository root on the import path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from core.dataset_layout import DatasetInfo  # noqa: E402
from tools.args import cli, make_parser, positive_int, str2bool  # noqa: E402
from tools.bench.measure import Machine, run_main, set_threads  # noqa: E402


def smooth_image(rng, height, width):
    """uint8 (H, W, 3) photo-like picture: upsampled colour noise plus grain, so JPEG sizes are realistic."""
    small = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
    image = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    return np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)


def random_shapes(rng, height, width, classes, count):
    """Label map (H, W) uint8 with `count` filled ellipses of random classes, and their classes."""
    mask = np.zeros((height, width), np.uint8)
    drawn = []
    for _ in range(count):
        c = int(rng.choice(classes))
        center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        axes = (int(rng.integers(10, width // 3)), int(rng.integers(10, height // 3)))
        cv2.ellipse(mask, center, axes, float(rng.uniform(0, 180)), 0, 360, c, -1)
        drawn.append(c)
    return mask, drawn


def write_file(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)


def make_voc(root, n, rng):
    """VOCdevkit/VOC2012 (n/3 train, n/3 val, n/3 SBD-only ids), SegmentationClassAug, VOC2012test."""
    info = DatasetInfo("VOC")
    devkit = os.path.join(root, "VOCdevkit", "VOC2012")
    ids = [f"2010_{i:06d}" for i in range(n)]
    third = n // 3
    lists = {"train": ids[:third], "val": ids[third : 2 * third]}
    flat_palette = [v for rgb in info.colors for v in rgb]
    for k, image_id in enumerate(ids):
        h, w = 375, 500
        Image.fromarray(smooth_image(rng, h, w)).save(
            os.path.join(_mkdir(devkit, "JPEGImages"), image_id + ".jpg"), quality=90
        )
        mask, classes = random_shapes(rng, h, w, np.arange(1, 21), 3)
        border = cv2.morphologyEx(mask, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
        voc_mask = np.where(border, 255, mask).astype(np.uint8)
        objects = "".join(
            f"<object><name>{info.class_names[c]}</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
            f"<xmax>{w}</xmax><ymax>{h}</ymax></bndbox></object>"
            for c in classes
        )
        write_file(
            os.path.join(devkit, "Annotations", image_id + ".xml"),
            f"<annotation><filename>{image_id}.jpg</filename><size><width>{w}</width>"
            f"<height>{h}</height><depth>3</depth></size>{objects}</annotation>",
        )
        if k < 2 * third:
            png = Image.fromarray(voc_mask, mode="L")
            png.putpalette(flat_palette + [0] * (768 - len(flat_palette)))
            png.save(os.path.join(_mkdir(devkit, "SegmentationClass"), image_id + ".png"))
        Image.fromarray(mask, mode="L").save(
            os.path.join(_mkdir(root, "SBD", "SegmentationClassAug"), image_id + ".png")
        )
    for name, split_ids in lists.items():
        write_file(os.path.join(devkit, "ImageSets", "Segmentation", name + ".txt"), "\n".join(split_ids) + "\n")
    test = os.path.join(root, "VOC2012test", "VOCdevkit", "VOC2012")
    test_ids = [f"2011_{i:06d}" for i in range(n // 6)]
    for image_id in test_ids:
        Image.fromarray(smooth_image(rng, 375, 500)).save(
            os.path.join(_mkdir(test, "JPEGImages"), image_id + ".jpg"), quality=90
        )
    write_file(os.path.join(test, "ImageSets", "Segmentation", "test.txt"), "\n".join(test_ids) + "\n")
    return ["--devkit", devkit, "--sbd", os.path.join(root, "SBD"), "--test_devkit", test]


def make_coco(root, n, rng):
    """COCO root with n/2 train2014 and n/2 val2014 images of 640x480, ~6 annotations each
    (polygons, uncompressed and compressed RLE, one crowd region in four images), a few empty."""
    from pycocotools import mask as mask_utils

    category_ids = DatasetInfo("COCO").extra["coco_category_ids"]
    h, w = 480, 640
    next_ann = 1
    for split, count in (("train", n // 2), ("val", n - n // 2)):
        images, annotations = [], []
        for k in range(count):
            image_id = k + 1
            name = f"COCO_{split}2014_{image_id:012d}.jpg"
            Image.fromarray(smooth_image(rng, h, w)).save(os.path.join(_mkdir(root, f"{split}2014"), name), quality=90)
            images.append({"id": image_id, "file_name": name, "height": h, "width": w})
            if k % 50 == 49:
                continue  # an image without annotations
            for j in range(int(rng.integers(3, 10))):
                x, y = rng.uniform(0, w - 60), rng.uniform(0, h - 60)
                bw, bh = rng.uniform(8, min(300, w - x)), rng.uniform(8, min(250, h - y))
                angles = np.sort(rng.uniform(0, 2 * np.pi, 12))
                xs = x + bw / 2 * (1 + np.cos(angles))
                ys = y + bh / 2 * (1 + np.sin(angles))
                segmentation = [np.stack([xs, ys], 1).ravel().round(2).tolist()]
                crowd = int(k % 4 == 0 and j == 0)
                if crowd or j % 3 == 1:  # RLE forms: crowd regions are RLE in COCO
                    binary = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(segmentation, h, w)))
                    rle = mask_utils.encode(np.asfortranarray(binary))
                    segmentation = {"size": [h, w], "counts": rle["counts"].decode("ascii")}
                annotations.append(
                    {
                        "id": next_ann,
                        "image_id": image_id,
                        "iscrowd": crowd,
                        "category_id": int(rng.choice(category_ids)),
                        "segmentation": segmentation,
                        "bbox": [x, y, bw, bh],
                        "area": bw * bh,
                    }
                )
                next_ann += 1
        write_file(
            os.path.join(root, "annotations", f"instances_{split}2014.json"),
            json.dumps({"images": images, "annotations": annotations, "categories": []}),
        )
    return ["--coco_root", root]


def _mkdir(*parts):
    path = os.path.join(*parts)
    os.makedirs(path, exist_ok=True)
    return path


def count_files(folder):
    return sum(len(files) for _, _, files in os.walk(folder))


def time_builder(main, argv, quiet):
    """Seconds for `main(argv)`, with its progress bars and summary silenced when `quiet`."""
    sink = io.StringIO()
    start = time.perf_counter()
    with (
        contextlib.redirect_stdout(sink) if quiet else contextlib.nullcontext(),
        contextlib.redirect_stderr(sink) if quiet else contextlib.nullcontext(),
    ):
        result = run_main(main, argv)
    seconds = time.perf_counter() - start
    if result.get("failed") if isinstance(result, dict) else result:
        raise RuntimeError(f"bench_prepare: builder failed: {sink.getvalue()[-2000:]}")
    return seconds


def bench(name, main, inputs, root, num_workers, repeat, quiet):
    """Cold build (copy), cold build (hardlink), re-run of the copy: one line each."""
    figures = {}
    for label, link, out in (
        ("copy", "copy", "out_copy"),
        ("hardlink", "hardlink", "out_link"),
        ("re-run", "copy", "out_copy"),
    ):
        times = []
        for run in range(repeat):
            out_dir = os.path.join(root, f"{name}_{out}{run}")
            argv = inputs + ["--out", out_dir, "--link", link, "--num_workers", str(num_workers)]
            before = count_files(out_dir) if os.path.isdir(out_dir) else 0
            times.append(time_builder(main, argv, quiet))
            written = count_files(out_dir) - before
        images = sum(len(os.listdir(os.path.join(out_dir, s, "image"))) for s in os.listdir(out_dir))
        fastest, median = min(times), statistics.median(times)
        figures[f"{name} {label}"] = {"min": fastest, "median": median, "runs": repeat, "images": images}
        print(
            f"{name:<5} {label:<9} {written:>6} files written {fastest:7.2f} s (median {median:.2f}) "
            f"{written / fastest:8.1f} files/s {images:>6} images {images / fastest:7.1f} images/s "
            f"(build + verify)",
            flush=True,
        )
    return figures


def get_args_parser():
    parser = make_parser("Time the VOC and COCO seed-layout builders.")
    parser.add_argument("--images", default=300, type=positive_int, help="synthetic images per dataset")
    parser.add_argument("--num_workers", default=2, type=positive_int, help="builder worker processes")
    parser.add_argument("--repeat", default=1, type=positive_int, help="builds per mode (min and median)")
    parser.add_argument("--verbose", default=False, type=str2bool, help="show the builders' own output")
    return parser


def main(args):
    from tools.builders import prepare_coco as coco_main
    from tools.builders import prepare_voc as voc_main

    set_threads(1)
    rng = np.random.default_rng(0)
    result = {}
    with Machine() as machine, tempfile.TemporaryDirectory(prefix="bench_prepare_") as root:
        start = time.perf_counter()
        voc_inputs = make_voc(os.path.join(root, "voc_in"), args.images, rng)
        coco_inputs = make_coco(os.path.join(root, "coco_in"), args.images, rng)
        print(
            f"fixtures: {args.images} VOC (+{args.images // 6} test) and {args.images} COCO images "
            f"in {time.perf_counter() - start:.1f} s; num_workers={args.num_workers}"
        )
        result.update(bench("VOC", voc_main, voc_inputs, root, args.num_workers, args.repeat, not args.verbose))
        result.update(bench("COCO", coco_main, coco_inputs, root, args.num_workers, args.repeat, not args.verbose))
    result["machine"] = machine.record
    return result


if __name__ == "__main__":
    cli(main, get_args_parser())
