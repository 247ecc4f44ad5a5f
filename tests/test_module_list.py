"""docs/README.md's "Code layout" lists every module of the project, one line each, and nothing
else; and no two modules of the project share a file name.

The modules: every .py under core/ and tools/ but __init__.py, the top-level .py files, and the
shell entry points under tools/. A line of the list is "- `path`: what it holds".
"""

import os
import re
from collections import defaultdict

from tools.paths import REPO_ROOT

DOC = os.path.join(REPO_ROOT, "docs", "README.md")
SECTION = "## Code layout"
LINE = re.compile(r"^- `([^`]+)`: \S")


def project_modules():
    """Repository-relative paths of the project's modules (core/, tools/, top level, tools/*.sh)."""
    found = {
        name for name in os.listdir(REPO_ROOT) if name.endswith(".py") and os.path.isfile(os.path.join(REPO_ROOT, name))
    }
    for top in ("core", "tools"):
        for folder, dirs, names in os.walk(os.path.join(REPO_ROOT, top)):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in names:
                if (name.endswith(".py") and name != "__init__.py") or (top == "tools" and name.endswith(".sh")):
                    found.add(os.path.relpath(os.path.join(folder, name), REPO_ROOT).replace(os.sep, "/"))
    return found


def listed_modules(text):
    """[(line number, path)] of the list lines of the Code layout section (up to the next heading)."""
    lines = text.splitlines()
    start = lines.index(SECTION)
    listed = []
    for number, line in enumerate(lines[start + 1 :], start + 2):
        if line.startswith("#"):
            break
        match = LINE.match(line)
        if match:
            listed.append((number, match.group(1)))
        elif line.startswith("- "):
            raise AssertionError(f"docs/README.md:{number}: not a '- `path`: description' line: {line}")
    return listed


def read_doc():
    with open(DOC, encoding="utf-8") as f:
        return f.read()


def test_every_module_has_one_line_and_every_line_a_module():
    listed = listed_modules(read_doc())
    paths = [path for _, path in listed]
    modules = project_modules()
    assert sorted(modules - set(paths)) == [], "modules without a line in docs/README.md's Code layout"
    assert [(n, p) for n, p in listed if p not in modules] == [], "lines naming no module of the tree"
    assert sorted(p for p in set(paths) if paths.count(p) > 1) == [], "modules listed twice"


def test_the_list_reader_catches_a_missing_and_a_stale_line():
    text = (
        f"# Doc\n{SECTION}\n\nIntro.\n\n- `core/io.py`: files\n- `core/gone.py`: removed\n"
        "- `core/io.py`: twice\n\n## Next\n- `core/later.py`: another section\n"
    )
    assert listed_modules(text) == [(6, "core/io.py"), (7, "core/gone.py"), (8, "core/io.py")]


def test_no_two_project_modules_share_a_file_name():
    by_name = defaultdict(list)
    for path in project_modules():
        if path.endswith(".py"):
            by_name[os.path.basename(path)].append(path)
    assert {name: sorted(paths) for name, paths in by_name.items() if len(paths) > 1} == {}
