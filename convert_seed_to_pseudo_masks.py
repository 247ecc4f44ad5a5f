"""Turn seed files into pseudo masks: background plane + dense CRF + argmax (docs/formats.md#pseudo-masks).

    {pred_dir}/{folder}/{tag}/{domain}/ID.pkl  ->  {pred_dir}/pseudo-labels/{tag}/{domain}/ID.png

Example (the original README command):
    python3 convert_seed_to_pseudo_masks.py --gpus 0 --root_dir ../VOC2012/ --dataset VOC \
        --domain validation --folder predictions --tag "ResNet50@VOC@RS+EPM@Official"

Masks already present are skipped, so an interrupted run can simply be started again (every mask
is written atomically: a killed run leaves no half-written PNG behind). A seed file that is
missing or unreadable, or that does not fit its image, is skipped and listed at the end, and
the exit status is then non-zero. The CRF runs on the CPU, which ignores --gpus (accepted for
compatibility). `--mode rw --affinity_tag TAG` makes random-walk masks instead, into
pseudo-labels/{tag}@rw/{domain}/, with one process per GPU of --gpus (tools/seeds/rw_convert.py;
docs/method.md#random-walk).
"""

from core.crf import CRF_DEFAULTS, seed_to_mask
from core.dataset_layout import load_dataset_info
from core.errors import UsageError
from tools.args import (
    add_dataset_args,
    add_device_args,
    add_experiment_args,
    add_image_limit_arg,
    add_overwrite_arg,
    add_seed_limit_arg,
    cli,
    make_parser,
    str2bool,
)
from tools.paths import pseudo_labels_dir
from tools.pool import list_skipped, main_threads
from tools.seeds import rw_convert
from tools.seeds.seed_jobs import SeedJob, claim_from_seeds, run_seed_job, seed_inputs
from tools.shards import Shard, run_spawned


def get_args_parser():
    parser = make_parser(description=__doc__.split("\n\n")[0])
    add_device_args(parser)
    parser.set_defaults(num_workers=16)  # the original's default; each worker converts one image at a time
    gpus = next(a for a in parser._actions if "--gpus" in a.option_strings)
    gpus.help = (
        "comma-separated CUDA device ids of --mode rw (one process per GPU; the CPU when CUDA is "
        "unavailable); the CRF and argmax modes run on the CPU and ignore it"
    )
    add_dataset_args(parser, domain="train")
    add_experiment_args(parser)
    parser.add_argument(
        "--single",
        default=False,
        type=str2bool,
        help="convert only images with exactly one image-level tag (needs xml/)",
    )
    parser.add_argument(
        "--folder", default="predictions", type=str, help="folder under --pred_dir that holds the seed files"
    )
    parser.add_argument(
        "--mode",
        default="crf",
        type=str,
        help="'crf' refines with the dense CRF; 'rw' runs the random walk of --affinity_tag "
        "into pseudo-labels/{tag}@rw/; any other value takes the plain argmax "
        "with the constant --bg_th background",
    )
    parser.add_argument(
        "--bg_th", default=None, type=float, help="constant background score for rsepm seeds (wins over --bg_gamma)"
    )
    parser.add_argument(
        "--bg_gamma",
        default=2.0,
        type=float,
        help="rsepm background score (1 - max_c seed_c) ** bg_gamma, when --bg_th is not given",
    )
    parser.add_argument(
        "--reverse",
        default=False,
        type=str2bool,
        help="process the images in reverse order (to run a second job from the other end)",
    )
    add_image_limit_arg(parser)
    add_seed_limit_arg(parser)
    add_overwrite_arg(parser, "masks")
    rw_convert.add_rw_args(parser)
    return parser


class CRFJob(SeedJob):
    """Background plane + dense CRF (or argmax) of one seed file."""

    def __init__(self, *common, mode, bg_th, bg_gamma):
        super().__init__(*common)
        self.mode, self.bg_th, self.bg_gamma = mode, bg_th, bg_gamma

    def make(self, seed, image, seed_path):
        return seed_to_mask(
            seed,
            image,
            mode=self.mode,
            bg_th=self.bg_th,
            bg_gamma=self.bg_gamma,
            num_classes=self.num_classes,
            source=seed_path,
        )


def prepare(args, claim=True):
    """Check the inputs, claim the output folder (unless `claim` is false: another rank of this run
    did) and list the work: (job, ids). Raises DatasetError / MissingFileError / UsageError for
    problems that concern the whole run."""
    info = load_dataset_info(args.dataset)
    layout, seed_dir, ids = seed_inputs(args, info)
    if args.mode != "crf" and args.bg_th is None:
        # The original crashed here; say what is missing instead.
        raise UsageError(
            f"--mode {args.mode} (argmax without CRF) needs --bg_th, the constant background score of rsepm seeds"
        )
    mask_dir = pseudo_labels_dir(args.pred_dir, args.tag, args.domain)
    # what shapes the masks: the seeds (claim_from_seeds), the background and CRF settings
    if claim:
        claim_from_seeds(
            mask_dir,
            seed_dir,
            {
                "dataset": args.dataset,
                "mode": args.mode,
                "bg_th": args.bg_th,
                "bg_gamma": None if args.bg_th is not None else args.bg_gamma,
                "crf": CRF_DEFAULTS if args.mode == "crf" else None,
            },
            args.overwrite,
            root=args.pred_dir,
        )
    job = CRFJob(
        layout,
        seed_dir,
        mask_dir,
        args.tag,
        info.palette,
        args.max_seed_bytes,
        mode=args.mode,
        bg_th=args.bg_th,
        bg_gamma=args.bg_gamma,
    )
    return job, ids


def convert_share(shard, job, ids, num_workers, threads):
    """The masks of `shard`'s share of `ids` (those not written yet) on its device (--mode rw):
    {"rank", "images", "written", "skipped_existing", "failed"}."""
    if shard.device is not None and hasattr(job, "device"):
        job.device = str(shard.device)
    mine = shard.share(ids)
    pending = job.pending(mine)
    if shard.world > 1:
        print(
            f"rank {shard.rank} of {shard.world}: {len(mine)} images ({len(mine) - len(pending)} done)"
            + (f" on {job.device}" if hasattr(job, "device") else ""),
            flush=True,
        )
    workers = job.workers(num_workers, len(pending))
    main_threads(threads, workers, verbose=shard.is_main)
    written, failed = run_seed_job(job, pending, workers, "seed -> mask", progress=shard.is_main)
    return {
        "rank": shard.rank,
        "images": len(mine),
        "written": written,
        "skipped_existing": len(mine) - len(pending),
        "failed": failed,
    }


def main(args):
    """Run the conversion, spread over processes as tools/shards.py says (torchrun ranks; with
    --mode rw, one process per GPU of --gpus). Returns {"written", "skipped_existing", "failed":
    [{"id", "problem"}], "output_dir"}; problems that concern the whole run raise a ProjectError."""
    shard = Shard.from_environment()
    prepare_job = rw_convert.prepare if args.mode == "rw" else prepare
    if shard.is_main:  # the folder is claimed once, before any share is written
        job, ids = prepare_job(args)
    shard.barrier()
    if not shard.is_main:
        job, ids = prepare_job(args, claim=False)
    devices = getattr(job, "shard_devices", list)() if shard.world == 1 else []
    if len(devices) > 1:
        shares = run_spawned(convert_share, devices, job, ids, args.num_workers, args.threads)
    else:
        shares = shard.gather(convert_share(shard, job, ids, args.num_workers, args.threads))
        shard.close()
    failed = [f for share in shares for f in share["failed"]]
    summary = {
        "written": sum(s["written"] for s in shares),
        "skipped_existing": sum(s["skipped_existing"] for s in shares),
        "failed": failed,
        "output_dir": job.out_dir,
        "shares": [{k: s[k] for k in ("rank", "images", "written")} for s in shares],
    }
    if shard.is_main:
        print(
            f"{job.out_dir}: wrote {summary['written']} masks, {summary['skipped_existing']} already present, "
            f"{len(failed)} skipped"
        )
        list_skipped(failed)
    return summary


if __name__ == "__main__":
    cli(main, get_args_parser())
