"""Each number flag's range lives in one table (tools/flag_ranges.py) and the parser enforces it;
the scripts' own checks only relate flags to each other. This test fails when a script's check
refuses a value its flag's range allows (a bound written twice that disagrees): every number flag
of each training script and of the random-walk conversion at both ends of its range, the other
flags at their defaults; a refusal may only come from a check that names a second flag."""

import math
import re

import pytest

import convert_seed_to_pseudo_masks
import train_affinity
import train_rsepm
import train_seg
from core.errors import UsageError
from tools.flag_ranges import check_numbers
from tools.seeds import rw_convert

FLAG = re.compile(r"--\w+")


def rw_check(args):
    """rw_convert.prepare's argument checks, up to the files it needs (weights absent: MissingFileError)."""
    from core.errors import MissingFileError

    try:
        rw_convert.prepare(args, claim=False)
    except MissingFileError:
        pass


SCRIPTS = {
    "train_rsepm": (train_rsepm, train_rsepm.prepare_args, []),
    "train_seg": (train_seg, train_seg.prepare_args, ["--label_tag", "x"]),
    "train_affinity": (train_affinity, train_affinity.prepare_args, ["--seed_tag", "x"]),
    "convert --mode rw": (
        convert_seed_to_pseudo_masks,
        rw_check,
        ["--mode", "rw", "--affinity_weights", "/nonexistent/affinity.pth", "--tag", "x"],
    ),
}


def ends(action):
    """The two extreme values the table allows for `action` (inside open ends)."""
    allowed = action.type.number_range
    integer = action.type.__name__ == "int"
    values = []
    for end, open_, step in ((allowed.low, allowed.low_open, 1), (allowed.high, allowed.high_open, -1)):
        if not math.isfinite(end):
            continue
        if open_:
            end = end + step if integer else math.nextafter(end, end + step)
        values.append(int(end) if integer else end)
    return values


def number_flags(parser):
    return [
        a
        for a in parser._actions
        if getattr(a.type, "number_range", None) is not None and not hasattr(a.type, "list_length") and a.option_strings
    ]


@pytest.mark.parametrize("name", SCRIPTS)
def test_no_script_check_refuses_a_value_the_table_allows(name):
    module, check, base = SCRIPTS[name]
    parser = check_numbers(module.get_args_parser())  # what parse_args does first
    disagree, tried = [], 0
    for action in number_flags(parser):
        flag = action.option_strings[0]
        for value in ends(action):
            args = parser.parse_args(base + [flag, repr(value)])
            tried += 1
            try:
                check(args)
            except UsageError as e:
                named = set(FLAG.findall(str(e)))
                if named <= {flag}:  # a bound of this flag alone: the table's business
                    disagree.append(f"{flag} {value}: {e}")
    assert tried > 10 and not disagree, disagree


def test_the_check_catches_a_bound_written_twice(monkeypatch):
    """A script check that re-states a bound tighter than the table's is reported."""
    original = train_seg.prepare_args

    def stricter(args):
        if args.max_epoch > 500:
            raise UsageError(f"--max_epoch {args.max_epoch}: at most 500")
        return original(args)

    monkeypatch.setitem(SCRIPTS, "train_seg", (train_seg, stricter, ["--label_tag", "x"]))
    with pytest.raises(AssertionError, match="--max_epoch 100000"):
        test_no_script_check_refuses_a_value_the_table_allows("train_seg")
