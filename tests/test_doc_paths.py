"""Every repository path that README.md and docs/*.md name exists.

Checked: `tools/...` and `core/...` paths, and top-level script names (`evaluate.py`), written in
backticks or in a command block. A path of another code base is exempt only when the words
right before it say whose it is: "the authors' `core/inferences.py`", "IRN `run_sample.py`"
(FOREIGN below). Anything else that does not exist here fails, so a stale path cannot hide.
The same rule holds for the `core/` and `tools/` paths of every parser's --help text.
"""

import glob
import importlib
import os
import re

import pytest
from helpers import parser_modules

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md"] + sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))
# owners whose file names the docs cite; the owner must be written just before the path
FOREIGN = r"(?:the authors'|authors'|IRN's|IRN|PuzzleCAM|DHR|torchvision's|pydensecrf's)"
PATH = re.compile(r"(?<![\w./-])((?:tools|core)/[\w./*-]*\w|[A-Za-z_]\w*\.(?:py|sh))(?![\w/])")
# the owner, then optionally more of its names in backticks ("the authors' `a.py` `f`, `b.py`")
ATTRIBUTED = re.compile(FOREIGN + r"\s+(?:`[^`]*`[\s,]*(?:and\s+)?)*`?$")


def named_paths(text):
    """(line number, path) of every repository path named in backticks or in a fenced block;
    a path preceded by its owner's name (FOREIGN) is left out."""
    found, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        spans = [(0, len(line))] if fenced else [m.span(1) for m in re.finditer(r"`([^`]+)`", line)]
        for start, end in spans:
            for m in PATH.finditer(line, start, end):
                if not ATTRIBUTED.search(line[: m.start()]):
                    found.append((number, m.group(1).rstrip(".")))
    return found


def missing(text):
    return [(n, p) for n, p in named_paths(text) if not glob.glob(os.path.join(ROOT, p.split("{")[0].rstrip("/") or p))]


@pytest.mark.parametrize("doc", DOCS)
def test_every_named_path_exists(doc):
    with open(os.path.join(ROOT, doc), encoding="utf-8") as f:
        assert missing(f.read()) == []


def test_the_rule_catches_a_stale_path_and_spares_an_attributed_one():
    text = (
        "Seeds are saved by `tools/io.py` `save_seed` (`core/io.py` today).\n"
        "Source: the authors' `core/inferences.py` `SCG`, `tools/ai/trainers.py`; IRN `run_sample.py`.\n"
        "Run `core/inferences.py` here, then `train_rsepm.py` and `train_rspem.py`.\n"
        "```bash\npython3 tools/builders/prepare_vco.py --out x\n```\n"
    )
    assert missing(text) == [
        (1, "tools/io.py"),
        (3, "core/inferences.py"),
        (3, "train_rspem.py"),
        (5, "tools/builders/prepare_vco.py"),
    ]
    assert (2, "core/inferences.py") not in named_paths(text) and (2, "tools/ai/trainers.py") not in named_paths(text)
    assert (1, "core/io.py") in named_paths(text) and (3, "train_rsepm.py") in named_paths(text)


@pytest.mark.parametrize("module", parser_modules())
def test_every_core_or_tools_path_of_a_help_text_exists_or_is_attributed(module, monkeypatch):
    """--help (every parser of the project) cites a file of another code base as "the authors'
    core/inferences.py", never bare, as if it were this repository's."""
    monkeypatch.setenv("COLUMNS", "1000")  # one flag to a line: an owner stays beside its path
    text = importlib.import_module(module).get_args_parser().format_help()
    named = [(n, p) for n, p in missing("```\n" + text + "\n```") if p.startswith(("core/", "tools/"))]
    assert named == []
