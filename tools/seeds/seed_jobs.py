"""What every per-image seed stage shares (convert_seed_to_pseudo_masks.py in its CRF and random-walk
modes, and the relation labels of train_affinity.py): the split, the seed folder and the ids to
process, the settings record of the seed folder, and SeedJob, the one per-image job: seed file +
image -> palette PNG, with one set of skipped errors, one size guard and one pool (tools.pool)."""

import os

from core.dataset_layout import SeedLayout
from core.errors import FormatError, MissingFileError, OutputError
from core.io import claim_output_folder, load_seed, read_json, save_mask, settings_path
from core.relations import foreground_planes
from core.safety import regular_file_problem, safe_output_path
from tools.paths import output_dir
from tools.pool import SKIPPED_ERRORS, collect, item_write_problem, pool_size, run_job


def seed_inputs(args, info):
    """The dataset split and seed folder a conversion reads, and the image ids in processing order
    (`--single`: one-tag images only; `--reverse`)."""
    layout = SeedLayout(args.root_dir, args.domain, info, require_xml=args.single, max_pixels=args.max_image_pixels)
    seed_dir = output_dir(args.pred_dir, args.folder, args.tag, args.domain)
    if not os.path.isdir(seed_dir):
        raise MissingFileError(
            f"{seed_dir}: seed folder not found (run infer_rsepm.py or infer_seg.py "
            "first, or check --pred_dir, --folder, --tag and --domain)"
        )
    ids = layout.ids
    if args.single:
        ids = [i for i in ids if len(layout.read_tags(i, required=True)) == 1]
    if args.reverse:
        ids = ids[::-1]
    return layout, seed_dir, ids


def claim_from_seeds(out_dir, seed_dir, settings, overwrite, root=None, instead="use a new --tag"):
    """claim_output_folder for PNGs made from `seed_dir`: the settings record the seed folder and
    its own record by content, so new seeds in the same folder count as other settings."""
    record = settings_path(seed_dir)
    settings = {
        "seed_dir": os.path.abspath(seed_dir),
        "seed_settings": read_json(record) if os.path.isfile(record) else None,
        **settings,
    }
    claim_output_folder(
        out_dir, settings, ".png", overwrite=overwrite, ignore=("path", "seed_dir"), root=root, instead=instead
    )


def foreground(seed, image, seed_path, num_classes):
    """A loaded seed's foreground planes (float32 (K, H, W)) and class indices (int64 (K,)).
    Raises FormatError naming `seed_path` when the planes do not have the image's size or a class
    index lies outside 1..num_classes - 1."""
    planes, keys = foreground_planes(seed)
    if planes.shape[1:] != image.shape[:2]:
        raise FormatError(
            f"{seed_path}: seed size {planes.shape[2]}x{planes.shape[1]} differs from its "
            f"image {image.shape[1]}x{image.shape[0]}"
        )
    if keys.size and (keys.min() < 1 or keys.max() >= num_classes):
        raise FormatError(f"{seed_path}: class indices {keys.tolist()} outside 1..{num_classes - 1}")
    return planes, keys


def read_foreground(seed_path, tag, layout, image_id, num_classes, max_bytes=None):
    """(planes, keys, image) of one image: load_seed, read_image and foreground()."""
    image = layout.read_image(image_id)
    planes, keys = foreground(load_seed(seed_path, tag=tag, max_bytes=max_bytes), image, seed_path, num_classes)
    return planes, keys, image


class SeedJob:
    """seed_dir/ID.pkl + the image -> out_dir/ID.png. A subclass defines make(seed, image, seed_path)
    -> uint8 (H, W) mask, and setup() for what each process loads once (a network)."""

    def __init__(self, layout, seed_dir, out_dir, tag, palette, max_seed_bytes):
        self.layout, self.seed_dir, self.out_dir, self.tag = layout, seed_dir, out_dir, tag
        self.palette, self.max_seed_bytes = palette, max_seed_bytes
        self.num_classes = layout.info.num_classes

    def setup(self):
        pass

    def make(self, seed, image, seed_path):
        raise NotImplementedError

    def __call__(self, image_id):
        """(image_id, None) when written, (image_id, problem) when skipped."""
        seed_path = os.path.join(self.seed_dir, image_id + ".pkl")
        problem = regular_file_problem(seed_path)
        if problem:  # a FIFO would block the reader for ever
            return (
                image_id,
                f"{seed_path}: seed file {problem}" if problem == "not found" else f"{seed_path}: {problem}",
            )
        try:
            seed = load_seed(seed_path, tag=self.tag, max_bytes=self.max_seed_bytes)
            mask = self.make(seed, self.layout.read_image(image_id), seed_path)
        except SKIPPED_ERRORS as e:
            return image_id, str(e)
        try:
            save_mask(safe_output_path(self.out_dir, image_id + ".png"), mask, self.palette)
        except OutputError as e:  # one file the system refuses is skipped; a full disk stops the run
            if item_write_problem(e) is None:
                raise
            return image_id, item_write_problem(e)
        return image_id, None

    def pending(self, ids):
        return [i for i in ids if not os.path.isfile(os.path.join(self.out_dir, i + ".png"))]

    def workers(self, num_workers, count):
        """Worker processes for `count` images (0: in this process)."""
        return pool_size(num_workers, count)


def run_seed_job(job, ids, workers, desc, progress=True):
    """Run `job` on `ids` over `workers` processes (0: here): (written, [{"id", "problem"}] skipped)."""
    return collect(run_job(job, ids, workers), len(ids), desc, progress)
