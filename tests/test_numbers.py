"""The parser-wide numeric test: every number flag of every script and program refuses nan, inf
and a value outside its range with argparse's usage error (exit status 2) naming the flag."""

import argparse
import importlib
import math
import os
import subprocess
import sys

import pytest

import infer_rsepm
import infer_seg
from tools.args import int_list
from tools.flag_ranges import RANGES, Range, bounded, check_numbers, number_flags
from tools.paths import REPO_ROOT
from tools.seeds.infer_loop import MAX_SCALE, parse_scales


def program_modules():
    """Every module of the project that defines get_args_parser(): the scripts and the programs."""
    names = [n[:-3] for n in os.listdir(REPO_ROOT) if n.endswith(".py")]
    for folder, _, files in os.walk(os.path.join(REPO_ROOT, "tools")):
        package = os.path.relpath(folder, REPO_ROOT).replace(os.sep, ".")
        names += [f"{package}.{n[:-3]}" for n in files if n.endswith(".py") and n != "__init__.py"]
    found = []
    for name in sorted(names):
        with open(os.path.join(REPO_ROOT, *name.split(".")) + ".py", encoding="utf-8") as f:
            if "def get_args_parser(" in f.read():
                found.append(name)
    return found


PROGRAMS = program_modules()


def parser_of(name):
    parser = importlib.import_module(name).get_args_parser()
    parser.prog = name
    return parser


def test_every_script_has_the_entry_point():
    scripts = {
        "train_rsepm",
        "train_seg",
        "train_affinity",
        "infer_rsepm",
        "infer_seg",
        "evaluate",
        "convert_seed_to_pseudo_masks",
    }
    assert scripts <= set(PROGRAMS)


@pytest.mark.parametrize("name", PROGRAMS)
def test_number_flags_refuse_nan_inf_and_out_of_range(name, capsys):
    parser = parser_of(name)  # parse_args installs the ranges itself (tools.args.make_parser)
    for flag, allowed in number_flags(check_numbers(parser)):
        for bad in ("nan", "inf", "-inf", repr(allowed.outside())):
            with pytest.raises(SystemExit) as raised:
                parser.parse_args([flag, bad])
            err = capsys.readouterr().err
            assert raised.value.code == 2, (flag, bad)
            assert f"argument {flag}" in err, (flag, bad, err)


def test_no_number_flag_is_left_unchecked():
    """Every int/float flag of every parser went through the table (a missing one is a KeyError
    when the parser first parses)."""
    missing = []
    for name in PROGRAMS:
        parser = parser_of(name)
        try:
            check_numbers(parser)
        except KeyError as e:
            missing.append(f"{name}: {e}")
        for action in parser._actions:
            assert action.type not in (int, float) or action.choices is not None, (
                f"{name} {action.option_strings}: unchecked number flag"
            )
    assert missing == []


def test_range_arithmetic_by_hand():
    r = Range(0.0, 1.0, low_open=True)
    assert [r.contains(v) for v in (0.0, 1e-9, 1.0, 1.0000001)] == [False, True, True, False]
    assert r.describe() == "(0, 1]" and not r.contains(r.outside())
    parse = bounded(int, "--x", Range(1, 32))
    assert parse("32") == 32
    for bad in ("33", "0", "nan", "1.5"):
        with pytest.raises(Exception):
            parse(bad)
    assert all(not math.isnan(v.low) for v in RANGES.values())


def test_a_script_exits_2_naming_the_flag():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": REPO_ROOT}
    for argv, flag in (
        (["convert_seed_to_pseudo_masks.py", "--tag", "t", "--bg_th", "nan"], "--bg_th"),
        (["train_rsepm.py", "--ema_decay", "1.5"], "--ema_decay"),
    ):
        result = subprocess.run(
            [sys.executable, *argv], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 2 and f"argument {flag}" in result.stderr, result.stderr


def test_every_range_belongs_to_a_flag():
    """No dead entries: each name of the table is a number flag of some parser."""
    used = set()
    for name in PROGRAMS:
        parser = parser_of(name)
        check_numbers(parser)
        used |= {a.dest for a in parser._actions if getattr(a.type, "number_range", None) is not None}
    assert sorted(set(RANGES) - used) == []


def list_flags():
    """(program, flag, element Range, (fewest, most)) of every number-list flag of every parser."""
    found = []
    for name in PROGRAMS:
        parser = check_numbers(parser_of(name))
        found += [
            (name, a.option_strings[0], a.type.number_range, a.type.list_length)
            for a in parser._actions
            if getattr(a.type, "list_length", None) is not None
        ]
    return found


def test_list_flags_go_through_the_validator():
    """The list flags that escaped it in the last release are among those checked."""
    flags = {(name, flag) for name, flag, _, _ in list_flags()}
    assert {
        ("train_rsepm", "--pamr_dilations"),
        ("infer_rsepm", "--scales"),
        ("infer_seg", "--scales"),
        ("tools.bench.bench_crf", "--workers"),
        ("tools.bench.bench_evaluate", "--workers"),
        ("tools.bench.bench_rw", "--small"),
    } <= flags


@pytest.mark.parametrize("name, flag, allowed, lengths", list_flags())
def test_list_flags_refuse_a_bad_value_and_too_many_values(name, flag, allowed, lengths, capsys):
    parser = parser_of(name)
    good = allowed.low + 1 if allowed.low_open or not math.isfinite(allowed.high) else allowed.high
    good = int(good) if float(good).is_integer() else good
    fewest, most = lengths
    ok = ",".join([str(good)] * fewest)
    assert len(getattr(parser.parse_args([flag, ok]), parser_dest(parser, flag))) == fewest
    for bad in (
        [str(good)] * (most + 1),
        [str(good)] * (fewest - 1) + ["nan"],
        [str(good)] * (fewest - 1) + [repr(allowed.outside())],
        ["-1"] * fewest,
    ):
        if bad == ["-1"] * fewest and allowed.contains(-1):
            continue
        with pytest.raises(SystemExit) as raised:
            parser.parse_args([flag, ",".join(bad)])
        assert raised.value.code == 2 and f"argument {flag}" in capsys.readouterr().err, (flag, bad)


def parser_dest(parser, flag):
    return next(a.dest for a in parser._actions if flag in a.option_strings)


def test_pamr_dilations_of_the_last_release_are_refused(capsys):
    """-1 was a traceback, 100000 tried to allocate 1.9 TB, 0 trained."""
    parser = parser_of("train_rsepm")
    for bad in ("-1", "100000", "0", "1,2,0"):
        with pytest.raises(SystemExit) as raised:
            parser.parse_args(["--pamr_dilations", bad])
        assert raised.value.code == 2
    assert parser.parse_args(["--pamr_dilations", "1,2,4,8,12,24"]).pamr_dilations == (1, 2, 4, 8, 12, 24)
    with pytest.raises(SystemExit):  # 2,000 test-time scales ran for minutes
        parser_of("infer_rsepm").parse_args(["--scales", ",".join(["1.0"] * 2000)])


# --- flags with their own parser: --conf_th, --scales and integer lists --------------------------------
@pytest.mark.parametrize("value", ["1.5", "-0.5", "nan", "inf", "-2", "abc"])
def test_conf_th_outside_0_1_is_refused_at_parsing(value, capsys):
    with pytest.raises(SystemExit) as info:
        infer_rsepm.get_args_parser().parse_args(["--conf_th", value])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--conf_th" in err and repr(value) in err


@pytest.mark.parametrize("value, expected", [("-1", -1.0), ("0", 0.0), ("0.34", 0.34), ("1", 1.0)])
def test_conf_th_in_range_or_minus_one_is_accepted(value, expected):
    assert infer_rsepm.get_args_parser().parse_args(["--conf_th", value]).conf_th == expected


@pytest.mark.parametrize("text", ["1.0,nan", "inf", "1.0,1e400", "1.0,8", "0", "1.0,-0.5", "-inf"])
def test_scales_not_finite_or_too_large_are_refused(text, capsys):
    with pytest.raises(SystemExit) as info:
        infer_seg.get_args_parser().parse_args([f"--scales={text}"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--scales" in err and repr(text) in err and f"(0, {MAX_SCALE:g}]" in err


def test_scales_within_the_bound_are_accepted():
    assert parse_scales("1.0,0.5,1.5,2.0") == (1.0, 0.5, 1.5, 2.0)
    assert parse_scales(f"{MAX_SCALE}") == (MAX_SCALE,)
    assert MAX_SCALE == 4.0


def test_int_list_refuses_an_empty_list():
    """Before: `--pamr_dilations ,` parsed as an empty tuple."""
    with pytest.raises(argparse.ArgumentTypeError, match="at least one integer"):
        int_list(",")
    assert int_list("1,2, 4") == (1, 2, 4)
