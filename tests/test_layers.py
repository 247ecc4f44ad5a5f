"""The layer rule of docs/README.md, checked on every import of every project file (function-level
imports included): core/ imports nothing of the project; the base of tools/ imports only core;
engine, seeds and builders import the base and core, never each other; the scripts import those
layers; toy, gpu and bench may import anything below them, never each other."""

import ast
import os
import sys

import pytest

from tools.paths import REPO_ROOT

# demo.ipynb's source: a notebook over the toy run, in the toy layer although it sits at the root
NOTEBOOK_SOURCES = {"demo.py": "toy"}
SCRIPTS = {name[:-3] for name in os.listdir(REPO_ROOT) if name.endswith(".py") and name not in NOTEBOOK_SOURCES}
GROUPS = ("engine", "seeds", "builders")
PROGRAMS = ("toy", "gpu", "bench")
BELOW = {
    "core": {"core"},
    "base": {"core", "base"},
    **{g: {"core", "base", g} for g in GROUPS},
    "scripts": {"core", "base", *GROUPS},
    **{p: {"core", "base", *GROUPS, "scripts", p} for p in PROGRAMS},
}


def layer_of_module(name):
    """The layer of an imported dotted module name; None for a module that is not the project's."""
    parts = name.split(".")
    if parts[0] == "core":
        return "core"
    if parts[0] in SCRIPTS:
        return "scripts"
    if parts[0] != "tools":
        return None
    if len(parts) > 1 and parts[1] in GROUPS + PROGRAMS:
        return parts[1]
    return "base"


def layer_of_file(rel):
    parts = rel.split("/")
    if rel in NOTEBOOK_SOURCES:
        return NOTEBOOK_SOURCES[rel]
    if parts[0] == "core":
        return "core"
    if len(parts) == 1:
        return "scripts"
    if parts[0] == "tools" and len(parts) > 2:
        return parts[1]
    return "base"


def project_files():
    files = [name for name in os.listdir(REPO_ROOT) if name.endswith(".py")]
    for top in ("core", "tools"):
        for folder, _, names in os.walk(os.path.join(REPO_ROOT, top)):
            files += [os.path.relpath(os.path.join(folder, n), REPO_ROOT) for n in names if n.endswith(".py")]
    return sorted(f.replace(os.sep, "/") for f in files)


def imported_modules(path):
    """Every module a file imports, as dotted names (`from tools import x` gives `tools.x`)."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module in ("tools", "core"):
                yield from (f"{node.module}.{alias.name}" for alias in node.names)
            else:
                yield node.module


def layer_violations(rel):
    here = layer_of_file(rel)
    bad = []
    for module in imported_modules(os.path.join(REPO_ROOT, rel)):
        there = layer_of_module(module)
        if there is not None and there not in BELOW[here]:
            bad.append(f"{rel} ({here}) imports {module} ({there})")
    return bad


def test_layer_of_names():
    assert layer_of_module("tools.engine.optim") == "engine"
    assert layer_of_module("tools.args") == "base"
    assert layer_of_module("train_rsepm") == "scripts"
    assert layer_of_module("numpy") is None
    assert layer_of_file("tools/seeds/infer_loop.py") == "seeds"
    assert layer_of_file("tools/paths.py") == "base"
    assert layer_of_file("evaluate.py") == "scripts"


def test_every_group_folder_is_known():
    folders = {
        d
        for d in os.listdir(os.path.join(REPO_ROOT, "tools"))
        if os.path.isdir(os.path.join(REPO_ROOT, "tools", d)) and not d.startswith(("_", "."))
    }
    assert folders == set(GROUPS + PROGRAMS), "a new tools/ group must be placed in the layer rule"


@pytest.mark.parametrize("rel", project_files())
def test_imports_follow_the_layer_rule(rel):
    assert layer_violations(rel) == []


def test_the_check_catches_a_violation(tmp_path, monkeypatch):
    """A file of the engine group that imports the seeds group is reported."""
    bad = tmp_path / "tools" / "engine" / "bad.py"
    bad.parent.mkdir(parents=True)
    bad.write_text("from tools.seeds import infer_loop\nimport train_rsepm\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO_ROOT", str(tmp_path))
    found = layer_violations("tools/engine/bad.py")
    assert len(found) == 2 and "imports tools.seeds (seeds)" in found[0] and "(scripts)" in found[1]
