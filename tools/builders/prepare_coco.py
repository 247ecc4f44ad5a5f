"""Build the seed layout (docs/formats.md#dataset-layout) of MS COCO 2014 from the official downloads.

    python tools/builders/prepare_coco.py --coco_root COCO --out ../COCO2014/ --link hardlink --num_workers 8

Input: COCO/train2014/*.jpg, COCO/val2014/*.jpg, COCO/annotations/instances_{train,val}2014.json.
Output: ROOT/train/ (from train2014) and ROOT/validation/ (from val2014), each with
image/ID.jpg, mask/ID.png, xml/ID.xml; ID = the file stem (COCO_val2014_000000000042).

Semantic masks are rendered from the instance annotations (polygons, uncompressed RLE with a
list of counts, compressed RLE) with pycocotools, COCO category ids mapped to 1..80 through
data/COCO.json `coco_category_ids`:
- overlap: instances are painted from the largest area to the smallest, so a small object lying
  on a large one (a cup on a dining table) stays visible;
- crowd regions (iscrowd=1) become 255 (ignore) wherever no non-crowd instance covers them
  (`--crowd ignore`, the default): a crowd region does contain its class, so calling it
  background would punish correct predictions, but its outline is coarse and also spans the gaps
  between the people / cars, so calling it the class would punish correct background.
  `--crowd class` paints it with its class under the non-crowd instances, `--crowd background`
  leaves it 0 (the COCO-Stuff converter's default).
The image-level tags go into a VOC-style xml with one object per annotation (crowd included:
the class is in the picture), in annotation order, bndbox = the COCO box as VOC 1-based
integer corners. Images without any annotation are kept with an empty xml and an all-background
mask (`--empty_images keep`) or left out (`skip`: the 82,081 / 40,137 images that WSSS papers
report).
"""

import io
import json
import math
import os
import sys
import time
from functools import partial

import numpy as np
from pycocotools import mask as mask_utils

if __package__ in (None, ""):  # run as a file, python tools/GROUP/NAME.py: the repository root on the import path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


from core.dataset_layout import DatasetInfo, parse_xml_tags  # noqa: E402
from core.errors import PrepareError  # noqa: E402
from core.io import atomic_output, save_mask  # noqa: E402
from core.safety import check_output_id, hold_output, safe_output_path  # noqa: E402
from tools.args import cli, make_parser  # noqa: E402
from tools.builders.build_steps import (  # noqa: E402
    add_output_args,
    check_official_counts,
    check_source_image,
    place_file,
    print_summary,
    run_counting_skips,
    verify_split,
    voc_annotation_xml,
)
from tools.pool import available_cpus, main_threads, pool_size  # noqa: E402

SPLITS = {"train": ("train2014", "instances_train2014.json"), "validation": ("val2014", "instances_val2014.json")}
# Official 2014 image counts: all images, and those with at least one instance annotation.
OFFICIAL_COUNTS = {"keep": {"train": 82783, "validation": 40504}, "skip": {"train": 82081, "validation": 40137}}
CROWD_MODES = ("ignore", "class", "background")


# ---------------------------------------------------------------------------------------------
# Annotations -> semantic mask
# ---------------------------------------------------------------------------------------------
def decode_segmentation(segmentation, height, width, where):
    """Binary mask (H, W) uint8 of one COCO `segmentation`: polygons, uncompressed or compressed RLE.

    Polygons with fewer than 3 points have no area and are skipped (pycocotools would read a
    4-number polygon as a box).
    """
    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if len(p) >= 6]
        if not polygons:
            return np.zeros((height, width), dtype=np.uint8)
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    elif isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        if list(segmentation["size"]) != [height, width]:
            raise PrepareError(f"{where}: RLE size {segmentation['size']} differs from the image's [{height}, {width}]")
        if isinstance(segmentation["counts"], list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            rle = segmentation
    else:
        raise PrepareError(f"{where}: unknown segmentation format ({type(segmentation).__name__})")
    try:
        return mask_utils.decode(rle)
    except (ValueError, TypeError) as e:
        raise PrepareError(f"{where}: cannot decode segmentation ({e})") from None


def render_semantic_mask(annotations, height, width, crowd="ignore", where=""):
    """Semantic mask (H, W) uint8 of one image's annotations.

    Args:
        annotations: list of dicts with "class" (1-based index), "iscrowd", "segmentation", "id".
        crowd: "ignore" (crowd pixels not covered by a non-crowd instance -> 255), "class"
            (crowd painted with its class, below every non-crowd instance) or "background".
    Non-crowd instances are painted largest first (ties: annotation order), so smaller objects
    stay on top.
    """
    mask = np.zeros((height, width), dtype=np.uint8)
    decoded = [
        (decode_segmentation(a["segmentation"], height, width, f"{where} annotation {a['id']}"), a) for a in annotations
    ]
    # largest first; the sort is stable, so equal areas keep annotation order
    decoded.sort(key=lambda pair: -int(pair[0].sum()))
    crowds = [(m, a) for m, a in decoded if a["iscrowd"]]
    instances = [(m, a) for m, a in decoded if not a["iscrowd"]]
    if crowd == "class":
        for binary, ann in crowds:
            mask[binary.astype(bool)] = ann["class"]
    elif crowd == "ignore" and crowds:
        mask[np.any([m for m, _ in crowds], axis=0)] = 255
    for binary, ann in instances:  # painted over the crowd regions
        mask[binary.astype(bool)] = ann["class"]
    return mask


# ---------------------------------------------------------------------------------------------
# Annotations -> VOC-style xml
# ---------------------------------------------------------------------------------------------
def voc_box(bbox, width, height):
    """COCO [x, y, w, h] (float, 0-based) -> VOC 1-based integer corners (xmin, ymin, xmax, ymax).

    The pixels touched by the box run from floor(x) to ceil(x + w) - 1 (0-based), i.e. VOC
    xmin = floor(x) + 1, xmax = ceil(x + w). core.dataset_layout.parse_xml_tags (like the original)
    clamps corners to [0, size - 1] and drops an object whose extent is then exactly 0, which
    would silently lose the tag of a one-pixel-wide box or of a box on the last column; each
    side starts at most at size - 2 and is at least one unit wide (images at least 3 pixels wide).
    """
    x, y, w, h = (float(v) for v in bbox)

    def corners(start, length, size):
        low = int(np.clip(np.floor(start) + 1, 1, max(size - 2, 1)))
        high = int(np.clip(np.ceil(start + length), low + 1, max(size, low + 1)))
        return low, high

    xmin, xmax = corners(x, w, width)
    ymin, ymax = corners(y, h, height)
    return xmin, ymin, xmax, ymax


def annotation_xml(file_name, width, height, annotations, class_names):
    """VOC-style annotation (bytes) with one <object> per annotation, in annotation order."""
    objects = [
        {
            "name": class_names[ann["class"]],
            "bbox": voc_box(ann["bbox"], width, height),
            "extra": {"iscrowd": int(ann["iscrowd"])},
        }
        for ann in annotations
    ]
    return voc_annotation_xml("COCO2014", file_name, width, height, objects)


def expected_tags(annotations):
    """1-based classes in order of first appearance: what parse_xml_tags must read back."""
    return list(dict.fromkeys(a["class"] for a in annotations))


# ---------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------
def load_split(json_path, image_dir, category_to_class, empty_images):
    """Read an instances json into per-image tasks, checking every image file exists.

    Returns (tasks, number of images without annotations). A task is a dict with "id", "src",
    "file_name", "width", "height" and "annotations" (dicts with "id", "class", "iscrowd",
    "segmentation", "bbox").
    """
    if not os.path.isfile(json_path):
        raise PrepareError(f"{json_path}: annotation file not found")
    print(f"reading {json_path}")
    try:
        with open(json_path, encoding="utf-8") as f:
            data = json.load(f)
        images, annotations = data["images"], data["annotations"]
    except json.JSONDecodeError as e:
        raise PrepareError(f"{json_path}: not valid JSON ({e})") from None
    except RecursionError:
        raise PrepareError(f"{json_path}: JSON nested too deeply to be a COCO instances file") from None
    except (KeyError, TypeError):
        raise PrepareError(f"{json_path}: not a COCO instances file (needs 'images' and 'annotations')") from None
    try:
        by_image = group_annotations(annotations, category_to_class, json_path)
        known = {image["id"] for image in images}
        orphans = set(by_image) - known
        if orphans:
            raise PrepareError(
                f"{json_path}: annotations refer to image id(s) not in 'images', e.g. {sorted(orphans)[0]}"
            )
        check_unique_images(images, json_path)
        tasks, empty = [], 0
        for image in images:
            anns = by_image.get(image["id"], [])
            if not anns:
                empty += 1
                if empty_images == "skip":
                    continue
            output_name(image["file_name"], json_path, image["id"])
            src = os.path.join(image_dir, image["file_name"])
            if not os.path.isfile(src):
                raise PrepareError(
                    f"{json_path}: image {image['file_name']} (id {image['id']}) not found in {image_dir}"
                )
            where = f"{json_path}: image id {image['id']} ({image['file_name']})"
            for ann in anns:
                ann["bbox"] = check_box(ann["bbox"], f"{where}: annotation {ann['id']}")
            tasks.append(
                {
                    "id": os.path.splitext(image["file_name"])[0],
                    "src": src,
                    "file_name": image["file_name"],
                    "width": image_side(image, "width", where),
                    "height": image_side(image, "height", where),
                    "annotations": anns,
                }
            )
    except KeyError as e:
        raise PrepareError(f"{json_path}: an image or annotation entry lacks the field {e}") from None
    tasks.sort(key=lambda t: t["id"])
    return tasks, empty


MAX_SIDE = 1 << 20  # a side beyond a million pixels is a broken annotation, not a photograph


def finite_number(value):
    """`value` as a float when it is a JSON number (not a bool) that is finite as a float, else
    None: 1e400 reads as inf, and an integer such as 10**400 does not fit a float at all."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def image_side(image, key, where):
    """The integer `width` or `height` of a COCO image entry; PrepareError naming the file,
    the image and the value when it is not a positive whole number (e.g. "abc", NaN, 1e400)."""
    value = image[key]
    number = finite_number(value)
    if number is None or number != int(number) or not 0 < number <= MAX_SIDE:
        raise PrepareError(f"{where}: {key} {value!r} is not a positive whole number of pixels")
    return int(number)


def check_box(bbox, where):
    """A COCO [x, y, w, h] of four finite numbers (w, h >= 0); PrepareError naming the file otherwise."""
    ok = isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(finite_number(v) is not None for v in bbox)
    if not ok or bbox[2] < 0 or bbox[3] < 0:
        raise PrepareError(
            f"{where}: bbox {bbox!r} is not [x, y, width, height] of finite numbers with width, height >= 0"
        )
    return list(bbox)


def output_name(file_name, json_path, image_id):
    """Check that a COCO `file_name` is a bare file name (it becomes the output id); PrepareError
    naming the annotation file and the value otherwise, before anything is written."""
    check_output_id(file_name, f"{json_path}: image id {image_id}: file_name", PrepareError)
    check_output_id(os.path.splitext(file_name)[0], f"{json_path}: image id {image_id}: file_name stem", PrepareError)
    return file_name


def check_unique_images(images, json_path):
    """Refuse, before anything is written, an image id listed twice and two images whose
    file_name gives the same output id (the stem): either would make one image overwrite or lose
    another while the counts still add up."""
    ids, stems = {}, {}
    for image in images:
        image_id, name = image["id"], image["file_name"]
        if isinstance(image_id, bool) or not isinstance(image_id, (int, str)):
            raise PrepareError(f"{json_path}: image id {image_id!r} is not a number or a string")
        if image_id in ids:
            raise PrepareError(f"{json_path}: image id {image_id} is listed twice ({ids[image_id]!r} and {name!r})")
        ids[image_id] = name
        stem = os.path.splitext(name)[0] if isinstance(name, str) else name
        if stem in stems:
            raise PrepareError(
                f"{json_path}: image ids {stems[stem]} and {image_id} share the output id {stem!r} "
                f"(file_name {ids[stems[stem]]!r} and {name!r})"
            )
        stems[stem] = image_id


def group_annotations(annotations, category_to_class, json_path):
    """{COCO image id: [annotation dicts with the 1-based "class"]}, in file order."""
    by_image = {}
    for ann in annotations:
        category = ann.get("category_id")
        if category not in category_to_class:
            raise PrepareError(
                f"{json_path}: annotation {ann.get('id')} has category_id {category}, "
                f"not one of the 80 in data/COCO.json coco_category_ids"
            )
        by_image.setdefault(ann["image_id"], []).append(
            {
                "id": ann.get("id"),
                "class": category_to_class[category],
                "iscrowd": int(ann.get("iscrowd", 0)),
                "segmentation": ann.get("segmentation"),
                "bbox": ann.get("bbox", [0, 0, 0, 0]),
            }
        )
    return by_image


def build_image(task, split_dir, link, crowd, info, max_pixels=None):
    """Write image, mask and xml of one COCO image; returns how many files were written."""
    image_id = task["id"]
    check_source_image(task["src"], max_pixels)  # header only: 16-bit or huge images skipped before writing
    written = place_file(task["src"], safe_output_path(split_dir, os.path.join("image", image_id + ".jpg")), link)
    mask_path = safe_output_path(split_dir, os.path.join("mask", image_id + ".png"))
    if not os.path.exists(mask_path):
        mask = render_semantic_mask(task["annotations"], task["height"], task["width"], crowd, where=task["file_name"])
        save_mask(mask_path, mask, info.palette)
        written += 1
    xml_path = safe_output_path(split_dir, os.path.join("xml", image_id + ".xml"))
    if not os.path.exists(xml_path):
        text = annotation_xml(task["file_name"], task["width"], task["height"], task["annotations"], info.class_names)
        # The tags a reader will see must be the annotated classes (the zero-size box rule).
        tags = parse_xml_tags(io.BytesIO(text), info.class_dict)
        if tags != expected_tags(task["annotations"]):
            raise PrepareError(
                f"{xml_path}: xml would read back tags {tags}, expected {expected_tags(task['annotations'])}"
            )
        with atomic_output(xml_path, "wb") as f:
            f.write(text)
        written += 1
    return written


def category_map(info):
    """COCO category id -> 1-based class index, from data/COCO.json coco_category_ids."""
    ids = info.extra.get("coco_category_ids")
    if not ids or len(ids) != info.num_foreground:
        raise PrepareError(f"data/COCO.json: coco_category_ids must list {info.num_foreground} ids")
    return {int(c): i + 1 for i, c in enumerate(ids)}


def get_args_parser():
    parser = make_parser("Build the seed layout of MS COCO 2014 (train, validation).")
    parser.add_argument(
        "--coco_root",
        required=True,
        type=str,
        help="folder with train2014/, val2014/ and annotations/instances_{train,val}2014.json",
    )
    parser.add_argument(
        "--splits",
        default="train,validation",
        type=str,
        help="comma-separated splits to build: train (train2014), validation (val2014)",
    )
    parser.add_argument(
        "--crowd",
        default="ignore",
        choices=CROWD_MODES,
        help="crowd regions: ignore (255 unless a non-crowd instance covers them), class, or background",
    )
    parser.add_argument(
        "--empty_images",
        default="keep",
        choices=("keep", "skip"),
        help="images without annotations: keep (no tags, all-background mask) or skip",
    )
    add_output_args(parser, "../COCO2014/")
    return parser


def main(args):
    """Build, verify and summarise. Returns {split: counts incl. "written", "empty"}."""
    start = time.time()
    main_threads(args.threads, pool_size(args.num_workers, available_cpus()))
    info = DatasetInfo("COCO")
    category_to_class = category_map(info)
    root = os.path.normpath(os.path.expanduser(args.coco_root))
    out_root = os.path.normpath(os.path.expanduser(args.out))
    hold_output(out_root, "--out")  # one builder per dataset root
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    unknown = [s for s in splits if s not in SPLITS]
    if unknown or not splits:
        raise PrepareError(f"--splits {args.splits}: expected train and/or validation")
    if not os.path.isdir(root):
        raise PrepareError(f"--coco_root {root}: folder not found")
    official = OFFICIAL_COUNTS[args.empty_images]
    rows, notes = {}, []
    for split in splits:
        folder, json_name = SPLITS[split]
        image_dir = os.path.join(root, folder)
        if not os.path.isdir(image_dir):
            raise PrepareError(f"--coco_root {root}: {folder}/ not found")
        tasks, empty = load_split(
            os.path.join(root, "annotations", json_name), image_dir, category_to_class, args.empty_images
        )
        check_official_counts({split: len(tasks)}, official, args.expect_official, "COCO2014")
        work = partial(
            build_image,
            split_dir=os.path.join(out_root, split),
            link=args.link,
            crowd=args.crowd,
            info=info,
            max_pixels=getattr(args, "max_image_pixels", None),
        )
        written = run_counting_skips(work, tasks, args.num_workers, f"build {split}", f"COCO2014 {split}")
        ids = [t["id"] for t in tasks]
        del tasks  # the annotations of train2014 take a few GB
        rows[split] = verify_split(out_root, split, ids, True, True, info, args.num_workers)
        rows[split].update(written=written, empty=empty)
        action = "kept with no tags" if args.empty_images == "keep" else "skipped"
        notes.append(f"{split}: {empty:,} images without annotations {action}")
    notes.append(f"crowd regions: {args.crowd}")
    print_summary(out_root, rows, official, time.time() - start, notes)
    return rows


if __name__ == "__main__":
    # Run through the package name so worker processes can pickle this module's functions.
    from tools.builders.prepare_coco import get_args_parser as _parser
    from tools.builders.prepare_coco import main as _main

    cli(_main, _parser())
