"""Synthetic TOY dataset in the seed layout (docs/formats.md#dataset-layout), for CPU end-to-end runs.

    python tools/builders/make_toy_dataset.py --out ./toy_data/TOY --seed 0

writes

    OUT/train/      image/ID.jpg  mask/ID.png  xml/ID.xml     60 images   (ids toy_000000..)
    OUT/train_aug/  image/ mask/ xml/                        200 images   (the 60 train images + 140)
    OUT/validation/ image/ mask/ xml/                         40 images   (ids toy_400000..)
    OUT/test/       image/                                    20 images   (ids toy_700000..)
    OUT/toy_config.json                                       the settings, checked on re-runs

Classes (data/TOY.json): disc, square, triangle, ring, cross; 0 = background. Each image holds
1..4 objects of very different sizes on a cluttered background (gradient, low-frequency noise,
faint stripes, soft blobs: nothing shaped like a class). A class has a characteristic shape, a
typical hue and a typical texture, each jittered per object, so a small CNN trained from scratch
on image-level tags separates the classes within minutes on a CPU. Objects may overlap; later ones
are drawn on top and the mask shows what is visible. As in VOC, the mask carries a 255 (ignore)
band about 2 px wide along every object border, and the XML lists one <object> per instance with a
1-based inclusive box of its visible part. An object too hidden to keep a few interior pixels is
removed from the image altogether, so the XML tags are exactly the classes present in the mask.

Determinism: each image draws from numpy's Generator seeded with (seed, pool, index); train and
train_aug share the pool "trainval", so train is a prefix of train_aug and no split depends on
another split's count. The same settings give byte-identical files. Files are written atomically;
a re-run skips the files that exist.
"""

import os
import sys
import xml.etree.ElementTree as ET
from collections import Counter

import cv2
import numpy as np

if __package__ in (None, ""):  # run as a file, python tools/GROUP/NAME.py: the repository root on the import path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from core.dataset_layout import DatasetInfo  # noqa: E402
from core.errors import DatasetError, FormatError, UsageError  # noqa: E402
from core.io import atomic_output, read_json, save_mask, write_json  # noqa: E402
from core.progress import progress as progress_bar  # noqa: E402
from core.safety import hold_output  # noqa: E402
from tools.args import cli, make_parser  # noqa: E402
from tools.builders.build_steps import voc_annotation_xml  # noqa: E402

SPLITS = ("train", "train_aug", "validation", "test")
DEFAULT_COUNTS = {"train": 60, "train_aug": 200, "validation": 40, "test": 20}
# pool name -> (code mixed into the seed, first numeric id). train and train_aug share "trainval".
POOLS = {"trainval": (0, 0), "validation": (1, 400_000), "test": (2, 700_000)}
MAX_PER_POOL = 300_000
CONFIG_NAME = "toy_config.json"
FORMAT_VERSION = 1

# Class look: OpenCV hue (0..179) and texture. Hues sit >= 23 units apart, jitter is +-6.
CLASS_STYLE = {
    "disc": {"hue": 4, "texture": "shaded"},
    "square": {"hue": 60, "texture": "checker"},
    "triangle": {"hue": 27, "texture": "stripes"},
    "ring": {"hue": 110, "texture": "speckle"},
    "cross": {"hue": 148, "texture": "dots"},
}
HUE_JITTER = 6
MIN_RADIUS = 7.0  # px; smallest object "radius" (half its extent)
MIN_RING_RADIUS = 10.0  # px; a ring needs room for its hole
MIN_VISIBLE = 12  # interior (non-band) pixels an object must keep to stay in the image


# ---------------------------------------------------------------------------------------------
# Drawing
# ---------------------------------------------------------------------------------------------
def hsv_to_rgb(hue, saturation, value):
    """One colour: OpenCV hue (0..179, wraps), saturation and value in [0, 1] -> float RGB (3,)."""
    hsv = np.array([[[int(round(hue)) % 180, int(round(255 * saturation)), int(round(255 * value))]]], dtype=np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def smooth_noise(rng, height, width, cells):
    """Low-frequency noise in about [-1, 1], float32 (H, W): a random (cells x cells) grid upsampled."""
    grid = rng.uniform(-1.0, 1.0, size=(cells, cells)).astype(np.float32)
    return cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)


def draw_background(rng, height, width):
    """Cluttered float32 RGB background (H, W, 3) in 0..255.

    A two-colour gradient in a random direction, low-frequency noise, faint stripes and soft
    blurred blobs: texture and edges everywhere, but none of the class shapes or saturated hues.
    """
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    colors = [hsv_to_rgb(rng.integers(0, 180), rng.uniform(0.03, 0.3), rng.uniform(0.3, 0.85)) for _ in range(2)]
    theta = rng.uniform(0, 2 * np.pi)
    ramp = xs * np.cos(theta) + ys * np.sin(theta)
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1.0)
    image = colors[0] + (colors[1] - colors[0]) * ramp[..., None]

    image += 22.0 * smooth_noise(rng, height, width, int(rng.integers(3, 7)))[..., None]

    phi = rng.uniform(0, np.pi)
    period = rng.uniform(5.0, 18.0)
    stripes = np.sin(2 * np.pi * (xs * np.cos(phi) + ys * np.sin(phi)) / period)
    image += rng.uniform(3.0, 9.0) * stripes[..., None]

    blobs = np.zeros((height, width), np.float32)
    for _ in range(int(rng.integers(2, 6))):
        center = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        axes = (int(rng.integers(6, max(7, width // 3))), int(rng.integers(6, max(7, height // 3))))
        cv2.ellipse(blobs, center, axes, float(rng.uniform(0, 180)), 0, 360, float(rng.uniform(-1, 1)), -1)
    blobs = cv2.GaussianBlur(blobs, (0, 0), sigmaX=float(rng.uniform(4.0, 8.0)))
    image += 28.0 * blobs[..., None]
    return image


def _fixed_point(points):
    """float (N, 2) x/y points -> int32 for cv2 drawing with shift=4 (1/16 px precision)."""
    return np.round(np.asarray(points) * 16).astype(np.int32)


def _rotated(local, cx, cy, angle):
    """Rotate (N, 2) local x/y points by `angle` (radians) and move them to (cx, cy)."""
    c, s = np.cos(angle), np.sin(angle)
    local = np.asarray(local, dtype=np.float64)
    return np.stack([cx + c * local[:, 0] - s * local[:, 1], cy + s * local[:, 0] + c * local[:, 1]], 1)


def shape_outline(name, cx, cy, radius, angle, detail):
    """Geometry of one object.

    Returns (polygons, circles, extent): polygons = list of (N, 2) float x/y vertex arrays to fill,
    circles = list of (radius, value) filled in order (value 0 cuts a hole), extent = the shape's
    unclipped (x0, y0, x1, y1) used for the VOC `truncated` flag.
    """
    polygons, circles = [], []
    if name == "disc":
        circles = [(radius, 1)]
    elif name == "ring":
        circles = [(radius, 1), (radius * detail, 0)]
    elif name == "square":
        half = 0.8 * radius
        polygons = [_rotated([[-half, -half], [half, -half], [half, half], [-half, half]], cx, cy, angle)]
    elif name == "triangle":
        corners = angle + np.array([0.0, 2 * np.pi / 3, 4 * np.pi / 3])
        polygons = [np.stack([cx + 1.1 * radius * np.cos(corners), cy + 1.1 * radius * np.sin(corners)], 1)]
    elif name == "cross":
        arm, half = radius, radius * detail
        bar = [[-arm, -half], [arm, -half], [arm, half], [-arm, half]]
        polygons = [_rotated(bar, cx, cy, angle), _rotated(bar, cx, cy, angle + np.pi / 2)]
    else:
        raise ValueError(f"no drawing rule for class {name!r}")
    if polygons:
        points = np.concatenate(polygons)
        extent = (points[:, 0].min(), points[:, 1].min(), points[:, 0].max(), points[:, 1].max())
    else:
        extent = (cx - radius, cy - radius, cx + radius, cy + radius)
    return polygons, circles, extent


def rasterize(height, width, cx, cy, polygons, circles):
    """Boolean (H, W) footprint of a shape from shape_outline."""
    canvas = np.zeros((height, width), np.uint8)
    if polygons:
        cv2.fillPoly(canvas, [_fixed_point(p) for p in polygons], 1, cv2.LINE_8, 4)
    center = tuple(int(v) for v in _fixed_point([cx, cy]))
    for radius, value in circles:
        cv2.circle(canvas, center, int(round(radius * 16)), value, -1, cv2.LINE_8, 4)
    return canvas.astype(bool)


def texture(rng, kind, xs, ys, cx, cy, radius, angle):
    """Class texture in [0, 1], float32 (H, W), in the object's own rotated frame."""
    c, s = np.cos(angle), np.sin(angle)
    u = (xs - cx) * c + (ys - cy) * s
    v = -(xs - cx) * s + (ys - cy) * c
    if kind == "shaded":  # sphere-like highlight up-left of the centre
        d = np.hypot(u + 0.35 * radius, v + 0.35 * radius) / radius
        return np.clip(1.0 - 0.7 * d, 0.0, 1.0)
    if kind == "checker":
        period = radius * rng.uniform(0.3, 0.55)
        return ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    if kind == "stripes":
        period = rng.uniform(4.0, 8.0)
        return (0.5 + 0.5 * np.sin(2 * np.pi * u / period)).astype(np.float32)
    if kind == "speckle":
        noise = rng.random(xs.shape).astype(np.float32)
        return cv2.blur(noise, (2, 2))
    if kind == "dots":
        period = rng.uniform(5.0, 9.0)
        return (np.cos(2 * np.pi * u / period) * np.cos(2 * np.pi * v / period) > 0.25).astype(np.float32)
    raise ValueError(f"unknown texture {kind!r}")


def sample_object(rng, class_names, height, width):
    """Draw one random object: dict with class index, name, footprint (H, W) bool, pixels
    float32 (H, W, 3) (valid inside the footprint) and unclipped extent."""
    index = int(rng.integers(1, len(class_names)))
    name = class_names[index]
    style = CLASS_STYLE[name]
    short = min(height, width)
    low = MIN_RING_RADIUS if name == "ring" else MIN_RADIUS
    low = max(low, 0.07 * short)
    radius = float(np.exp(rng.uniform(np.log(low), np.log(max(low, 0.4 * short)))))
    margin = 0.3 * radius  # the centre stays inside, so at most a part of the object is cut off
    cx = rng.uniform(min(margin, width / 2), max(width - margin, width / 2))
    cy = rng.uniform(min(margin, height / 2), max(height - margin, height / 2))
    angle = rng.uniform(0, 2 * np.pi)
    detail = rng.uniform(0.45, 0.6) if name == "ring" else rng.uniform(0.2, 0.3)
    polygons, circles, extent = shape_outline(name, cx, cy, radius, angle, detail)
    footprint = rasterize(height, width, cx, cy, polygons, circles)

    hue = style["hue"] + rng.integers(-HUE_JITTER, HUE_JITTER + 1)
    saturation = rng.uniform(0.55, 0.95)
    light = hsv_to_rgb(hue, saturation, rng.uniform(0.8, 1.0))
    dark = hsv_to_rgb(hue, min(1.0, saturation + 0.05), rng.uniform(0.35, 0.6))
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    t = texture(rng, style["texture"], xs, ys, cx, cy, radius, angle)
    pixels = dark + (light - dark) * t[..., None]
    return {"class": index, "name": name, "footprint": footprint, "pixels": pixels, "extent": extent}


# ---------------------------------------------------------------------------------------------
# One sample
# ---------------------------------------------------------------------------------------------
def instance_map(objects, height, width):
    """int32 (H, W): 1 + position in `objects` of the topmost object at each pixel, 0 = none."""
    instances = np.zeros((height, width), np.int32)
    for k, obj in enumerate(objects):  # later objects are drawn on top
        instances[obj["footprint"]] = k + 1
    return instances


def border_band(instances):
    """bool (H, W): pixels whose 3x3 neighbourhood spans two instances (or object and
    background) -- one pixel on each side of every border, about 2 px wide, as VOC's void band."""
    values = instances.astype(np.float32)  # exact for small ids; cv2 morphology takes float32
    kernel = np.ones((3, 3), np.uint8)
    return cv2.dilate(values, kernel) != cv2.erode(values, kernel)


def visible_layout(objects, height, width):
    """Drop objects that keep fewer than MIN_VISIBLE interior pixels, until all kept ones do.

    Returns (kept objects, instance map (H, W), band (H, W) bool). An interior pixel is one
    outside the band, so each kept object shows its class in the mask and has a box at least
    3 px wide and high (its tag survives the zero-size-box rule of parse_xml_tags).
    """
    while True:
        instances = instance_map(objects, height, width)
        band = border_band(instances)
        interior = np.bincount(instances[~band].ravel(), minlength=len(objects) + 1)[1:]
        keep = interior >= MIN_VISIBLE
        if keep.all():
            return objects, instances, band
        objects = [obj for obj, k in zip(objects, keep) if k]


def render_sample(rng, class_names, min_size, max_size, max_objects):
    """Draw one image.

    Returns (image uint8 (H, W, 3) RGB, mask uint8 (H, W) with 255 band, objects) where each
    kept object also gets "bbox": (xmin, ymin, xmax, ymax) 1-based inclusive of its visible
    pixels and "truncated": 0/1.
    """
    height, width = (int(v) for v in rng.integers(min_size, max_size + 1, size=2))
    background = draw_background(rng, height, width)
    objects = []
    while not objects:  # practically never repeats: the topmost object is always large enough
        count = int(rng.integers(1, max_objects + 1))
        drawn = [sample_object(rng, class_names, height, width) for _ in range(count)]
        objects, instances, band = visible_layout(drawn, height, width)

    image = background
    for k, obj in enumerate(objects):
        here = instances == k + 1
        image[here] = obj["pixels"][here]
    image += rng.normal(0.0, 4.0, size=image.shape).astype(np.float32)  # sensor noise
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)

    classes = np.array([0] + [obj["class"] for obj in objects], dtype=np.uint8)
    mask = classes[instances]
    mask[band] = 255
    for k, obj in enumerate(objects):
        x, y, w, h = cv2.boundingRect((instances == k + 1).astype(np.uint8))
        obj["bbox"] = (x + 1, y + 1, x + w, y + h)
        x0, y0, x1, y1 = obj["extent"]
        obj["truncated"] = int(x0 < 0 or y0 < 0 or x1 > width - 1 or y1 > height - 1)
    return image, mask, objects


def annotation_xml(image_id, height, width, objects):
    """Pascal VOC annotation bytes for one image."""
    return voc_annotation_xml(
        "TOY", image_id + ".jpg", width, height, objects, database="TOY synthetic (tools/builders/make_toy_dataset.py)"
    )


# ---------------------------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------------------------
def image_id(pool, index):
    return f"toy_{POOLS[pool][1] + index:06d}"


def sample_rng(seed, pool, index):
    """Generator for one image, independent of every other image and of the split sizes."""
    return np.random.default_rng([seed, POOLS[pool][0], index])


def _split_files(out_dir, split, sample_id):
    """The files one sample has in one split: {kind: path}; test has images only."""
    base = os.path.join(out_dir, split)
    files = {"image": os.path.join(base, "image", sample_id + ".jpg")}
    if split != "test":
        files["mask"] = os.path.join(base, "mask", sample_id + ".png")
        files["xml"] = os.path.join(base, "xml", sample_id + ".xml")
    return files


def _jobs(counts):
    """(pool, index, splits) for every distinct image; train images go to train and train_aug."""
    jobs = []
    for index in range(counts["train_aug"]):
        jobs.append(("trainval", index, ["train_aug"] + (["train"] if index < counts["train"] else [])))
    for split in ("validation", "test"):
        jobs.extend((split, index, [split]) for index in range(counts[split]))
    return jobs


def _check_settings(counts, min_size, max_size, max_objects, quality, seed):
    if any(counts[s] < 0 for s in SPLITS) or any(counts[s] > MAX_PER_POOL for s in SPLITS):
        raise UsageError(f"image counts must lie in 0..{MAX_PER_POOL}, got {counts}")
    if counts["train"] > counts["train_aug"]:
        raise UsageError(
            f"train ({counts['train']}) must not exceed train_aug ({counts['train_aug']}): "
            "train_aug contains every train image"
        )
    if not 48 <= min_size <= max_size:
        raise UsageError(f"image sides need 48 <= min_size <= max_size, got {min_size}..{max_size}")
    if max_objects < 1:
        raise UsageError(f"max_objects must be at least 1, got {max_objects}")
    if not 1 <= quality <= 100:
        raise UsageError(f"JPEG quality must lie in 1..100, got {quality}")
    if seed < 0:
        raise UsageError(f"seed must be non-negative, got {seed}")


def _claim_output(out_dir, config):
    """Record the settings in OUT/toy_config.json, or check them against an earlier run: skipping
    existing files is only safe when they came from the same settings."""
    path = os.path.join(out_dir, CONFIG_NAME)
    if os.path.exists(path):
        try:
            previous = read_json(path)
        except FormatError as e:
            raise DatasetError(str(e)) from None
        if previous != config:
            changed = sorted(k for k in set(config) | set(previous) if previous.get(k) != config.get(k))
            raise DatasetError(
                f"{path}: {out_dir} was generated with other settings "
                f"({', '.join(changed)} differ); delete it or choose another --out"
            )
        return
    if os.path.isdir(out_dir) and any(d in os.listdir(out_dir) for d in SPLITS):
        raise DatasetError(
            f"{out_dir}: holds dataset splits but no {CONFIG_NAME}; refusing to mix generated files into it"
        )
    write_json(path, config)


def _write_sample(files, image, mask, xml_bytes, palette, quality):
    """Write whichever of the sample's files are missing, each atomically."""
    if "image" in files and not os.path.exists(files["image"]):
        flags = [cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_OPTIMIZE, 0]
        ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), flags)
        if not ok:
            raise RuntimeError(f"{files['image']}: JPEG encoding failed")
        with atomic_output(files["image"]) as f:
            f.write(encoded.tobytes())
    if "mask" in files and not os.path.exists(files["mask"]):
        save_mask(files["mask"], mask, palette)
    if "xml" in files and not os.path.exists(files["xml"]):
        with atomic_output(files["xml"]) as f:
            f.write(xml_bytes)


def summarize(out_dir, info):
    """Per split: number of images, objects, and per class (images, objects), read from the XML.

    Returns {split: {"images": n, "objects": n, "classes": {name: [images, objects]}}}.
    """
    summary = {}
    for split in SPLITS:
        image_dir = os.path.join(out_dir, split, "image")
        files = os.listdir(image_dir) if os.path.isdir(image_dir) else []
        ids = sorted(f[:-4] for f in files if f.endswith(".jpg"))
        images, objects = Counter(), Counter()
        for sample_id in ids if split != "test" else []:
            xml_path = os.path.join(out_dir, split, "xml", sample_id + ".xml")
            names = [node.text for node in ET.parse(xml_path).iter("name")]
            objects.update(names)
            images.update(set(names))
        summary[split] = {
            "images": len(ids),
            "objects": sum(objects.values()),
            "classes": {name: [images[name], objects[name]] for name in info.class_names[1:]},
        }
    return summary


def format_summary(summary, info):
    names = info.class_names[1:]
    lines = [
        f"{'split':<11} {'images':>6} {'objects':>7}  " + " ".join(f"{n:>10}" for n in names),
        f"{'':<11} {'':>6} {'':>7}  " + " ".join(f"{'img/obj':>10}" for _ in names),
    ]
    for split, row in summary.items():
        cells = " ".join(f"{'%d/%d' % tuple(row['classes'][n]):>10}" for n in names)
        lines.append(f"{split:<11} {row['images']:>6} {row['objects']:>7}  {cells}")
    return "\n".join(lines)


def make_toy_dataset(
    out_dir,
    seed=0,
    num_train=60,
    num_train_aug=200,
    num_validation=40,
    num_test=20,
    min_size=96,
    max_size=160,
    max_objects=4,
    quality=90,
    progress=True,
):
    """Generate (or complete) the TOY dataset under `out_dir`; returns summarize()'s dict.

    Raises ValueError on bad settings and DatasetError when `out_dir` holds a dataset made with
    other settings.
    """
    counts = {"train": num_train, "train_aug": num_train_aug, "validation": num_validation, "test": num_test}
    _check_settings(counts, min_size, max_size, max_objects, quality, seed)
    out_dir = os.path.normpath(os.path.expanduser(os.fspath(out_dir)))
    hold_output(out_dir, "--out")  # one generator per dataset root
    info = DatasetInfo("TOY")
    config = {
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "counts": counts,
        "min_size": min_size,
        "max_size": max_size,
        "max_objects": max_objects,
        "quality": quality,
    }
    _claim_output(out_dir, config)

    for pool, index, splits in progress_bar(_jobs(counts), desc="toy dataset", unit="img", disable=not progress):
        sample_id = image_id(pool, index)
        targets = [_split_files(out_dir, split, sample_id) for split in splits]
        if all(os.path.exists(p) for files in targets for p in files.values()):
            continue  # finished on an earlier run
        image, mask, objects = render_sample(
            sample_rng(seed, pool, index), info.class_names, min_size, max_size, max_objects
        )
        xml_bytes = annotation_xml(sample_id, image.shape[0], image.shape[1], objects)
        for files in targets:
            _write_sample(files, image, mask, xml_bytes, info.palette, quality)
    return summarize(out_dir, info)


def get_args_parser():
    parser = make_parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="./toy_data/TOY", type=str, help="dataset root to write")
    parser.add_argument("--seed", default=0, type=int, help="random seed (same seed = identical files)")
    parser.add_argument("--num_train", default=DEFAULT_COUNTS["train"], type=int, help="train images")
    parser.add_argument(
        "--num_train_aug",
        default=DEFAULT_COUNTS["train_aug"],
        type=int,
        help="train_aug size, the train images included",
    )
    parser.add_argument("--num_validation", default=DEFAULT_COUNTS["validation"], type=int, help="validation images")
    parser.add_argument("--num_test", default=DEFAULT_COUNTS["test"], type=int, help="test images")
    parser.add_argument("--min_size", default=96, type=int, help="smallest image side in px")
    parser.add_argument("--max_size", default=160, type=int, help="largest image side in px")
    parser.add_argument("--max_objects", default=4, type=int, help="objects per image: 1..max_objects")
    parser.add_argument("--quality", default=90, type=int, help="JPEG quality")
    return parser


def main(args):
    summary = make_toy_dataset(
        args.out,
        seed=args.seed,
        num_train=args.num_train,
        num_train_aug=args.num_train_aug,
        num_validation=args.num_validation,
        num_test=args.num_test,
        min_size=args.min_size,
        max_size=args.max_size,
        max_objects=args.max_objects,
        quality=args.quality,
    )
    print(f"TOY dataset in {os.path.normpath(args.out)}")
    print(format_summary(summary, DatasetInfo("TOY")))
    return summary


if __name__ == "__main__":
    cli(main, get_args_parser())
