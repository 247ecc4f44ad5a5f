"""Build the seed layout (docs/formats.md#dataset-layout) of your own images and tags, with the
dataset description that every script takes as `--dataset`.

    python tools/builders/prepare_own.py --images photos/ --tags tags.csv --out ../MyData/
        [--masks masks/] [--classes cat,dog,bird | --classes classes.txt]
        [--val_fraction 0.2 --seed 0 | --train_list train.txt --val_list val.txt]

Inputs
  --images   a folder of images (jpg, png, bmp, tif, webp), 8 bits per channel.
  --tags     CSV rows `image,tags` (optional header `image,tags`), tags separated by `;`, e.g.
             `dog_01.jpg,dog;person`; or JSON {"dog_01.jpg": ["dog", "person"], ...} (a list or a
             `;` string per image). The image is a file name of --images, with or without its
             extension; its stem is the id. An image without tags is background only.
  --masks    optional: ID.png per image, class indices as a grey (L) or palette (P) PNG, 255 =
             ignore, index i = the i-th class of --classes (0 = background); a split gets masks
             when every image of it has one (evaluate.py needs them).
  --classes  the foreground classes, in index order: `a,b,c` or a file with one per line.
             Without it the tags' classes are collected, sorted and printed.

Output (OUT = --out)
  OUT/train/{image,xml[,mask]}/  OUT/validation/{image,xml[,mask]}/  OUT/train_aug -> train
  OUT/{name}.json                the description: class names and colours, as data/VOC.json
Own data has no separate augmented set, so train_aug is a link to train: the training scripts'
default `--domain train_aug` then trains on train. Images that are not JPEG are re-encoded as
JPEG (quality 95); JPEG files are copied (or linked, --link) byte for byte. Each xml lists the
image's tags as VOC objects whose box is the whole image.

Every input is read and checked before anything is written; the layout is built in a temporary
folder beside OUT, verified, and renamed to OUT at the end, so a failed run leaves nothing.
"""

import csv
import json
import os
import shutil
import sys
import tempfile
import time
import unicodedata
from functools import partial

import numpy as np
from PIL import Image

if __package__ in (None, ""):  # run as a file, python tools/GROUP/NAME.py: the repository root on the import path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from core.dataset_layout import DatasetInfo, read_image  # noqa: E402
from core.errors import DatasetError, FormatError, UsageError  # noqa: E402
from core.io import atomic_output, read_mask, save_mask, write_json  # noqa: E402
from core.safety import (  # noqa: E402
    TEMP_SUFFIX,
    check_output_id,
    check_regular_file,
    hold_output,
    regular_file_problem,
    remove_stale_temp_files,  # noqa: E402
    temp_path,
    temp_prefix,
)
from tools.args import add_image_limit_arg, cli, make_parser, str2bool  # noqa: E402
from tools.builders.build_steps import (  # noqa: E402
    LINK_MODES,
    PrepareError,
    check_mask_values,
    check_source_image,
    place_file,
    print_summary,
    read_id_list,
    run_parallel,
    verify_split,
    voc_annotation_xml,
)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MAX_FOREGROUND = 254  # index 255 is "ignore" in every mask


def voc_colors(count):
    """The standard PASCAL VOC colour map, entries 0..count-1, as [R, G, B] lists (the colours of
    data/*.json): the bits of the index, three at a time, fill R, G, B from the high bit down."""
    index = np.arange(count)
    colors = np.zeros((count, 3), np.int64)
    for bit in range(8):
        for channel in range(3):
            colors[:, channel] |= ((index >> (3 * bit + channel)) & 1) << (7 - bit)
    return colors.tolist()


def check_class_name(name, where):
    """`name` in Unicode NFC after checking it (the same name typed on two systems may arrive
    composed or decomposed; both are one class)."""
    if not name or name != name.strip():
        raise PrepareError(f"{where}: class name {name!r} is empty or has surrounding spaces")
    if ";" in name or any(unicodedata.category(c) in ("Cc", "Cf") for c in name):
        raise PrepareError(f"{where}: class name {name!r} holds ';' or an invisible character")
    if name == "background":
        raise PrepareError(
            f"{where}: 'background' is class 0 of every dataset and implicit; list only the foreground classes"
        )
    return unicodedata.normalize("NFC", name)


def check_case_twins(names, where):
    """Refuse two class names that differ only by case ('Dog' and 'dog'): almost always one class
    typed twice, which would split its images over two classes."""
    seen = {}
    for name in names:
        twin = seen.setdefault(name.casefold(), name)
        if twin != name:
            raise PrepareError(
                f"{where}: classes {twin!r} and {name!r} differ only by case; write one "
                "name for one class (or rename one of them if they are really two)"
            )


def read_class_list(value):
    """Foreground class names, in index order, from `a,b,c` or a file of one name per line."""
    if os.path.exists(value) and not os.path.isdir(value):
        check_regular_file(value, PrepareError, "class list file")
        with open(value, encoding="utf-8-sig") as f:
            names = [(f"--classes {value} line {n}", line.strip()) for n, line in enumerate(f, 1) if line.strip()]
    elif value.lower().endswith((".txt", ".csv")) or os.sep in value:
        raise PrepareError(f"--classes {value}: class list file not found")
    else:
        names = [(f"--classes {value!r}", name.strip()) for name in value.split(",")]
    seen = {}
    for where, name in names:
        name = check_class_name(name, where)
        if name in seen:
            raise PrepareError(f"{where}: class {name!r} listed twice")
        seen[name] = where
    if not seen:
        raise PrepareError(f"--classes {value!r}: no class names")
    check_case_twins(seen, f"--classes {value}")
    return list(seen)


def _split_tags(value, where):
    if isinstance(value, str):
        parts = value.split(";")
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        parts = value
    else:
        raise PrepareError(f"{where}: tags must be a ';'-separated string or a list of strings, found {value!r}")
    return list(dict.fromkeys(unicodedata.normalize("NFC", p.strip()) for p in parts if p.strip()))


def read_tag_table(path):
    """[(where, image, [tag, ...])] of a CSV (`image,tags`) or JSON tag file, in file order;
    `where` names the file and the row (CSV) or the entry (JSON)."""
    check_regular_file(path, PrepareError, "--tags file")
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise PrepareError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if path.lower().endswith(".json"):

        def pairs(items):  # json.loads keeps the last of two equal keys silently: a duplicate id would vanish
            result = dict(items)
            if len(result) < len(items):  # a set's count, not keys.count per key (quadratic)
                seen = set()
                key = next(k for k, _ in items if k in seen or seen.add(k))
                raise PrepareError(
                    f"{path}: entry {key!r}: duplicate id (listed {sum(k == key for k, _ in items)} times)"
                )
            return result

        try:
            data = json.loads(text, object_pairs_hook=pairs)
        except json.JSONDecodeError as e:
            raise PrepareError(f"{path}: malformed JSON ({e})") from None
        except RecursionError:
            raise PrepareError(
                f'{path}: JSON nested too deeply to be a tag file (expected {{"image": ["tag", ...]}})'
            ) from None
        if not isinstance(data, dict):
            raise PrepareError(f'{path}: expected an object {{"image": ["tag", ...], ...}}')
        return [
            (f"{path} entry {key!r}", key, _split_tags(value, f"{path} entry {key!r}")) for key, value in data.items()
        ]
    rows = []
    try:
        for number, row in enumerate(csv.reader(text.splitlines()), 1):
            if not any(cell.strip() for cell in row):
                continue
            where = f"{path} row {number}"
            if len(row) > 2:
                raise PrepareError(
                    f"{where}: {len(row)} columns; expected image,tags with the tags "
                    "separated by ';' (e.g. dog_01.jpg,dog;person)"
                )
            image, tags = row[0].strip(), (row[1] if len(row) > 1 else "")
            if (
                not rows
                and image.lower() in ("image", "id", "file", "filename")
                and tags.strip().lower() in ("tags", "labels", "classes")
            ):
                continue  # the header
            rows.append((where, image, _split_tags(tags, where)))
    except csv.Error as e:
        raise PrepareError(f"{path}: malformed CSV ({e})") from None
    if not rows:
        raise PrepareError(f"{path}: no rows")
    return rows


def index_images(folder):
    """{file name: stem} of the image files of `folder` (not its subfolders)."""
    if not os.path.isdir(folder):
        raise PrepareError(f"--images {folder}: folder not found")
    return {
        name: os.path.splitext(name)[0]
        for name in sorted(os.listdir(folder))
        if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")
    }


def resolve_rows(rows, folder):
    """{id: (image file, tags)} in row order. Refuses a row naming no image of `folder`, an
    ambiguous stem (a.jpg and a.png) and a duplicate id, naming the row."""
    files = index_images(folder)
    special = {name: regular_file_problem(os.path.join(folder, name)) for name in files}
    special = {name: problem for name, problem in special.items() if problem}
    if special:  # a FIFO named like an image would block the reader for ever
        name, problem = next(iter(special.items()))
        print(
            f"warning: {folder}: {len(special)} entr(y/ies) named like images are not regular files and are "
            f"left out, e.g. {name} ({problem})",
            file=sys.stderr,
        )
        files = {name: stem for name, stem in files.items() if name not in special}
    by_stem = {}
    for name, stem in files.items():
        by_stem.setdefault(stem, []).append(name)
    items, first = {}, {}
    for where, image, tags in rows:
        check_output_id(image, f"{where}: image", PrepareError)  # a flat folder: no paths
        if image in files:
            name = image
        elif len(by_stem.get(image, ())) == 1:
            name = by_stem[image][0]
        elif image in by_stem:
            raise PrepareError(
                f"{where}: id {image!r} is ambiguous: {', '.join(by_stem[image])} in "
                f"{folder}; name the file with its extension"
            )
        else:
            raise PrepareError(f"{where}: image {image!r} not found in {folder}")
        image_id = files[name]
        if image_id in items:
            raise PrepareError(f"{where}: duplicate id {image_id!r} (first at {first[image_id]})")
        items[image_id], first[image_id] = (os.path.join(folder, name), tags), where
    unused = len(files) - len(items)
    if unused:
        print(f"warning: {folder}: {unused} image(s) have no row in --tags and are left out", file=sys.stderr)
    return items, first


def split_ids(ids, args):
    """{"train": ids, "validation": ids} by the two lists, or by --val_fraction with --seed."""
    if bool(args.train_list) != bool(args.val_list):
        raise UsageError("--train_list and --val_list go together (or use --val_fraction)")
    known = set(ids)
    if args.train_list:
        splits = {
            "train": read_id_list(args.train_list, "train"),
            "validation": read_id_list(args.val_list, "validation"),
        }
        for split, flag in (("train", args.train_list), ("validation", args.val_list)):
            missing = [i for i in splits[split] if i not in known]
            if missing:
                raise PrepareError(f"{flag}: id {missing[0]!r} has no row in --tags ({len(missing)} such id(s))")
        both = sorted(set(splits["train"]) & set(splits["validation"]))
        if both:
            raise PrepareError(f"{args.val_list}: id {both[0]!r} is in the train list too ({len(both)} such id(s))")
        left = len(known) - len(splits["train"]) - len(splits["validation"])
        if left:
            print(f"warning: {left} image(s) of --tags are in neither list and are left out", file=sys.stderr)
        return {split: sorted(split_list) for split, split_list in splits.items()}
    order = sorted(ids)
    count = int(round(args.val_fraction * len(order)))
    if args.val_fraction > 0:
        count = max(count, 1)
    if count >= len(order):
        raise UsageError(f"--val_fraction {args.val_fraction} leaves no training image of {len(order)}")
    shuffled = np.random.default_rng(args.seed).permutation(len(order))
    validation = sorted(order[i] for i in shuffled[:count])
    chosen = set(validation)
    splits = {"train": [i for i in order if i not in chosen]}
    if validation:
        splits["validation"] = validation
    return splits


def choose_classes(items, first, train_ids, args):
    """Foreground class names: --classes, checked against every tag, or the tags' names sorted.
    Every class needs a tagged train image (a class the network never sees cannot be learnt)."""
    if args.classes:
        classes = read_class_list(args.classes)
        allowed = set(classes)
        for image_id, (_, tags) in items.items():
            unknown = [t for t in tags if t not in allowed]
            if unknown:
                raise PrepareError(
                    f"{first[image_id]}: tag {unknown[0]!r} is not in the class list "
                    f"--classes ({len(classes)} classes: {', '.join(classes[:10])}"
                    f"{', ...' if len(classes) > 10 else ''})"
                )
    else:
        for image_id, (_, tags) in items.items():
            for tag in tags:
                check_class_name(tag, first[image_id])
        classes = sorted({t for _, tags in items.values() for t in tags})
        check_case_twins(classes, f"--tags {args.tags}")
        print(f"classes ({len(classes)}, sorted; --classes sets them and their order): {', '.join(classes)}")
    if not classes:
        raise PrepareError(f"--tags {args.tags}: no image has a tag")
    if len(classes) > MAX_FOREGROUND:
        raise PrepareError(
            f"--tags {args.tags}: {len(classes)} classes; at most {MAX_FOREGROUND} fit an 8-bit mask (255 is ignore)"
        )
    in_train = {t for i in train_ids for t in items[i][1]}
    empty = [c for c in classes if c not in in_train]
    if empty:
        hint = " (another --seed or --val_fraction may move one there)" if not args.train_list else ""
        raise PrepareError(
            f"--tags {args.tags}: class {empty[0]!r} has no tagged image in train "
            f"({len(train_ids)} images; {len(empty)} such class(es)); tag one, or drop the "
            f"class from the list{hint}"
        )
    return classes


def check_item(task, num_classes, max_pixels):
    """(id, width, height, mask classes missing from the tags) after decoding the image and its
    mask; PrepareError names the file."""
    image_id, image_path, mask_path, tags = task
    check_source_image(image_path, max_pixels)  # header first: 16-bit and huge images never decode
    try:
        height, width = read_image(image_path).shape[:2]
    except DatasetError as e:  # truncated or undecodable
        raise PrepareError(str(e)) from None
    untagged = []
    if mask_path:
        try:
            mask = check_mask_values(read_mask(mask_path), num_classes, mask_path)
        except FormatError as e:
            raise PrepareError(str(e)) from None
        if mask.shape != (height, width):
            raise PrepareError(
                f"{mask_path}: mask size {mask.shape[1]}x{mask.shape[0]} differs from its "
                f"image {image_path} {width}x{height}"
            )
        present = np.flatnonzero(np.bincount(mask.ravel(), minlength=256)[1:num_classes]) + 1
        untagged = sorted(set(present.tolist()) - set(tags))
    return image_id, width, height, untagged


def write_item(task, split_dir, split, link, palette):
    """Write one image's jpg, xml and mask into `split_dir`."""
    image_id, image_path, mask_path, tags, width, height = task
    target = os.path.join(split_dir, "image", image_id + ".jpg")
    with Image.open(image_path) as image:
        is_jpeg = image.format == "JPEG"
    if is_jpeg:
        place_file(image_path, target, link)
    else:
        with atomic_output(target) as f:
            Image.fromarray(read_image(image_path)).save(f, format="JPEG", quality=95)
    objects = [{"name": tag, "bbox": (1, 1, width, height)} for tag in tags]
    with atomic_output(os.path.join(split_dir, "xml", image_id + ".xml")) as f:
        f.write(voc_annotation_xml(split, image_id + ".jpg", width, height, objects))
    if mask_path:
        save_mask(os.path.join(split_dir, "mask", image_id + ".png"), read_mask(mask_path), palette)
    return 1


def description(classes):
    names = ["background", *classes]
    colors = voc_colors(len(names))
    return {
        "class_names": names,
        "class_dict": {n: i for i, n in enumerate(names)},
        "color_dict": dict(zip(names, colors)),
        "num_classes": len(names),
        "ignore_index": 255,
    }


def check_inputs_outside(out, args):
    """Refuse an OUT that is, or contains, one of the inputs: --overwrite would delete the user's
    own photos and tag file (and leave links to nothing with --link symlink)."""
    real_out = os.path.realpath(out)
    for flag in ("images", "tags", "masks", "classes", "train_list", "val_list"):
        value = getattr(args, flag, None)
        if not value or (flag == "classes" and not os.path.exists(value)):
            continue
        real = os.path.realpath(os.path.expanduser(value))
        if os.path.commonpath([real, real_out]) == real_out:
            raise UsageError(
                f"--out {args.out} {'is' if real == real_out else 'contains'} --{flag} {value}: "
                "the dataset is built beside its inputs, never over them (replacing OUT would "
                "delete them); choose another --out"
            )


def get_args_parser():
    parser = make_parser(
        "Build the seed layout and the --dataset description of your own images and "
        "tags (train, train_aug = train, validation)."
    )
    parser.add_argument("--images", required=True, help="folder of the images")
    parser.add_argument(
        "--tags", required=True, help="CSV of image,tags (tags separated by ';') or JSON {image: [tags]}"
    )
    parser.add_argument(
        "--masks", default=None, help="optional folder of ID.png class-index masks (grey or palette PNG, 255 = ignore)"
    )
    parser.add_argument(
        "--classes",
        default=None,
        help="foreground classes in index order, 'a,b,c' or a file of one per line "
        "(default: the tags' classes, sorted)",
    )
    parser.add_argument(
        "--val_fraction",
        default=0.2,
        type=float,
        help="share of the images drawn for validation (0: no validation split)",
    )
    parser.add_argument("--seed", default=0, type=int, help="seed of the validation draw")
    parser.add_argument(
        "--train_list", default=None, help="id list of train (with --val_list, instead of --val_fraction)"
    )
    parser.add_argument("--val_list", default=None, help="id list of validation")
    parser.add_argument("--out", required=True, help="dataset root to create (the --root_dir of the scripts)")
    parser.add_argument(
        "--name",
        default=None,
        help="dataset name: OUT/{name}.json and the tags' dataset part (default: OUT's folder name)",
    )
    parser.add_argument(
        "--link", default="copy", choices=LINK_MODES, help="how JPEG images reach the output: copy, hardlink or symlink"
    )
    parser.add_argument("--num_workers", default=4, type=int, help="worker processes (0: everything here)")
    parser.add_argument(
        "--overwrite",
        default=False,
        type=str2bool,
        help="replace OUT when it exists (it is replaced only once the new one is complete)",
    )
    add_image_limit_arg(parser)
    return parser


def main(args):
    """Check, build in a temporary folder, verify, rename. Returns {"out", "description",
    "classes", "splits": {split: image count}, "masks": [splits with masks]}."""
    start = time.time()
    out = os.path.normpath(os.path.abspath(os.path.expanduser(args.out)))
    name = check_output_id(args.name or os.path.basename(out), "--name", UsageError)
    check_inputs_outside(out, args)
    if os.path.lexists(out) and not args.overwrite:
        raise UsageError(f"--out {out} exists; choose a new folder or pass --overwrite true")
    if args.masks and not os.path.isdir(args.masks):
        raise PrepareError(f"--masks {args.masks}: folder not found")

    items, first = resolve_rows(read_tag_table(args.tags), args.images)
    splits = split_ids(list(items), args)
    classes = choose_classes(items, first, splits["train"], args)
    masks = {}
    for split, ids in splits.items():
        found = [i for i in ids if args.masks and os.path.isfile(os.path.join(args.masks, i + ".png"))]
        if found and len(found) < len(ids):
            missing = next(i for i in ids if i not in set(found))
            raise PrepareError(
                f"{os.path.join(args.masks, missing + '.png')}: no mask for image {missing!r} of "
                f"{split} ({len(found)} of {len(ids)} have one; a split takes masks for all its "
                "images or none)"
            )
        masks[split] = bool(found)
    if args.masks and not any(masks.values()):
        raise PrepareError(f"--masks {args.masks}: no ID.png for any image")
    mask_of = {i: os.path.join(args.masks, i + ".png") for split, ids in splits.items() if masks[split] for i in ids}
    index = {c: k for k, c in enumerate(classes, 1)}
    tasks = [(i, items[i][0], mask_of.get(i), [index[t] for t in items[i][1]]) for ids in splits.values() for i in ids]
    check = partial(check_item, num_classes=len(classes) + 1, max_pixels=args.max_image_pixels)
    checked = run_parallel(check, tasks, args.num_workers, "check")
    sizes = {i: (w, h) for i, w, h, _ in checked}
    odd = [(i, extra) for i, _, _, extra in checked if extra]
    if odd:  # most often masks indexed in another class order than the description's
        shown = "; ".join(
            f"{os.path.join(args.masks, i + '.png')}: index " + ", ".join(f"{k} ({classes[k - 1]})" for k in extra[:3])
            for i, extra in odd[:3]
        )
        text = (
            f"{len(odd)} mask(s) hold a class their image is not tagged with: {shown}"
            f"{'; ...' if len(odd) > 3 else ''}. Mask index i is the i-th class of: "
            + ", ".join(f"{k} {c}" for k, c in enumerate(classes, 1))
        )
        if not args.classes:  # the masks were not drawn against a given list: an order mix-up, refused
            raise PrepareError(
                text + " (the tags' classes, sorted). Masks drawn in another order: pass that "
                "order as --classes a,b,c (nothing was written)"
            )
        print(f"warning: {text} (--classes)", file=sys.stderr)

    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    # one builder per OUT from here to its final rename (the checks above wrote nothing)
    hold_output(out, "--out")
    remove_stale_temp_files(parent)  # build folders of killed runs whose writer is gone
    work = tempfile.mkdtemp(dir=parent, prefix=temp_prefix(out), suffix=TEMP_SUFFIX)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(work, 0o777 & ~umask)  # mkdtemp's 0700 would become OUT's mode
        description_path = os.path.join(work, name + ".json")
        write_json(description_path, description(classes))
        info = DatasetInfo(description_path)  # the description as the scripts will read it
        rows = {}
        for split, ids in splits.items():
            write = partial(
                write_item, split_dir=os.path.join(work, split), split=split, link=args.link, palette=info.palette
            )
            jobs = [(i, items[i][0], mask_of.get(i), items[i][1], *sizes[i]) for i in ids]
            written = sum(run_parallel(write, jobs, args.num_workers, f"build {split}"))
            rows[split] = verify_split(work, split, ids, masks[split], True, info, args.num_workers)
            rows[split]["written"] = written
        try:  # a link, not a copy: the seeds of train_aug land in the train folder anyway
            os.symlink("train", os.path.join(work, "train_aug"), target_is_directory=True)
        except OSError:
            shutil.copytree(os.path.join(work, "train"), os.path.join(work, "train_aug"))
        old = None
        if os.path.lexists(out) and not args.overwrite:  # made meanwhile by something that took no lock
            raise PrepareError(
                f"--out {out} appeared while this dataset was built; nothing replaced it "
                "(pass --overwrite true to replace it)"
            )
        if os.path.lexists(out):
            old = temp_path(out)
            os.replace(out, old)
        os.replace(work, out)
        if old:
            shutil.rmtree(old) if os.path.isdir(old) and not os.path.islink(old) else os.remove(old)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    description_path = os.path.join(out, name + ".json")
    notes = ["train_aug: a link to train (own data has no separate augmented set)"]
    notes += [f"{split}: no masks (evaluate.py needs them)" for split, has in masks.items() if not has]
    print_summary(out, rows, {}, time.time() - start, notes)
    print(f"\ndataset description: {description_path}\nuse: --root_dir {out} --dataset {description_path}")
    return {
        "out": out,
        "description": description_path,
        "classes": classes,
        "splits": {split: len(ids) for split, ids in splits.items()},
        "masks": [split for split, has in masks.items() if has],
    }


if __name__ == "__main__":
    # Through the package name, so that worker processes can pickle this module's functions.
    from tools.builders.prepare_own import get_args_parser as _parser
    from tools.builders.prepare_own import main as _main

    cli(_main, _parser())
