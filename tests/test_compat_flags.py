"""The flags kept only so that the authors' commands run unchanged sit in their own --help group
(tools/args.py compatibility_group), and no flag that does something sits there: checked on the
--help text of every parser of the project."""
import argparse
import importlib
import os
import re

import pytest

from tools.args import COMPATIBILITY_TITLE
from tools.paths import REPO_ROOT

# a help that says the flag does nothing
SAYS_UNUSED = re.compile(r"accepted for compatibility|\bunused\b|^ignored\b|\bno effect\b")


def parser_modules():
    """Every module of the project with a get_args_parser(): the scripts and the tools programs."""
    found = [name[:-3] for name in os.listdir(REPO_ROOT) if name.endswith(".py") and name != "demo.py"]
    for folder, _, names in os.walk(os.path.join(REPO_ROOT, "tools")):
        found += [os.path.relpath(os.path.join(folder, n), REPO_ROOT)[:-3].replace(os.sep, ".")
                  for n in names if n.endswith(".py")]
    with_parser = []
    for module in sorted(found):
        with open(os.path.join(REPO_ROOT, module.replace(".", os.sep) + ".py"), encoding="utf-8") as f:
            if "def get_args_parser(" in f.read():
                with_parser.append(module)
    return with_parser


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
    text = ("usage: x [-h]\n\nA program: it does things.\n\noptions:\n  -h, --help  show this\n"
            "  --a_very_long_flag A_VERY_LONG_FLAG\n              wrapped help\n\n"
            f"{COMPATIBILITY_TITLE}:\n  --debug DEBUG  accepted for compatibility; unused (default: False)\n")
    assert help_sections(text) == {"options": {"--help": "show this", "--a_very_long_flag": "wrapped help"},
                                   COMPATIBILITY_TITLE: {"--debug": "accepted for compatibility; unused "
                                                                    "(default: False)"}}


@pytest.fixture
def wide(monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # one help to a line: the invocation and its help side by side


@pytest.mark.parametrize("module", parser_modules())
def test_unused_flags_and_only_they_are_in_the_compatibility_group(module, wide):
    parser = importlib.import_module(module).get_args_parser()
    sections = help_sections(parser.format_help())
    listed = [flag for flags in sections.values() for flag in flags]
    assert sorted(listed) == sorted(a.option_strings[-1] for a in parser._actions
                                    if a.option_strings and a.help != argparse.SUPPRESS)  # every flag read
    compatibility = sections.get(COMPATIBILITY_TITLE, {})
    assert all(SAYS_UNUSED.search(text) for text in compatibility.values()), compatibility
    elsewhere = {flag: text for title, flags in sections.items() if title != COMPATIBILITY_TITLE
                 for flag, text in flags.items() if SAYS_UNUSED.search(text)}
    assert elsewhere == {}


@pytest.mark.parametrize("module, flags", [
    ("infer_rsepm", ["--debug", "--pool_type", "--use_cam", "--use_scg", "--first_th", "--second_th",
                     "--foreground_th", "--background_th", "--end_th"]),
    ("infer_seg", ["--debug"]),
    ("evaluate", ["--gpus", "--parallel"]),
])
def test_the_compatibility_flags_keep_their_names_defaults_and_parsing(module, flags, wide):
    parser = importlib.import_module(module).get_args_parser()
    assert list(help_sections(parser.format_help())[COMPATIBILITY_TITLE]) == flags
    defaults = {"debug": False, "pool_type": "gap", "use_cam": True, "use_scg": True, "first_th": 0.5,
                "second_th": 0.1, "foreground_th": 0.3, "background_th": 0.05, "end_th": 0.7, "gpus": "0",
                "parallel": False}
    required = ["--tag", "t"] if module == "evaluate" else []
    parsed = vars(parser.parse_args(required))
    assert {f[2:]: parsed[f[2:]] for f in flags} == {f[2:]: defaults[f[2:]] for f in flags}
    if "--debug" in flags:
        assert parser.parse_args(["--debug", "yes"]).debug is True
    if "--first_th" in flags:
        assert parser.parse_args(["--first_th", "0.25"]).first_th == 0.25
