"""What both conversions of seed files read (convert_seed_to_pseudo_masks.py in its CRF and
random-walk modes, and the relation labels of train_affinity.py): the split, the seed folder and
the ids to process, and one image's foreground planes checked against the image and the classes."""
import os

from core.datasets import SeedLayout
from core.errors import FormatError, MissingFileError
from core.io import load_seed
from core.relations import foreground_planes
from tools.paths import output_dir


def seed_inputs(args, info):
    """The dataset split and seed folder a conversion reads, and the image ids in processing order
    (`--single`: one-tag images only; `--reverse`)."""
    layout = SeedLayout(args.root_dir, args.domain, info, require_xml=args.single, max_pixels=args.max_image_pixels)
    seed_dir = output_dir(args.pred_dir, args.folder, args.tag, args.domain)
    if not os.path.isdir(seed_dir):
        raise MissingFileError(f"{seed_dir}: seed folder not found (run infer_rsepm.py or infer_seg.py "
                               "first, or check --pred_dir, --folder, --tag and --domain)")
    ids = layout.ids
    if args.single:
        ids = [i for i in ids if len(layout.read_tags(i, required=True)) == 1]
    if args.reverse:
        ids = ids[::-1]
    return layout, seed_dir, ids


def read_foreground(seed_path, tag, layout, image_id, num_classes, max_bytes=None):
    """One image's foreground seed planes, their class indices and the image.

    Returns (planes float32 (K, H, W), keys int64 (K,), image uint8 (H, W, 3)).
    Raises FormatError naming `seed_path` when the planes do not have the image's size or a class
    index lies outside 1..num_classes - 1 (and what load_seed / read_image raise).
    """
    planes, keys = foreground_planes(load_seed(seed_path, tag=tag, max_bytes=max_bytes))
    image = layout.read_image(image_id)
    if planes.shape[1:] != image.shape[:2]:
        raise FormatError(f"{seed_path}: seed size {planes.shape[2]}x{planes.shape[1]} differs from its "
                          f"image {image.shape[1]}x{image.shape[0]}")
    if keys.size and (keys.min() < 1 or keys.max() >= num_classes):
        raise FormatError(f"{seed_path}: class indices {keys.tolist()} outside 1..{num_classes - 1}")
    return planes, keys, image
