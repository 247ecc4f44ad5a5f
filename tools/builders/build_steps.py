"""Helpers shared by the dataset builders (tools/builders/prepare_voc.py, tools/builders/prepare_coco.py,
tools/builders/make_toy_dataset.py): their output flags, atomic file placement (copy / hard link /
symlink), id lists, mask checks, the worker pool, verification of a built split, the summary
table and the one VOC-style xml writer (docs/formats.md#dataset-layout).
"""

import os
import shutil
import sys
import unicodedata
import xml.etree.ElementTree as ET
from functools import partial

import numpy as np
from PIL import Image

from core.dataset_layout import parse_xml_tags
from core.errors import DatasetError, FormatError, PrepareError
from core.io import atomic_output, read_mask
from core.progress import progress
from core.safety import check_image_header, check_output_id, check_regular_file, image_mode_problem, temp_path
from tools.args import add_image_limit_arg, add_threads_arg, str2bool
from tools.pool import SKIPPED_ERRORS, pool_size, run_pool

LINK_MODES = ("copy", "hardlink", "symlink")


def add_output_args(parser, default_out):
    parser.add_argument(
        "--out",
        default=default_out,
        type=str,
        help="dataset root to build in the seed layout (trailing slash optional)",
    )
    parser.add_argument(
        "--link",
        default="copy",
        choices=LINK_MODES,
        help="how images and xml files reach the output: copy, hardlink (same file "
        "system, no extra disk) or symlink (absolute links to the inputs)",
    )
    parser.add_argument("--num_workers", default=4, type=int, help="worker processes (0: everything in this process)")
    add_threads_arg(parser)
    # --expect_official alone means "true"
    parser.add_argument(
        "--expect_official",
        default=False,
        type=str2bool,
        nargs="?",
        const=True,
        help="a split count that differs from the official one is an error, not a warning",
    )
    add_image_limit_arg(parser)


def check_source_image(path, max_pixels=None):
    """Raise PrepareError naming `path` unless its header is an 8-bit image of at most
    `max_pixels` pixels (header only: nothing is decoded; core.safety.check_image_header)."""
    check_image_header(path, PrepareError, max_pixels)


def place_file(src, dst, link):
    """Put `src` at `dst` by copy, hard link or symlink, atomically; skip if `dst` exists.

    Links are created under a temporary name and moved with os.replace, so a killed run never
    leaves a half-made entry that a later run would count as done. Returns 1 if written, else 0.
    """
    if os.path.exists(dst):  # follows symlinks: a dangling link is rebuilt
        return 0
    if not os.path.isfile(src):
        raise PrepareError(f"{src}: input file not found")
    if link == "copy":
        with open(src, "rb") as fin, atomic_output(dst, "wb") as fout:
            shutil.copyfileobj(fin, fout, 1 << 20)
        return 1
    directory = os.path.dirname(os.path.abspath(dst))
    os.makedirs(directory, exist_ok=True)
    tmp = temp_path(dst)  # the project's temporary-name pattern (core.safety)
    try:
        if link == "hardlink":
            os.link(src, tmp)
        else:
            os.symlink(os.path.abspath(src), tmp)
        os.replace(tmp, dst)
    except OSError as e:
        if os.path.lexists(tmp):
            os.remove(tmp)
        hint = (
            " (hard links need input and output on the same file system; try --link copy)" if link == "hardlink" else ""
        )
        raise PrepareError(f"cannot {link} {src} -> {dst}: {e.strerror or e}{hint}") from None
    return 1


def read_id_list(path, what):
    """Image ids of a list file, in file order, duplicates dropped.

    Accepts plain VOC lists (`2007_000032`) and DeepLab-style pair lists
    (`/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png`): the stem of the first
    token is the id.
    """
    check_regular_file(path, PrepareError, f"{what} list file")
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark at the start is dropped
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise PrepareError(
            f"{path}: line {line}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset "
            f"{e.start}); a list file holds one image id per line"
        ) from None
    tokens = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        # invisible characters (a byte-order mark inside the file, zero-width spaces) would end up
        # in output file names that look right but do not match the images
        hidden = [c for c in line.strip() if unicodedata.category(c) in ("Cf", "Cc", "Co", "Cn")]
        if hidden:
            raise PrepareError(
                f"{path}: line {number}: invisible character U+{ord(hidden[0]):04X} in "
                f"{line.strip()!r}; remove it (list files hold plain image ids)"
            )
        tokens.append(line.split()[0])
    ids = list(dict.fromkeys(os.path.splitext(os.path.basename(t))[0] for t in tokens))
    for image_id in ids:  # ids become output file names
        check_output_id(image_id, f"{path}: id", PrepareError)
    if not ids:
        raise PrepareError(f"{path}: {what} list file is empty")
    return ids


def check_mask_values(mask, num_classes, path):
    """Return `mask` as uint8 (H, W) after checking every value is a class index or 255.

    Raises PrepareError naming `path` and the offending values otherwise.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.size == 0:
        raise PrepareError(f"{path}: mask must be a non-empty (H, W) array, found shape {mask.shape}")
    if mask.dtype.kind not in "iub":
        raise PrepareError(f"{path}: mask must hold integer class indices, found {mask.dtype}")
    low, high = int(mask.min()), int(mask.max())
    if low < 0 or high > 255:
        raise PrepareError(
            f"{path}: unexpected mask values (range {low}..{high}); expected class indices 0..{num_classes - 1} or 255"
        )
    mask = mask.astype(np.uint8, copy=False)
    counts = np.bincount(mask.ravel(), minlength=256)
    bad = np.flatnonzero(counts[num_classes:255]) + num_classes
    if bad.size:
        raise PrepareError(
            f"{path}: unexpected mask values {bad[:10].tolist()} "
            f"({int(counts[bad].sum())} pixels); expected class indices "
            f"0..{num_classes - 1} or 255"
        )
    return mask


class _Skipping:
    """func(task) -> (result, None), or (0, message) when its input is bad (tools.pool.SKIPPED_ERRORS
    and PrepareError): the builder goes on with the other items and lists the skipped ones at the end."""

    def __init__(self, func):
        self.func = func

    def __call__(self, task):
        try:
            return self.func(task), None
        except (PrepareError, *SKIPPED_ERRORS) as e:
            return 0, str(e)


def run_counting_skips(func, tasks, num_workers, desc, what):
    """sum(func(t)) over `tasks`, where an item whose input is bad is skipped, not fatal; after
    all items, PrepareError counts and lists the skipped ones (so a re-run after fixing them only
    adds those: every finished file is kept and skipped)."""
    results = run_parallel(_Skipping(func), tasks, num_workers, desc)
    problems = [p for _, p in results if p]
    if problems:
        shown = "\n  ".join(problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        raise PrepareError(
            f"{what}: {len(problems)} of {len(tasks)} item(s) skipped because of bad input "
            f"(the others were written; fix or remove these and run again):\n  {shown}{more}"
        )
    return sum(r for r, _ in results)


def run_parallel(func, tasks, num_workers, desc):
    """`[func(t) for t in tasks]` in `num_workers` processes (0: here), with a progress bar.

    A worker's exception is re-raised here, so the first bad input stops the run.
    """
    results = run_pool(func, tasks, pool_size(num_workers, len(tasks)), ordered=True)
    return list(progress(results, total=len(tasks), desc=desc, unit="img"))


def _verify_item(image_id, split_dir, need_mask, need_xml, num_classes, class_dict):
    """Problems of one output image as a list of messages (empty when all is well)."""
    image_path = os.path.join(split_dir, "image", image_id + ".jpg")
    try:
        with Image.open(image_path) as image:  # header only: the size, no decoding
            width, height = image.size
            if image_mode_problem(image.mode):
                return [f"{image_path}: {image_mode_problem(image.mode)}"]
    except FileNotFoundError:
        return [f"{image_path}: image missing"]
    except OSError as e:
        return [f"{image_path}: unreadable image ({e})"]
    problems = []
    if need_mask:
        mask_path = os.path.join(split_dir, "mask", image_id + ".png")
        try:
            mask = check_mask_values(read_mask(mask_path), num_classes, mask_path)
            if mask.shape != (height, width):
                problems.append(
                    f"{mask_path}: mask size {mask.shape[1]}x{mask.shape[0]} differs from its image {width}x{height}"
                )
        except (FileNotFoundError, FormatError, PrepareError) as e:
            problems.append(str(e))
    if need_xml:
        xml_path = os.path.join(split_dir, "xml", image_id + ".xml")
        if not os.path.isfile(xml_path):
            problems.append(f"{xml_path}: annotation missing")
        else:
            try:
                parse_xml_tags(xml_path, class_dict)
            except DatasetError as e:
                problems.append(str(e))
    return problems


def verify_split(out_root, split, ids, need_mask, need_xml, info, num_workers):
    """Check one built split against the ids it should hold.

    Every id has its image (and mask / xml when `need_*`), masks hold class indices or 255 and
    match their image's size, xml files parse with known classes, and no other image, mask or
    xml files lie in the split. Raises PrepareError listing the problems. Returns the counts
    {"image": n, "mask": n, "xml": n}.
    """
    split_dir = os.path.join(out_root, split)
    check = partial(
        _verify_item,
        split_dir=split_dir,
        need_mask=need_mask,
        need_xml=need_xml,
        num_classes=info.num_classes,
        class_dict=info.class_dict,
    )
    problems = [p for item in run_parallel(check, list(ids), num_workers, f"verify {split}") for p in item]
    expected = set(ids)
    counts = {}
    for folder, ext in (("image", ".jpg"), ("mask", ".png"), ("xml", ".xml")):
        directory = os.path.join(split_dir, folder)
        names = [f for f in os.listdir(directory) if not f.startswith(".")] if os.path.isdir(directory) else []
        stray = sorted(f for f in names if not f.endswith(ext) or f[: -len(ext)] not in expected)
        if stray:
            problems.append(
                f"{directory}: {len(stray)} file(s) not in the {split} list, e.g. "
                f"{', '.join(stray[:3])} (left by another run? remove them)"
            )
        counts[folder] = len(names) - len(stray)
    if problems:
        shown = "\n  ".join(problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise PrepareError(f"verification of {split_dir} failed ({len(problems)} problem(s)):\n  {shown}{more}")
    return counts


def check_official_counts(counts, official, strict, name):
    """Warn (or, if `strict`, raise) for every split whose image count differs from the official one."""
    for split, count in counts.items():
        if split in official and count != official[split]:
            message = f"{name} {split}: {count:,} images, the official split has {official[split]:,}"
            if strict:
                raise PrepareError(message + " (--expect_official)")
            print(f"warning: {message} (fine for a subset; --expect_official makes this an error)", file=sys.stderr)


def print_summary(out_root, rows, official, seconds, notes=()):
    """Table of the built splits: image/mask/xml counts, files written this run, official count."""
    print(f"\nseed layout at {out_root} ({seconds:.1f} s)")
    print(f"  {'split':<11}{'images':>9}{'masks':>9}{'xml':>9}{'written':>10}{'official':>10}")
    for split, row in rows.items():
        expected = official.get(split)
        flag = "" if expected is None or expected == row["image"] else "  (differs)"
        print(
            f"  {split:<11}{row['image']:>9,}{row['mask']:>9,}{row['xml']:>9,}{row['written']:>10,}"
            f"{(f'{expected:,}' if expected else '-'):>10}{flag}"
        )
    print(
        "  verified: every labelled image has its mask and xml, mask values are class indices "
        "or 255, mask sizes match the images"
    )
    for note in notes:
        print(f"  {note}")


def resolve_folder(path, flag, marker, candidates):
    """The first of `path/c` (c in `candidates`) that contains `marker`; `flag` names the option."""
    root = os.path.normpath(os.path.expanduser(path))
    if not os.path.isdir(root):
        raise PrepareError(f"{flag} {root}: folder not found")
    for candidate in candidates:
        folder = os.path.normpath(os.path.join(root, candidate))
        if os.path.exists(os.path.join(folder, marker)):
            return folder
    tried = ", ".join(os.path.normpath(os.path.join(root, c, marker)) for c in candidates)
    raise PrepareError(f"{flag} {root}: {marker} not found (looked for {tried})")


def voc_annotation_xml(folder, file_name, width, height, objects, database=None):
    """Pascal VOC annotation bytes: one <object> per entry of `objects`, in order.

    objects: dicts with "name", "bbox" (VOC 1-based integer xmin, ymin, xmax, ymax), optional
    "truncated" (0/1, default 0) and optional "extra" (tag -> value, written after <difficult>,
    e.g. COCO's iscrowd, ignored by VOC readers). database: optional <source><database> text.
    """
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = folder
    ET.SubElement(root, "filename").text = file_name
    if database is not None:
        source = ET.SubElement(root, "source")
        ET.SubElement(source, "database").text = database
    size = ET.SubElement(root, "size")
    for key, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size, key).text = str(value)
    ET.SubElement(root, "segmented").text = "1"
    for obj in objects:
        node = ET.SubElement(root, "object")
        ET.SubElement(node, "name").text = obj["name"]
        ET.SubElement(node, "pose").text = "Unspecified"
        ET.SubElement(node, "truncated").text = str(int(obj.get("truncated", 0)))
        ET.SubElement(node, "difficult").text = "0"
        for key, value in obj.get("extra", {}).items():
            ET.SubElement(node, key).text = str(value)
        box = ET.SubElement(node, "bndbox")
        for key, value in zip(("xmin", "ymin", "xmax", "ymax"), obj["bbox"]):
            ET.SubElement(box, key).text = str(value)
    ET.indent(root, space="  ")
    return ET.tostring(root, encoding="utf-8") + b"\n"
