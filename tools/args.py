"""Command-line arguments shared by the scripts (docs/formats.md#command-line).

Flag names, types and defaults follow the original scripts so that their README commands run
unchanged. One definition per flag: scripts call the `add_*` helpers instead of repeating them.
"""

import argparse
import errno
import sys

import torch

from core.dataset_layout import DEFAULT_MAX_IMAGE_PIXELS
from core.errors import ProjectError, UsageError
from core.io import DEFAULT_MAX_SEED_BYTES, OS_ERROR_CAUSES, describe_os_error
from tools.flag_ranges import check_numbers
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


class ProjectParser(argparse.ArgumentParser):
    """argparse with the project's number ranges: before parsing, every int/float flag gets its
    range from tools/flag_ranges.py (nan, inf or a value outside it: usage error naming the flag)."""

    def parse_known_args(self, args=None, namespace=None):
        check_numbers(self)
        return super().parse_known_args(args, namespace)


def make_parser(description):
    """The parser of every script and program: --help shows every flag's default, and number
    flags are range-checked (ProjectParser)."""
    return ProjectParser(description=description, formatter_class=HelpFormatter)


COMPATIBILITY_TITLE = "accepted for compatibility with the authors' scripts (no effect)"


def compatibility_group(parser):
    """The --help group of the flags accepted only so that the authors' commands run unchanged and
    that change nothing (their help says unused / ignored): one group per parser, created on first use.
    A group only changes where --help lists a flag, not its name, default or parsing."""
    for group in parser._action_groups:
        if group.title == COMPATIBILITY_TITLE:
            return group
    return parser.add_argument_group(COMPATIBILITY_TITLE)


def deprecated_alias(parser, old, new):
    """Accept the old name `old` of the flag `new` for one release: it sets new's value (parsed by
    new's type and choices) after a warning on stderr. Shown in --help as deprecated."""
    target = next(a for a in parser._actions if new in a.option_strings)
    message = f"warning: {old} is deprecated, use {new}; it will be removed in the next release"

    class Alias(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            print(message, file=sys.stderr)
            setattr(namespace, self.dest, values)

    parser.add_argument(
        old,
        dest=target.dest,
        type=target.type,
        choices=target.choices,
        metavar=target.metavar,
        default=argparse.SUPPRESS,
        action=Alias,
        help=f"deprecated: use {new}",
    )


def int_list(text):
    """Comma-separated integers, at least one (`,` alone is refused, not read as an empty list)."""
    try:
        values = tuple(int(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError(f"expected at least one integer, got {text!r}")
    return values


int_list.list_of = int  # a number list: tools/flag_ranges.py checks each value and the count


def id_list(text):
    """Comma-separated image ids (each once); an empty text is refused."""
    ids = [part.strip() for part in str(text).split(",") if part.strip()]
    if not ids:
        raise argparse.ArgumentTypeError(f"expected comma-separated image ids, got {text!r}")
    twice = sorted({i for i in ids if ids.count(i) > 1})
    if twice:
        raise argparse.ArgumentTypeError(f"image id(s) given twice: {', '.join(twice)}")
    return ids


def color_jitter(text):
    """'B,C,S,H' (brightness, contrast, saturation, hue strengths of core.transforms.color_jitter)
    -> a 4-tuple of floats; 'none' (or all zeros) -> None, no jitter."""
    if text.strip().lower() in ("none", "off", ""):
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    # `not 0 <= v <= 10` also refuses nan; inf fails the upper bound
    if len(values) != 4 or not all(0 <= v <= 10 for v in values) or values[3] > 0.5:
        raise argparse.ArgumentTypeError(
            f"expected 4 comma-separated finite strengths B,C,S,H (0..10, hue <= 0.5) or 'none', got {text!r}"
        )
    return values if any(values) else None


def positive_int(text):
    """Flag parser of an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


positive_int.number_kind = int  # make_parser also gives it the flag's range (tools/flag_ranges.py)


# --amp of the training and inference scripts. auto: bf16 on a CUDA device that supports it, else
# fp16; off on the CPU.
AMP_MODES = ("auto", "bf16", "fp16", "off")


def add_image_limit_arg(parser, what="an image"):
    """--max_image_pixels, the one definition of every script that reads images (default
    core.dataset_layout.DEFAULT_MAX_IMAGE_PIXELS); `what` names the images it guards in --help."""
    parser.add_argument(
        "--max_image_pixels",
        default=DEFAULT_MAX_IMAGE_PIXELS,
        type=positive_int,
        help=f"{what} whose header claims more pixels (width x height) is skipped and "
        "listed at the end, before it is decoded",
    )


def add_seed_limit_arg(parser):
    parser.add_argument(
        "--max_seed_bytes",
        default=DEFAULT_MAX_SEED_BYTES,
        type=positive_int,
        help="a seed file larger than this, on disk or once decoded, is skipped and listed "
        "at the end (checked before the arrays are built)",
    )


def add_overwrite_arg(parser, what):
    parser.add_argument(
        "--overwrite",
        default=False,
        type=str2bool,
        help=f"when the output folder holds {what} written with other settings: delete them "
        "and start again (without it such a run is refused)",
    )


def conf_threshold(value):
    """--conf_th parser: -1 (use the ground-truth tags) or a class score in [0, 1]; NaN refused."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if number != -1 and not 0.0 <= number <= 1.0:  # NaN fails the range test too
        raise argparse.ArgumentTypeError(
            f"expected -1 (ground-truth tags) or a class score in [0, 1], got "
            f"{value!r} (a threshold outside [0, 1] keeps every class or none)"
        )
    return number


def add_dataset_args(parser, domain="validation"):
    parser.add_argument(
        "--root_dir", default="../VOC2012/", type=str, help="dataset root in the seed layout (trailing slash optional)"
    )
    parser.add_argument(
        "--dataset",
        default="VOC",
        type=str,
        help="dataset description: VOC, COCO or TOY (data/{dataset}.json), or the path of a "
        "description .json, e.g. one written by tools/builders/prepare_own.py",
    )
    parser.add_argument("--domain", default=domain, type=str, help="split: train, train_aug, validation or test")


def add_experiment_args(parser, tag=None):
    parser.add_argument(
        "--tag",
        default=tag,
        type=str,
        required=tag is None,
        help="experiment name: the folder under models/, predictions/, pseudo-labels/"
        + ("; empty: a name derived from the settings" if tag == "" else ""),
    )
    parser.add_argument(
        "--pred_dir",
        default=DEFAULT_PRED_DIR,
        type=str,
        help="root of the experiment folders models/, predictions/, pseudo-labels/",
    )


def add_device_args(parser):
    parser.add_argument(
        "--gpus", default="0", type=str, help="comma-separated CUDA device ids; ignored (CPU) when CUDA is unavailable"
    )
    parser.add_argument("--num_workers", default=4, type=int, help="data loading / worker processes")
    add_threads_arg(parser)


def add_threads_arg(parser):
    parser.add_argument(
        "--threads",
        default=None,
        type=positive_int,
        help="torch and OpenCV threads of the main process (each worker process runs one); "
        "default: OMP_NUM_THREADS when set, else the CPUs this process may use less "
        "its worker processes",
    )


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
        raise UsageError(f"--gpus expects comma-separated integers, got {gpus!r}") from None
    count = torch.cuda.device_count()
    bad = [i for i in ids if i < 0 or i >= count]
    if bad:
        raise UsageError(f"--gpus {gpus}: device(s) {bad} do not exist ({count} CUDA devices visible)")
    return torch.device(f"cuda:{ids[0]}"), ids


def exit_status(result):
    """0 when everything was done, 1 when the result lists items that were skipped or failed
    (a non-empty "failed" or "skipped" entry), or main's own int status."""
    if isinstance(result, int) and not isinstance(result, bool):
        return result
    if isinstance(result, dict) and (result.get("failed") or result.get("skipped")):
        return 1
    return 0


def cli(main, parser, argv=None):
    """The one entry point of every script and program:

        if __name__ == "__main__":
            cli(main, get_args_parser())

    Parses argv, runs main(args) and exits with 0 (done), 1 (some items skipped or failed, see
    exit_status) or 2 (bad usage: a bad flag, or a UsageError raised by main, with argparse's
    usage line). The project's other errors (bad input: core.errors.ProjectError) and a write
    that failed for a reason of the machine become one line `error: ...` and status 1; any other
    exception is a bug and keeps its traceback."""
    args = parser.parse_args(argv)
    try:
        result = main(args)
    except UsageError as e:
        parser.error(str(e))
    except ProjectError as e:
        raise SystemExit(f"error: {e}") from None
    except OSError as e:
        # a write that failed for a reason of the machine (disk full, read-only folder, no
        # permission): one line naming the path and the cause; anything else stays a traceback
        if e.errno in OS_ERROR_CAUSES and e.errno != errno.EIO:
            raise SystemExit(f"error: {describe_os_error(e)}") from None
        raise
    sys.exit(exit_status(result))
