"""Write demo.ipynb, the walk-through notebook, from tools/toy/demo_cells.py (reviewed as Python).

    python tools/toy/make_demo_notebook.py --execute  write it and execute it on the toy run
                                                  (experiments/toy/), storing the outputs: what is
                                                  committed, so the figures show without running
    python tools/toy/make_demo_notebook.py            write it without outputs
    python tools/toy/make_demo_notebook.py --check    exit 1 if its cells differ from the generator's

Cells have fixed ids; --execute runs a kernel on this interpreter (the venv) through nbclient and
drops what changes from run to run (timings, kernel and interpreter details), so executing again
on the same run changes nothing but what the run changed. Figures are PNG at FIGURE_DPI.
tests/test_notebook.py checks the stored file and executes a copy on a tiny run.
"""
import contextlib
import json
import os
import sys
import tempfile

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

if __package__ in (None, ""):  # run as a file, python tools/GROUP/NAME.py: the repository root on the import path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tools.paths import REPO_ROOT  # noqa: E402

from core.io import atomic_output  # noqa: E402
from tools.args import make_parser  # noqa: E402

from tools.toy.demo_cells import CELLS  # noqa: E402

NOTEBOOK = os.path.join(REPO_ROOT, "demo.ipynb")
KERNEL = "rsepm-demo"
METADATA = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"}}
MAX_BYTES = 2 * 1024 * 1024  # the stored notebook must stay small enough to browse
def build_notebook():
    """The demo notebook as an nbformat node: no outputs, fixed cell ids, Python 3 kernel."""
    cells = []
    for cell_id, kind, source in CELLS:
        make = new_code_cell if kind == "code" else new_markdown_cell
        cell = make(source.strip("\n"))
        cell["id"] = cell_id  # fixed ids: nbformat would draw random ones and the file would change
        if cell_id == "parameters":
            cell["metadata"]["tags"] = ["parameters"]  # papermill's convention for the cell to override
        cells.append(cell)
    nb = new_notebook(cells=cells)
    nb["metadata"] = json.loads(json.dumps(METADATA))
    nbformat.validate(nb)
    return nb


def notebook_text(nb=None):
    return nbformat.writes(build_notebook() if nb is None else nb) + "\n"


def without_outputs(nb):
    """A copy of the notebook node with every code cell's outputs and execution count cleared."""
    nb = nbformat.from_dict(json.loads(json.dumps(nb)))
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return nb


@contextlib.contextmanager
def kernel_environment():
    """A kernelspec running ipykernel on this interpreter, and the environment the kernel inherits:
    no RSEPM_DEMO_* overrides (the stored outputs show the defaults), PNG figures via the inline
    backend, one thread per process unless OMP_NUM_THREADS is set."""
    saved = dict(os.environ)
    with tempfile.TemporaryDirectory() as tmp:
        spec = os.path.join(tmp, "kernels", KERNEL)
        os.makedirs(spec)
        with open(os.path.join(spec, "kernel.json"), "w", encoding="utf-8") as f:
            json.dump({"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                       "display_name": "RS+EPM demo", "language": "python"}, f)
        for key in [k for k in os.environ if k.startswith("RSEPM_DEMO_")]:
            del os.environ[key]
        os.environ.update({"JUPYTER_PATH": tmp, "JUPYTER_RUNTIME_DIR": os.path.join(tmp, "runtime"),
                           "MPLBACKEND": "module://matplotlib_inline.backend_inline",
                           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
        try:
            yield
        finally:
            os.environ.clear()
            os.environ.update(saved)


def execute(nb, timeout=900):
    """Execute the notebook node in place from the repository root; returns it without the
    run-to-run noise. A cell error raises nbclient's CellExecutionError naming the cell."""
    from nbclient import NotebookClient

    with kernel_environment():
        NotebookClient(nb, timeout=timeout, kernel_name=KERNEL, record_timing=False,
                       resources={"metadata": {"path": REPO_ROOT}}).execute()
    nb["metadata"] = json.loads(json.dumps(METADATA))  # not the temporary kernel, not the Python version
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        for output in cell.get("outputs", []):
            output.get("metadata", {}).pop("execution", None)
    nbformat.validate(nb)
    return nb


def main(argv=None):
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--out", default=NOTEBOOK, help="notebook file to write")
    parser.add_argument("--execute", action="store_true",
                        help="execute it on the toy run (experiments/toy/) and store the outputs")
    parser.add_argument("--check", action="store_true",
                        help="only compare the cells of --out with the generated ones (outputs are ignored)")
    parser.add_argument("--timeout", default=900, type=int, help="seconds one cell may run with --execute")
    args = parser.parse_args(argv)
    if args.check:
        try:
            same = notebook_text(without_outputs(nbformat.read(args.out, as_version=4))) == notebook_text()
        except FileNotFoundError:
            same = False
        if not same:
            sys.exit(f"error: the cells of {args.out} differ from tools/toy/demo_cells.py; run "
                     "`python tools/toy/make_demo_notebook.py --execute` to regenerate it")
        print(f"{args.out} is up to date")
        return
    nb = build_notebook()
    if args.execute:
        print("executing the notebook on the toy run (about a minute) ...", flush=True)
        execute(nb, args.timeout)
    text = notebook_text(nb)
    if len(text.encode("utf-8")) > MAX_BYTES:
        sys.exit(f"error: the notebook would be {len(text) / 2**20:.1f} MB, over {MAX_BYTES / 2**20:.0f} MB; "
                 "show fewer or smaller images (NUM_IMAGES, FIGURE_DPI)")
    with atomic_output(args.out, "wb") as f:
        f.write(text.encode("utf-8"))
    print(f"wrote {args.out} ({len(text.encode('utf-8')) / 1024:.0f} KiB"
          f"{', with outputs' if args.execute else ', no outputs'})")


if __name__ == "__main__":
    main()
