"""The flags kept only so that the authors' commands run unchanged sit in their own --help group
(tools/args.py compatibility_group), and no flag that does something sits there: checked on the
--help text of every parser of the project."""

import argparse
import importlib
import os
import re

import pytest
from helpers import parser_modules

from tools.args import COMPATIBILITY_TITLE, str2bool
from tools.paths import REPO_ROOT

# a help that says the flag does nothing
SAYS_UNUSED = re.compile(r"accepted for compatibility|\bunused\b|^ignored\b|\bno effect\b")


def help_sections(text):
    """{section title: {flag: its help text}} of a --help text (printed one entry to a line or two)."""
    sections, title, flag = {}, None, None
    lines = text.splitlines()
    for number, line in enumerate(lines):
        following = lines[number + 1] if number + 1 < len(lines) else ""
        if line and not line[0].isspace() and line.endswith(":") and following.startswith("  -"):
            title, flag = line[:-1], None
            sections[title] = {}
        elif title is not None and line.startswith("  -"):
            invocation, _, help_text = line.strip().partition("  ")
            flag = [part for part in invocation.replace(",", " ").split() if part.startswith("-")][-1]
            sections[title][flag] = help_text.strip()
        elif title is not None and flag is not None and line.startswith("   "):
            sections[title][flag] = (sections[title][flag] + " " + line.strip()).strip()
        elif not line.strip():
            flag = None
    return sections


def test_the_help_parser_reads_groups_and_wrapped_help():
    text = (
        "usage: x [-h]\n\nA program: it does things.\n\noptions:\n  -h, --help  show this\n"
        "  --a_very_long_flag A_VERY_LONG_FLAG\n              wrapped help\n\n"
        f"{COMPATIBILITY_TITLE}:\n  --debug DEBUG  accepted for compatibility; unused (default: False)\n"
    )
    assert help_sections(text) == {
        "options": {"--help": "show this", "--a_very_long_flag": "wrapped help"},
        COMPATIBILITY_TITLE: {"--debug": "accepted for compatibility; unused (default: False)"},
    }


@pytest.fixture
def wide(monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # one help to a line: the invocation and its help side by side


@pytest.mark.parametrize("module", parser_modules())
def test_unused_flags_and_only_they_are_in_the_compatibility_group(module, wide):
    parser = importlib.import_module(module).get_args_parser()
    sections = help_sections(parser.format_help())
    listed = [flag for flags in sections.values() for flag in flags]
    assert sorted(listed) == sorted(
        a.option_strings[-1] for a in parser._actions if a.option_strings and a.help != argparse.SUPPRESS
    )  # every flag read
    compatibility = sections.get(COMPATIBILITY_TITLE, {})
    assert all(SAYS_UNUSED.search(text) for text in compatibility.values()), compatibility
    elsewhere = {
        flag: text
        for title, flags in sections.items()
        if title != COMPATIBILITY_TITLE
        for flag, text in flags.items()
        if SAYS_UNUSED.search(text)
    }
    assert elsewhere == {}


@pytest.mark.parametrize(
    "module, flags",
    [
        (
            "infer_rsepm",
            [
                "--debug",
                "--pool_type",
                "--use_cam",
                "--use_scg",
                "--first_th",
                "--second_th",
                "--foreground_th",
                "--background_th",
                "--end_th",
            ],
        ),
        ("infer_seg", ["--debug"]),
        ("evaluate", ["--gpus", "--parallel"]),
    ],
)
def test_the_compatibility_flags_keep_their_names_defaults_and_parsing(module, flags, wide):
    parser = importlib.import_module(module).get_args_parser()
    assert list(help_sections(parser.format_help())[COMPATIBILITY_TITLE]) == flags
    defaults = {
        "debug": False,
        "pool_type": "gap",
        "use_cam": True,
        "use_scg": True,
        "first_th": 0.5,
        "second_th": 0.1,
        "foreground_th": 0.3,
        "background_th": 0.05,
        "end_th": 0.7,
        "gpus": "0",
        "parallel": False,
    }
    required = ["--tag", "t"] if module == "evaluate" else []
    parsed = vars(parser.parse_args(required))
    assert {f[2:]: parsed[f[2:]] for f in flags} == {f[2:]: defaults[f[2:]] for f in flags}
    if "--debug" in flags:
        assert parser.parse_args(["--debug", "yes"]).debug is True
    if "--first_th" in flags:
        assert parser.parse_args(["--first_th", "0.25"]).first_th == 0.25


# --- one boolean style: `--x true|false` (tools/args.py str2bool) ------------------------------
# a choice list made of these words is a boolean in disguise
BOOLEAN_WORDS = {"yes", "no", "y", "n", "true", "false", "t", "f", "on", "off", "0", "1"}
SWITCH_ACTIONS = (
    argparse._StoreTrueAction,
    argparse._StoreFalseAction,
    argparse._StoreConstAction,
    argparse.BooleanOptionalAction,
)


def boolean_style_problems(parser):
    """The flags of `parser` that are not in the project's boolean style: a bare switch
    (store_true/store_false/store_const, --x/--no-x), a yes/no-like choice, a boolean default read
    by another type than str2bool, or an optional value (nargs="?") whose bare flag is not true."""
    problems = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or not action.option_strings:
            continue
        flag = action.option_strings[-1]
        if isinstance(action, SWITCH_ACTIONS):
            problems.append(f"{flag}: {type(action).__name__} (use type=str2bool, nargs='?', const=True)")
        elif action.choices is not None and {str(c).lower() for c in action.choices} <= BOOLEAN_WORDS:
            problems.append(f"{flag}: choices {tuple(action.choices)} (use type=str2bool)")
        elif isinstance(action.default, bool) and action.type is not str2bool:
            problems.append(f"{flag}: boolean default read by {action.type!r} (use type=str2bool)")
        elif action.type is str2bool and action.nargs == "?" and action.const is not True:
            problems.append(f"{flag}: bare flag gives {action.const!r}, not True")
    return problems


def test_the_boolean_style_check_finds_each_other_form():
    parser = argparse.ArgumentParser()
    parser.add_argument("--a", action="store_true")
    parser.add_argument("--b", action="store_false")
    parser.add_argument("--c", default=None, choices=("yes", "no"))
    parser.add_argument("--d", default=False, type=int)
    parser.add_argument("--e", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--f", default=False, type=str2bool, nargs="?")
    parser.add_argument("--good", default=False, type=str2bool, nargs="?", const=True)
    parser.add_argument("--plain", default=True, type=str2bool)
    parser.add_argument("--mode", default="auto", choices=("auto", "true", "false"))  # three states
    flags = [problem.split(":")[0] for problem in boolean_style_problems(parser)]
    assert flags == ["--a", "--b", "--c", "--d", "--no-e", "--f"]


@pytest.mark.parametrize("module", parser_modules())
def test_every_boolean_flag_takes_true_or_false(module):
    assert boolean_style_problems(importlib.import_module(module).get_args_parser()) == []


def test_no_project_source_declares_a_switch():
    """Also the parsers outside get_args_parser() (shared add_*_args helpers, any other parser)."""
    switch = re.compile(r"store_true|store_false|BooleanOptionalAction|choices=\(?\[?[\"']yes[\"']")
    found = []
    for folder in (REPO_ROOT, os.path.join(REPO_ROOT, "core"), os.path.join(REPO_ROOT, "tools")):
        for root, dirs, names in os.walk(folder):
            if root == REPO_ROOT:
                dirs[:] = []  # the top-level scripts only; core/ and tools/ are walked on their own
            for name in names:
                if name.endswith(".py"):
                    path = os.path.join(root, name)
                    with open(path, encoding="utf-8") as f:
                        found += [
                            f"{os.path.relpath(path, REPO_ROOT)}:{number}"
                            for number, line in enumerate(f, 1)
                            if switch.search(line)
                        ]
    assert found == []


@pytest.mark.parametrize(
    "module, flag",
    [
        ("tools.toy.make_demo_notebook", "--execute"),
        ("tools.toy.make_demo_notebook", "--check"),
        ("tools.builders.prepare_voc", "--expect_official"),
        ("tools.builders.prepare_coco", "--expect_official"),
        ("tools.gpu.gpu_check", "--torchrun"),
    ],
)
def test_a_former_switch_still_takes_its_bare_flag(module, flag):
    parser = importlib.import_module(module).get_args_parser()
    required = [part for action in parser._actions if action.required for part in (action.option_strings[0], "x")]
    dest = flag[2:]
    assert getattr(parser.parse_args(required), dest) is parser.get_default(dest)
    assert getattr(parser.parse_args([flag, *required]), dest) is True
    assert getattr(parser.parse_args([*required, flag]), dest) is True
    assert getattr(parser.parse_args([flag, "false", *required]), dest) is False
    assert getattr(parser.parse_args([flag, "yes", *required]), dest) is True
