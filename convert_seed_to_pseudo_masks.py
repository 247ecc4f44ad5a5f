"""Turn seed files into pseudo masks: background plane + dense CRF + argmax (docs/formats.md#pseudo-masks).

    {pred_dir}/{folder}/{tag}/{domain}/ID.pkl  ->  {pred_dir}/pseudo-labels/{tag}/{domain}/ID.png

Example (the original README command):
    python3 convert_seed_to_pseudo_masks.py --gpus 0 --root_dir ../VOC2012/ --dataset VOC \
        --domain validation --folder predictions --tag "ResNet50@VOC@RS+EPM@Official"

Masks already present are skipped, so an interrupted run can simply be started again (every mask
is written atomically: a killed run leaves no half-written PNG behind). A seed file that is
missing or unreadable, or that does not fit its image, is skipped and listed at the end, and
the exit status is then non-zero. The CRF runs on the CPU; --gpus is accepted for
compatibility and ignored. `--mode rw --affinity_tag TAG` makes random-walk masks instead, into
pseudo-labels/{tag}@rw/{domain}/ (tools/seeds/rw_convert.py; docs/method.md#random-walk).
"""
import multiprocessing
import os
import sys

import tqdm

from core.crf import CRF_DEFAULTS, seed_to_mask
from core.datasets import load_dataset_info
from core.errors import DatasetError, FormatError, UsageError
from core.io import claim_output_folder, load_seed, save_mask, settings_path
from core.safety import remove_stale_temp_files, safe_output_path
from tools.seeds import rw_convert
from tools.args import (add_dataset_args, add_device_args, add_experiment_args, add_image_limit_arg,
                        add_overwrite_arg, add_seed_limit_arg, cli, make_parser, str2bool)
from tools.paths import pseudo_labels_dir
from tools.seeds.seed_reading import seed_inputs

# Set in every worker process (and in-process for --num_workers <= 1) by _init_worker.
_JOB = None


def build_parser():
    parser = make_parser(description=__doc__.split("\n\n")[0])
    add_device_args(parser)
    parser.set_defaults(num_workers=16)  # the original's default; each worker converts one image at a time
    add_dataset_args(parser, domain="train")
    add_experiment_args(parser)
    parser.add_argument("--single", default=False, type=str2bool,
                        help="convert only images with exactly one image-level tag (needs xml/)")
    parser.add_argument("--folder", default="predictions", type=str,
                        help="folder under --pred_dir that holds the seed files")
    parser.add_argument("--mode", default="crf", type=str,
                        help="'crf' refines with the dense CRF; 'rw' runs the random walk of --affinity_tag "
                             "into pseudo-labels/{tag}@rw/; any other value takes the plain argmax "
                             "with the constant --bg_th background")
    parser.add_argument("--bg_th", default=None, type=float,
                        help="constant background score for rsepm seeds (wins over --bg_gamma)")
    parser.add_argument("--bg_gamma", default=2.0, type=float,
                        help="rsepm background score (1 - max_c seed_c) ** bg_gamma, when --bg_th is not given")
    parser.add_argument("--reverse", default=False, type=str2bool,
                        help="process the images in reverse order (to run a second job from the other end)")
    add_image_limit_arg(parser)
    add_seed_limit_arg(parser)
    add_overwrite_arg(parser, "masks")
    rw_convert.add_rw_args(parser)
    return parser


def prepare(args):
    """Check the inputs and list the work.

    Returns (job, ids, num_existing): `job` is everything a worker needs, `ids` the images
    whose mask is still missing. Raises DatasetError / FileNotFoundError / ValueError for
    problems that concern the whole run.
    """
    info = load_dataset_info(args.dataset)
    layout, seed_dir, ids = seed_inputs(args, info)
    if args.mode != "crf" and args.bg_th is None:
        # The original crashed here; say what is missing instead.
        raise UsageError(f"--mode {args.mode} (argmax without CRF) needs --bg_th, the constant "
                         "background score of rsepm seeds")
    mask_dir = pseudo_labels_dir(args.pred_dir, args.tag, args.domain)
    remove_stale_temp_files(mask_dir)  # what killed runs left half-written
    claim_masks(args, seed_dir, mask_dir)
    pending = [i for i in ids if not os.path.isfile(os.path.join(mask_dir, i + ".png"))]
    job = dict(layout=layout, seed_dir=seed_dir, mask_dir=mask_dir, tag=args.tag, mode=args.mode,
               max_seed_bytes=args.max_seed_bytes,
               bg_th=args.bg_th, bg_gamma=args.bg_gamma, palette=info.palette, num_classes=info.num_classes)
    return job, pending, len(ids) - len(pending)


def claim_masks(args, seed_dir, mask_dir):
    """Record what shapes the masks beside their folder (pseudo-labels/{tag}/{domain}.settings.json)
    and refuse to add to masks made with other settings (core.io.claim_output_folder): the
    seed folder and its own settings record, the background and CRF settings."""
    seed_record = settings_path(seed_dir)
    seeds = None
    if os.path.isfile(seed_record):
        from core.io import read_json
        seeds = read_json(seed_record)
    settings = {"seed_dir": os.path.abspath(seed_dir), "seed_settings": seeds, "dataset": args.dataset,
                "mode": args.mode, "bg_th": args.bg_th, "bg_gamma": None if args.bg_th is not None else args.bg_gamma,
                "crf": CRF_DEFAULTS if args.mode == "crf" else None}
    os.makedirs(mask_dir, exist_ok=True)
    deleted = claim_output_folder(mask_dir, settings, ".png", overwrite=args.overwrite, ignore=("path", "seed_dir"))
    if deleted:
        print(f"--overwrite: deleted {deleted} masks of {mask_dir}")


def _init_worker(job):
    global _JOB
    _JOB = job


def convert_one(image_id):
    """Convert one image. Returns (image_id, None) when written, (image_id, problem) when skipped.

    Problems with this image's files are returned, not raised, so the run goes on; anything
    else (e.g. the disk is full) propagates and stops the run.
    """
    job = _JOB
    seed_path = os.path.join(job["seed_dir"], image_id + ".pkl")
    if not os.path.isfile(seed_path):
        return image_id, f"{seed_path}: seed file not found"
    try:
        seed = load_seed(seed_path, tag=job["tag"], max_bytes=job.get("max_seed_bytes"))
        image = job["layout"].read_image(image_id)
        mask = seed_to_mask(seed, image, mode=job["mode"], bg_th=job["bg_th"], bg_gamma=job["bg_gamma"],
                            num_classes=job["num_classes"], source=seed_path)
    except (FormatError, DatasetError) as e:
        return image_id, str(e)
    save_mask(safe_output_path(job["mask_dir"], image_id + ".png"), mask, job["palette"])
    return image_id, None


def run_all(job, ids, num_workers):
    """Yield convert_one results for `ids`, in-process or over a pool of `num_workers` processes."""
    if num_workers <= 1 or len(ids) <= 1 or (os.cpu_count() or 1) == 1:
        _init_worker(job)
        yield from map(convert_one, ids)
        return
    # More processes than cores only adds memory: the CRF of one image runs on one core.
    workers = min(num_workers, len(ids), os.cpu_count() or 1)
    # Each image takes about a second of CRF, so small chunks cost nothing and keep workers balanced.
    chunksize = max(1, min(4, len(ids) // (workers * 8)))
    with multiprocessing.Pool(workers, initializer=_init_worker, initargs=(job,)) as pool:
        yield from pool.imap_unordered(convert_one, ids, chunksize=chunksize)


def main(argv=None):
    """Run the conversion. Returns {"written", "skipped_existing", "failed": [{"id", "problem"}],
    "output_dir"}; exits with an error message on problems that concern the whole run."""
    return cli(run, argv)


def run(argv):
    args = build_parser().parse_args(argv)
    if args.mode == "rw":  # the random walk: tools/seeds/rw_convert.py, same prepare/run_all interface
        job, ids, num_existing = rw_convert.prepare(args)
        results = rw_convert.run_all(job, ids, args.num_workers)
    else:
        job, ids, num_existing = prepare(args)
        results = run_all(job, ids, args.num_workers)
    summary = {"written": 0, "skipped_existing": num_existing, "failed": [], "output_dir": job["mask_dir"]}
    progress = tqdm.tqdm(results, total=len(ids), desc="seed -> mask",
                         unit="img", dynamic_ncols=True)
    for image_id, problem in progress:
        if problem is None:
            summary["written"] += 1
        else:
            summary["failed"].append({"id": image_id, "problem": problem})
            tqdm.tqdm.write(f"skipped {image_id}: {problem}", file=sys.stderr)
    report(summary)
    return summary


def report(summary):
    print(f"{summary['output_dir']}: wrote {summary['written']} masks, "
          f"{summary['skipped_existing']} already present, {len(summary['failed'])} failed")
    if summary["failed"]:
        print(f"{len(summary['failed'])} image(s) could not be converted:", file=sys.stderr)
        for failure in sorted(summary["failed"], key=lambda f: f["id"]):
            print(f"  {failure['id']}: {failure['problem']}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(1 if main()["failed"] else 0)
