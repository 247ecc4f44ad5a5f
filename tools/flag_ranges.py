"""One numeric validator for every number flag of every script (docs/formats.md#command-line).

A number flag's range is stated once here, by its name, and holds in every script that takes
it: one name, one meaning. Every value must be finite and inside its range; a flag whose cost
grows with its value (walk steps, radii, scales, sizes) has an upper bound. `check_numbers`
wraps the `type` of each int/float flag of a parser, so a bad value is argparse's own usage
error naming the flag (exit status 2), and a number flag missing from the table fails when the
parser is built, not when a user meets it.
"""

import argparse
import math
from dataclasses import dataclass


def _number(value):
    return str(int(value)) if math.isfinite(value) and float(value).is_integer() else f"{value:g}"


@dataclass(frozen=True)
class Range:
    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False  # True: low itself is refused
    high_open: bool = False

    def contains(self, value):
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def describe(self):
        left = "(" if self.low_open else "["
        right = ")" if self.high_open else "]"
        return f"{left}{_number(self.low)}, {_number(self.high)}{right}"

    def outside(self):
        """A value just outside the range (for the tests)."""
        return self.high * 2 + 1 if math.isfinite(self.high) else self.low - 1


BIG = 2**31 - 1
PROBABILITY = Range(0.0, 1.0)
COUNT = Range(1, BIG)  # at least one
COUNT0 = Range(0, BIG)  # zero allowed (0 = off / none)
PIXELS = Range(1, 16384)  # one side of an image or crop
SCALE = Range(0.0, 8.0, low_open=True)
WEIGHT = Range(0.0, 1000.0)  # a loss weight

# Every number flag of the project, by destination name.
RANGES = {
    # training
    "batch_size": Range(1, 65536),
    "max_epoch": Range(1, 100000),
    "lr": Range(0.0, 10.0, low_open=True),
    "wd": Range(0.0, 1.0),
    "momentum": Range(0.0, 1.0, high_open=True),
    "head_lr_mult": Range(0.0, 1000.0, low_open=True),
    "crop_size": Range(32, 2048),
    "min_image_size": Range(1, 4096),
    "max_image_size": Range(1, 4096),
    "min_scale": SCALE,
    "max_scale": SCALE,
    "seed": Range(0, 2**32 - 1),
    "log_interval": COUNT,
    "save_interval": COUNT,
    "val_every": COUNT0,
    "val_images": COUNT,
    "vis_images": Range(0, 64),
    # RS+EPM (core/rsepm.py, core/targets.py, core/scg.py, core/pamr.py) and its seeds
    "rs_start": COUNT,
    "mix_start": COUNT,
    "w_cam": WEIGHT,
    "w_seg": WEIGHT,
    "w_cls_mix": WEIGHT,
    "w_cam_mix": WEIGHT,
    "w_seg_mix": WEIGHT,
    "cf_fg_th": PROBABILITY,
    "cf_bg_th": PROBABILITY,
    "ep_delta": PROBABILITY,
    "ep_conf": PROBABILITY,
    "ema_decay": PROBABILITY,
    "scg_fg_th": PROBABILITY,
    "scg_so_th": PROBABILITY,
    "scg_fg_point": PROBABILITY,
    "scg_bg_point": PROBABILITY,
    "pamr_iterations": Range(0, 100),
    "first_th": PROBABILITY,
    "second_th": PROBABILITY,
    "foreground_th": PROBABILITY,
    "background_th": PROBABILITY,
    # affinity network and random walk (the walk's cost grows with 2^exp_times and radius^2)
    "ir_fg_th": PROBABILITY,
    "ir_bg_th": PROBABILITY,
    "rw_radius": Range(2, 32),
    "beta": Range(0.0, 1000.0, low_open=True),
    "exp_times": Range(0, 12),
    "sem_seg_bg_thres": PROBABILITY,
    # seeds, CRF, evaluation
    "bg_th": PROBABILITY,
    "bg_gamma": Range(0.0, 100.0, low_open=True),
    "st_th": PROBABILITY,
    "end_th": PROBABILITY,
    "th_interval": Range(0.0, 1.0, low_open=True),
    "quality": Range(1, 100),
    # guards and resources
    "max_image_pixels": Range(1, 10**10),
    "max_seed_bytes": Range(1, 2**40),
    "max_memory_gib": Range(0.0, 2**20, low_open=True),
    "num_workers": Range(0, 1024),
    "threads": Range(1, 1024),
    "timeout": Range(1, 7 * 24 * 3600),
    # dataset builders and programs
    "num_train": COUNT0,
    "num_train_aug": COUNT0,
    "num_validation": COUNT0,
    "num_test": COUNT0,
    "max_objects": Range(1, 64),
    "min_size": PIXELS,
    "max_size": PIXELS,
    "val_fraction": Range(0.0, 1.0, high_open=True),
    # benchmarks
    "num_images": COUNT,
    "images": COUNT,
    "iterations": COUNT,
    "repeat": COUNT,
    "batch": Range(1, 65536),
    "crop": PIXELS,
    "num_masks": COUNT,
    "num_seeds": COUNT,
    "warmup": COUNT0,
    "workers": Range(1, 1024),
    # the time budget (tools/gpu/time_budget.py)
    "rsepm_crop": PIXELS,
    "train_utilisation": Range(0.0, 1.0, low_open=True),
    "infer_utilisation": Range(0.0, 1.0, low_open=True),
    "scaling": Range(0.0, 1.0, low_open=True),
    "cores": Range(1, 1024),
    # list flags (comma-separated numbers): the range of each element; the count is LIST_LENGTHS's
    "pamr_dilations": Range(1, 64),
    "scales": Range(0.0, 4.0, low_open=True),
    "small": PIXELS,
    "processes": Range(1, 64),
}
# (fewest, most) entries of a list flag: each entry is work (a test-time scale is a forward pass of
# the image and its flip, a dilation a PAMR pass), so the count is bounded too.
LIST_LENGTHS = {"pamr_dilations": (1, 16), "scales": (1, 16), "workers": (1, 16), "small": (2, 2), "processes": (1, 16)}


def bounded(kind, flag, allowed):
    """An argparse type: `kind` (int or float) of the text, finite and inside `allowed`."""

    def parse(text):
        try:
            value = kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None
        if not math.isfinite(value) or not allowed.contains(value):
            raise argparse.ArgumentTypeError(f"{text!r} is outside {flag}'s range {allowed.describe()}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its message
    parse.number_range = allowed
    return parse


def bounded_list(parse_list, flag, allowed, lengths):
    """An argparse type: `parse_list(text)` (a tuple of numbers), each finite and inside
    `allowed`, their count inside `lengths` (fewest, most)."""

    def parse(text):
        values = parse_list(text)
        fewest, most = lengths
        if not fewest <= len(values) <= most:
            count = f"exactly {most}" if fewest == most else f"{fewest} to {most}"
            raise argparse.ArgumentTypeError(f"{flag} takes {count} comma-separated values, got {len(values)}")
        for value in values:
            if not math.isfinite(value) or not allowed.contains(value):
                raise argparse.ArgumentTypeError(
                    f"{value!r} in {text!r} is outside {flag}'s range {allowed.describe()} (each value)"
                )
        return values

    parse.__name__ = getattr(parse_list, "__name__", "list")
    parse.number_range, parse.list_length = allowed, lengths
    return parse


NUMBER_TYPES = {int: int, float: float}


def check_numbers(parser):
    """Wrap every int/float flag of `parser` (argument groups included) in its range from RANGES.
    A number flag with no range is a bug of the script: KeyError naming it."""
    for action in parser._actions:
        if getattr(action.type, "list_of", None) is not None and action.option_strings:
            if action.dest not in RANGES:
                raise KeyError(
                    f"{action.option_strings[0]}: a number-list flag without a range in tools/flag_ranges.py RANGES"
                )
            action.type = bounded_list(
                action.type, action.option_strings[0], RANGES[action.dest], LIST_LENGTHS.get(action.dest, (1, 64))
            )
            continue
        kind = NUMBER_TYPES.get(action.type) or getattr(action.type, "number_kind", None)
        if kind is None or not action.option_strings or action.choices is not None:
            continue  # a flag with choices is checked by argparse itself
        if action.dest not in RANGES:
            raise KeyError(f"{action.option_strings[0]}: a number flag without a range in tools/flag_ranges.py RANGES")
        action.type = bounded(kind, action.option_strings[0], RANGES[action.dest])
    return parser


def number_flags(parser):
    """The (flag, Range) of every checked number flag of a parser, list flags included (for the tests)."""
    return [
        (a.option_strings[0], a.type.number_range)
        for a in parser._actions
        if getattr(a.type, "number_range", None) is not None
    ]
