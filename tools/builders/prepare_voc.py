"""Build the seed layout (docs/formats.md#dataset-layout) of PASCAL VOC 2012 from the official downloads.

    python tools/builders/prepare_voc.py --devkit VOCdevkit/VOC2012 --sbd SBD_or_SegmentationClassAug \
        --test_devkit VOC2012test/VOCdevkit/VOC2012 --out ../VOC2012/ --link hardlink

Inputs
  --devkit       VOCtrainval_11-May-2012: JPEGImages/, Annotations/, SegmentationClass/,
                 ImageSets/Segmentation/{train,val}.txt (the VOC2012 folder or a parent of it).
  --sbd          the SBD augmentation, either form:
                 * a folder holding SegmentationClassAug/ (grey index PNGs), with an optional
                   train_aug id list (train_aug.txt, list/train_aug.txt or --train_aug_list);
                 * the original SBD release (benchmark_RELEASE/dataset/: cls/*.mat with
                   GTcls.Segmentation, img/*.jpg, train.txt, val.txt).
  --test_devkit  VOC2012test: JPEGImages/, ImageSets/Segmentation/test.txt.

Output: ROOT/{train,train_aug,validation}/{image,mask,xml}/ and ROOT/test/image/.

Masks are always re-saved as palette PNGs of class indices (255 kept) through core.io.save_mask.
VOC SegmentationClass PNGs are palette PNGs whose pixel indices are the classes, so indices are
read, never colours. For a train_aug id that has a VOC SegmentationClass mask (the 1,464 VOC
train ids) that mask is used: SegmentationClassAug carries a copy of it anyway, and the VOC file
is the original with its 255 object borders, while SBD .mat labels have no borders at all.

Re-running skips finished files (every write is atomic), then verifies the whole output.
"""

import os
import sys
import time
from functools import partial

import numpy as np

if __package__ in (None, ""):  # run as a file, python tools/GROUP/NAME.py: the repository root on the import path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


from core.dataset_layout import DatasetInfo  # noqa: E402
from core.errors import (
    FormatError,  # noqa: E402
    PrepareError,  # noqa: E402
)
from core.io import read_mask, save_mask  # noqa: E402
from core.safety import hold_output, safe_output_path  # noqa: E402
from tools.args import cli, make_parser  # noqa: E402
from tools.builders.build_steps import (  # noqa: E402
    add_output_args,
    check_mask_values,
    check_official_counts,
    check_source_image,
    place_file,
    print_summary,
    read_id_list,
    resolve_folder,
    run_counting_skips,
    verify_split,
)
from tools.pool import available_cpus, main_threads, pool_size  # noqa: E402

OFFICIAL_COUNTS = {"train": 1464, "train_aug": 10582, "validation": 1449, "test": 1456}


def _item(image_id, image, xml=None, mask=None):
    """One output image: its id and its source files (None = not produced for this split)."""
    return {"id": image_id, "image": image, "xml": xml, "mask": mask}


def _require(path, what, image_id, list_path):
    if not os.path.isfile(path):
        raise PrepareError(f"{list_path}: id {image_id} has no {what} ({path} not found)")
    return path


def devkit_items(devkit, ids, list_path, with_labels=True):
    """Items of a VOC split: JPEGImages jpg, plus Annotations xml and SegmentationClass png."""
    items = []
    for image_id in ids:
        image = _require(os.path.join(devkit, "JPEGImages", image_id + ".jpg"), "image", image_id, list_path)
        if with_labels:
            xml = _require(os.path.join(devkit, "Annotations", image_id + ".xml"), "annotation", image_id, list_path)
            mask = _require(os.path.join(devkit, "SegmentationClass", image_id + ".png"), "mask", image_id, list_path)
            items.append(_item(image_id, image, xml, mask))
        else:
            items.append(_item(image_id, image))
    return items


def find_sbd(path):
    """Recognise the form of `--sbd`: ("aug", SegmentationClassAug dir, its parent) or
    ("mat", SBD dataset/cls dir, SBD dataset dir)."""
    root = os.path.normpath(os.path.expanduser(path))
    if not os.path.isdir(root):
        raise PrepareError(f"--sbd {root}: folder not found")
    if os.path.isdir(os.path.join(root, "SegmentationClassAug")):
        return "aug", os.path.join(root, "SegmentationClassAug"), root
    if os.path.basename(root) == "SegmentationClassAug":
        return "aug", root, os.path.dirname(root)
    for candidate in (".", "dataset", os.path.join("benchmark_RELEASE", "dataset")):
        folder = os.path.normpath(os.path.join(root, candidate))
        if os.path.isdir(os.path.join(folder, "cls")):
            return "mat", os.path.join(folder, "cls"), folder
    raise PrepareError(
        f"--sbd {root}: neither a SegmentationClassAug/ folder nor an SBD release (dataset/cls/*.mat) found"
    )


def find_train_aug_list(explicit, sbd_root, devkit):
    """The train_aug list to use, or None to build it: --train_aug_list, else a train_aug.txt
    next to SegmentationClassAug, in list/, or in the devkit's ImageSets/Segmentation."""
    if explicit:
        if not os.path.isfile(explicit):
            raise PrepareError(f"--train_aug_list {explicit}: list file not found")
        return explicit
    for path in (
        os.path.join(sbd_root, "train_aug.txt"),
        os.path.join(sbd_root, "list", "train_aug.txt"),
        os.path.join(devkit, "ImageSets", "Segmentation", "train_aug.txt"),
    ):
        if os.path.isfile(path):
            return path
    return None


def train_aug_items(args, devkit, train_ids, val_ids):
    """Items of train_aug and a note on where its masks come from.

    The id list is the given train_aug list, else (SBD train + SBD val + VOC train) minus VOC
    val: with SegmentationClassAug the SBD ids are its PNG stems. Images and xml come from the
    VOC devkit (SBD images are a subset of VOC2012 trainval); the SBD img/ folder is only a
    fall-back for the image. Masks: VOC SegmentationClass when it has the id, else SBD.
    """
    form, mask_dir, sbd_root = find_sbd(args.sbd)
    list_path = find_train_aug_list(args.train_aug_list, sbd_root, devkit)
    if list_path:
        ids = read_id_list(list_path, "train_aug")
        leaked = set(ids) & set(val_ids)
        if leaked:
            print(
                f"warning: {list_path}: {len(leaked)} train_aug ids are VOC validation images, "
                f"e.g. {sorted(leaked)[0]}",
                file=sys.stderr,
            )
    else:
        if form == "mat":
            sbd_ids = read_id_list(os.path.join(sbd_root, "train.txt"), "SBD train") + read_id_list(
                os.path.join(sbd_root, "val.txt"), "SBD val"
            )
        else:
            sbd_ids = [f[:-4] for f in os.listdir(mask_dir) if f.endswith(".png")]
        excluded = set(val_ids)
        ids = sorted(set(sbd_ids + list(train_ids)) - excluded)
        list_path = f"train_aug ids built from {mask_dir} and the VOC train list"
        if not ids:
            raise PrepareError(f"{list_path}: no ids")
    voc_masks = sbd_masks = 0
    items = []
    for image_id in ids:
        image = os.path.join(devkit, "JPEGImages", image_id + ".jpg")
        if not os.path.isfile(image) and form == "mat":
            image = os.path.join(sbd_root, "img", image_id + ".jpg")
        _require(
            image, "image (in VOC JPEGImages" + (" or SBD img" if form == "mat" else "") + ")", image_id, list_path
        )
        xml = _require(os.path.join(devkit, "Annotations", image_id + ".xml"), "annotation", image_id, list_path)
        mask = os.path.join(devkit, "SegmentationClass", image_id + ".png")
        if os.path.isfile(mask):
            voc_masks += 1
        else:
            mask = os.path.join(mask_dir, image_id + (".mat" if form == "mat" else ".png"))
            _require(mask, "mask (in VOC SegmentationClass or " + mask_dir + ")", image_id, list_path)
            sbd_masks += 1
        items.append(_item(image_id, image, xml, mask))
    source = "SBD cls .mat" if form == "mat" else "SegmentationClassAug"
    note = (
        f"train_aug masks: {voc_masks:,} from VOC SegmentationClass (preferred where present), "
        f"{sbd_masks:,} from {source}"
    )
    return items, note


def read_sbd_mat(path):
    """(H, W) class indices of an SBD dataset/cls/*.mat file (struct GTcls, field Segmentation)."""
    from scipy.io import loadmat  # only needed for the original SBD release

    try:
        mat = loadmat(path)
    except (OSError, ValueError, TypeError, NotImplementedError) as e:
        raise PrepareError(f"{path}: cannot read SBD .mat file ({e})") from None
    try:
        # loadmat gives a MATLAB struct as a (1, 1) record array
        return np.asarray(mat["GTcls"][0, 0]["Segmentation"])
    except (KeyError, ValueError, IndexError, TypeError):
        raise PrepareError(
            f"{path}: no GTcls.Segmentation (expected an SBD dataset/cls/*.mat file, "
            f"found variables {sorted(k for k in mat if not k.startswith('__'))})"
        ) from None


def load_source_mask(path, num_classes):
    """Class-index mask (H, W) uint8 of a VOC / SegmentationClassAug PNG or an SBD .mat."""
    if path.endswith(".mat"):
        mask = read_sbd_mat(path)
    else:
        try:
            mask = read_mask(path)  # palette indices, never colours
        except (FileNotFoundError, FormatError) as e:
            raise PrepareError(str(e)) from None
    return check_mask_values(mask, num_classes, path)


def build_item(item, split_dir, link, num_classes, palette, max_pixels=None):
    """Write one image's files into `split_dir`; returns how many files were written."""
    image_id = item["id"]
    check_source_image(item["image"], max_pixels)  # header only: refuses 16-bit or huge images before writing
    written = place_file(item["image"], safe_output_path(split_dir, os.path.join("image", image_id + ".jpg")), link)
    if item["xml"]:
        written += place_file(item["xml"], safe_output_path(split_dir, os.path.join("xml", image_id + ".xml")), link)
    if item["mask"]:
        mask_path = safe_output_path(split_dir, os.path.join("mask", image_id + ".png"))
        if not os.path.exists(mask_path):
            save_mask(mask_path, load_source_mask(item["mask"], num_classes), palette)
            written += 1
    return written


def build_split(out_root, split, items, link, info, num_workers, max_pixels=None):
    """Write every item of a split; returns the number of files written. An item with a bad
    input file is skipped; PrepareError lists them all after the others are written."""
    work = partial(
        build_item,
        split_dir=os.path.join(out_root, split),
        link=link,
        num_classes=info.num_classes,
        palette=info.palette,
        max_pixels=max_pixels,
    )
    return run_counting_skips(work, items, num_workers, f"build {split}", f"VOC2012 {split}")


def collect_splits(args):
    """{split: items} from the inputs, every source file checked before anything is written."""
    devkit = resolve_folder(
        args.devkit, "--devkit", "JPEGImages", (".", "VOC2012", os.path.join("VOCdevkit", "VOC2012"))
    )
    for sub in ("Annotations", "SegmentationClass"):
        if not os.path.isdir(os.path.join(devkit, sub)):
            raise PrepareError(f"--devkit {devkit}: {sub}/ not found")
    lists = os.path.join(devkit, "ImageSets", "Segmentation")
    train_ids = read_id_list(os.path.join(lists, "train.txt"), "VOC train")
    val_ids = read_id_list(os.path.join(lists, "val.txt"), "VOC val")
    splits = {
        "train": devkit_items(devkit, train_ids, os.path.join(lists, "train.txt")),
        "validation": devkit_items(devkit, val_ids, os.path.join(lists, "val.txt")),
    }
    notes = []
    if args.sbd:
        splits["train_aug"], note = train_aug_items(args, devkit, train_ids, val_ids)
        notes.append(note)
    else:
        notes.append("train_aug: not built (no --sbd)")
    if args.test_devkit:
        test_devkit = resolve_folder(
            args.test_devkit, "--test_devkit", "JPEGImages", (".", "VOC2012", os.path.join("VOCdevkit", "VOC2012"))
        )
        test_list = os.path.join(test_devkit, "ImageSets", "Segmentation", "test.txt")
        splits["test"] = devkit_items(test_devkit, read_id_list(test_list, "VOC test"), test_list, with_labels=False)
    else:
        notes.append("test: not built (no --test_devkit)")
    return splits, notes


def get_args_parser():
    parser = make_parser("Build the seed layout of PASCAL VOC 2012 (train, train_aug, validation, test).")
    parser.add_argument(
        "--devkit", required=True, type=str, help="VOC2012 trainval folder (VOCdevkit/VOC2012 or a parent of it)"
    )
    parser.add_argument(
        "--sbd",
        default=None,
        type=str,
        help="SBD augmentation: folder with SegmentationClassAug/, or the SBD release "
        "(benchmark_RELEASE/dataset with cls/*.mat); builds train_aug",
    )
    parser.add_argument(
        "--train_aug_list",
        default=None,
        type=str,
        help="train_aug id list (default: train_aug.txt beside SegmentationClassAug, "
        "else built as SBD train+val + VOC train - VOC val)",
    )
    parser.add_argument(
        "--test_devkit",
        default=None,
        type=str,
        help="VOC2012 test folder (VOCdevkit/VOC2012 of VOC2012test); builds test",
    )
    add_output_args(parser, "../VOC2012/")
    return parser


def main(args):
    """Build, verify and summarise. Returns {split: counts incl. "written"}."""
    start = time.time()
    main_threads(args.threads, pool_size(args.num_workers, available_cpus()))
    info = DatasetInfo("VOC")
    out_root = os.path.normpath(os.path.expanduser(args.out))
    hold_output(out_root, "--out")  # one builder per dataset root
    splits, notes = collect_splits(args)
    check_official_counts(
        {s: len(items) for s, items in splits.items()}, OFFICIAL_COUNTS, args.expect_official, "VOC2012"
    )
    written = {
        split: build_split(
            out_root, split, items, args.link, info, args.num_workers, getattr(args, "max_image_pixels", None)
        )
        for split, items in splits.items()
    }
    rows = {}
    for split, items in splits.items():
        labelled = split != "test"
        rows[split] = verify_split(
            out_root, split, [item["id"] for item in items], labelled, labelled, info, args.num_workers
        )
        rows[split]["written"] = written[split]
    print_summary(out_root, rows, OFFICIAL_COUNTS, time.time() - start, notes)
    return rows


if __name__ == "__main__":
    # Run through the package name so worker processes can pickle this module's functions.
    from tools.builders.prepare_voc import get_args_parser as _parser
    from tools.builders.prepare_voc import main as _main

    cli(_main, _parser())
