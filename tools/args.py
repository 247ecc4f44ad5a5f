"""Command-line arguments shared by the scripts (docs/formats.md#command-line).

Flag names, types and defaults follow the original scripts so that their README commands run
unchanged. One definition per flag: scripts call the `add_*` helpers instead of repeating them.
"""
import argparse
import errno
import sys

import torch

from core.errors import ProjectError, UsageError
from core.io import DEFAULT_MAX_SEED_BYTES, OS_ERROR_CAUSES, describe_os_error
from tools.paths import DEFAULT_PRED_DIR

_TRUE = {"true", "yes", "y", "1", "t", "on"}
_FALSE = {"false", "no", "n", "0", "f", "off"}


def str2bool(value):
    """Boolean flag parser: true/false, yes/no, 1/0 (and t/f, y/n, on/off), any case."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false, yes/no, 1/0), got {value!r}")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" to every optional flag's help; a required flag has no default."""

    def _get_help_string(self, action):
        if action.required:
            return action.help
        return super()._get_help_string(action)


def make_parser(description):
    """An ArgumentParser whose --help shows every flag's default."""
    return argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)


def int_list(text):
    """Comma-separated integers, at least one (`,` alone is refused, not read as an empty list)."""
    try:
        values = tuple(int(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one integer, got {text!r}")
    return values


def color_jitter(text):
    """'B,C,S,H' (brightness, contrast, saturation, hue strengths of core.transforms.color_jitter)
    -> a 4-tuple of floats; 'none' (or all zeros) -> None, no jitter."""
    if text.strip().lower() in ("none", "off", ""):
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or min(values) < 0 or values[3] > 0.5:
        raise argparse.ArgumentTypeError(f"expected 4 comma-separated strengths B,C,S,H (>= 0, hue <= 0.5) "
                                         f"or 'none', got {text!r}")
    return values if any(values) else None


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


# A 7000 x 7000 photograph (VOC and COCO images are below 0.5 M pixels); the same default as the
# training scripts'. PIL's own decompression-bomb error (above 179 M pixels) is caught as well.
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000


def add_image_limit_arg(parser):
    parser.add_argument("--max_image_pixels", default=DEFAULT_MAX_IMAGE_PIXELS, type=positive_int,
                        help="an image whose header claims more pixels (width x height) is skipped and "
                             "listed at the end, before it is decoded")


def add_seed_limit_arg(parser):
    parser.add_argument("--max_seed_bytes", default=DEFAULT_MAX_SEED_BYTES, type=positive_int,
                        help="a seed file larger than this, on disk or once decoded, is skipped and listed "
                             "at the end (checked before the arrays are built)")


def add_overwrite_arg(parser, what):
    parser.add_argument("--overwrite", default=False, type=str2bool,
                        help=f"when the output folder holds {what} written with other settings: delete them "
                             "and start again (without it such a run is refused)")


def conf_threshold(value):
    """--conf_th parser: -1 (use the ground-truth tags) or a class score in [0, 1]; NaN refused."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if number != -1 and not 0.0 <= number <= 1.0:  # NaN fails the range test too
        raise argparse.ArgumentTypeError(f"expected -1 (ground-truth tags) or a class score in [0, 1], got "
                                         f"{value!r} (a threshold outside [0, 1] keeps every class or none)")
    return number


def add_dataset_args(parser, domain="validation"):
    parser.add_argument("--root_dir", default="../VOC2012/", type=str,
                        help="dataset root in the seed layout (trailing slash optional)")
    parser.add_argument("--dataset", default="VOC", type=str,
                        help="dataset description data/{dataset}.json: VOC, COCO or TOY")
    parser.add_argument("--domain", default=domain, type=str,
                        help="split: train, train_aug, validation or test")


def add_experiment_args(parser, tag=None):
    parser.add_argument("--tag", default=tag, type=str, required=tag is None,
                        help="experiment name: the folder under models/, predictions/, pseudo-labels/"
                             + ("; empty: a name derived from the settings" if tag == "" else ""))
    parser.add_argument("--pred_dir", default=DEFAULT_PRED_DIR, type=str,
                        help="root of the experiment folders models/, predictions/, pseudo-labels/")


def add_device_args(parser):
    parser.add_argument("--gpus", default="0", type=str,
                        help="comma-separated CUDA device ids; ignored (CPU) when CUDA is unavailable")
    parser.add_argument("--num_workers", default=4, type=int, help="data loading / worker processes")


def resolve_devices(gpus):
    """Parse `--gpus` into (main device, list of CUDA ids). CPU when CUDA is not available.

    The original hard-coded cuda:0 and set CUDA_VISIBLE_DEVICES; here the ids are used as given.
    An empty string, "cpu" or "-1" selects the CPU explicitly.
    """
    text = (gpus or "").strip().lower()
    if text in ("", "cpu", "-1") or not torch.cuda.is_available():
        return torch.device("cpu"), []
    try:
        ids = [int(x) for x in text.split(",") if x.strip() != ""]
    except ValueError:
        raise SystemExit(f"error: --gpus expects comma-separated integers, got {gpus!r}") from None
    count = torch.cuda.device_count()
    bad = [i for i in ids if i < 0 or i >= count]
    if bad:
        raise SystemExit(f"error: --gpus {gpus}: device(s) {bad} do not exist ({count} CUDA devices visible)")
    return torch.device(f"cuda:{ids[0]}"), ids


def exit_status(result):
    """0 when the run is done; 1 when its result lists work that "failed" or was "skipped"."""
    if isinstance(result, dict) and (result.get("failed") or result.get("skipped")):
        return 1
    return 0


def cli(main, parser=None, argv=None):
    """Entry point: `cli(main, get_args_parser())` parses, runs main(args) and exits 0 (done),
    1 (failed/skipped work, or a ProjectError as one line `error: ...`) or 2 (bad usage).

    The older form `cli(main, argv)`, main taking the argument list, is kept until every script
    has moved to the parser form."""
    if not isinstance(parser, argparse.ArgumentParser):
        return _cli_argv(main, parser)
    args = parser.parse_args(argv)
    try:
        result = main(args)
    except UsageError as e:
        parser.error(str(e))
    except ProjectError as e:
        raise SystemExit(f"error: {e}") from None
    sys.exit(exit_status(result))


def _cli_argv(main, argv=None):
    """Run a script's main, turning the project's errors (bad input, bad arguments: core.errors)
    into one line `error: ...` and exit status 1. Every other exception is a bug and keeps its
    traceback."""
    try:
        return main(argv)
    except ProjectError as e:
        raise SystemExit(f"error: {e}") from None
    except OSError as e:
        # a write that failed for a reason of the machine (disk full, read-only folder, no
        # permission): one line naming the path and the cause; anything else stays a traceback
        if e.errno in OS_ERROR_CAUSES and e.errno != errno.EIO:
            raise SystemExit(f"error: {describe_os_error(e)}") from None
        raise
