"""Write demo.ipynb, the walk-through notebook, from its source demo.py (jupytext percent format).

    python tools/toy/make_demo_notebook.py --execute  convert and execute it on the toy run
                                                  (experiments/toy/), storing the outputs: what is
                                                  committed, so the figures show without running
    python tools/toy/make_demo_notebook.py --execute --tag MyRS --seg_tag MySeg --dataset D --root_dir R \
        --pred_dir P --out my_demo.ipynb          the same on another run: one flag per notebook parameter
    python tools/toy/make_demo_notebook.py            convert only, keeping the stored outputs of
                                                  the code cells whose source did not change
    python tools/toy/make_demo_notebook.py --check    exit 1 if demo.ipynb's cells differ from demo.py

A cell's id is its `id="..."` in demo.py (fixed, so the file changes only where the cells do).
--execute runs a kernel on this interpreter (the venv) through nbclient and drops what changes from
run to run (timings, kernel and interpreter details), so executing again on the same run changes
nothing but what the run changed. The notebook reads its parameters from RSEPM_DEMO_<NAME>
variables (its parameters cell); --execute passes on those set in the environment, and each
parameter flag (--tag, --root_dir, ...) sets its variable, winning over the environment's. Without
either the notebook runs on the toy run.
tests/test_notebook.py checks the stored file and executes a copy on a tiny run.
"""

import contextlib
import json
import os
import sys
import tempfile

import jupytext
import nbformat

if __package__ in (None, ""):  # run as a file, python tools/GROUP/NAME.py: the repository root on the import path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from core.errors import FormatError, MissingFileError, ProjectError, UsageError  # noqa: E402
from core.io import atomic_output  # noqa: E402
from tools.args import cli, conf_threshold, make_parser, str2bool  # noqa: E402
from tools.paths import REPO_ROOT  # noqa: E402
from tools.seeds.infer_loop import parse_scales  # noqa: E402

SOURCE = os.path.join(REPO_ROOT, "demo.py")
NOTEBOOK = os.path.join(REPO_ROOT, "demo.ipynb")
KERNEL = "rsepm-demo"
# jupytext's pairing, so that Jupyter with jupytext saves edits of demo.ipynb back into demo.py
METADATA = {
    "jupytext": {"cell_metadata_filter": "id,tags,-all", "formats": "ipynb,py:percent"},
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"},
}
MAX_BYTES = 2 * 1024 * 1024  # the stored notebook must stay small enough to browse
PREFIX = "RSEPM_DEMO_"  # the notebook's parameters cell reads RSEPM_DEMO_<NAME>
# The notebook's parameters that --execute sets: (flag, NAME of RSEPM_DEMO_<NAME>, type, choices, help).
PARAMETERS = [
    ("--root_dir", "ROOT", str, None, "dataset root in the seed layout (ROOT_DIR)"),
    ("--dataset", "DATASET", str, None, "dataset name (data/{DATASET}.json) or dataset JSON file (DATASET)"),
    ("--domain", "DOMAIN", str, None, "split the images come from (DOMAIN)"),
    ("--pred_dir", "PRED_DIR", str, None, "experiment folder: models/, predictions/, pseudo-labels/ (PRED_DIR)"),
    ("--tag", "TAG", str, None, "the RS+EPM run, {pred_dir}/models/{tag}/ (RSEPM_TAG)"),
    ("--seg_tag", "SEG_TAG", str, None, "the retrained segmenter's run (SEG_TAG)"),
    ("--weights", "WEIGHTS", str, None, "RS+EPM .pth file; the notebook's default: models/{tag}/last.pth (WEIGHTS)"),
    ("--seg_weights", "SEG_WEIGHTS", str, None, "retrained model's .pth file (SEG_WEIGHTS)"),
    (
        "--backbone",
        "BACKBONE",
        str,
        None,
        "RS+EPM backbone; the notebook's default: what config.json beside the "
        "weights records, else resnet18 (BACKBONE)",
    ),
    ("--seg_backbone", "SEG_BACKBONE", str, None, "retrained model's backbone, as --backbone (SEG_BACKBONE)"),
    ("--seg_decoder", "SEG_DECODER", str, ("deeplabv3+", "deeplabv2"), "retrained model's decoder (SEG_DECODER)"),
    ("--seg_output_stride", "SEG_OUTPUT_STRIDE", int, (8, 16), "retrained model's output stride (SEG_OUTPUT_STRIDE)"),
    ("--image_ids", "IMAGE_IDS", str, None, "comma-separated image ids to show (IMAGE_IDS)"),
    ("--num_images", "NUM_IMAGES", int, None, "without --image_ids: the first this many of the split (NUM_IMAGES)"),
    ("--scales", "SCALES", parse_scales, None, "comma-separated test-time scales (SCALES)"),
    ("--conf_th", "CONF_TH", conf_threshold, None, "-1: ground-truth tags; else classes scoring >= this (CONF_TH)"),
    (
        "--bg_th",
        "BG_TH",
        float,
        None,
        "background threshold of the seed panel; the notebook's default: evaluate.py's best, else 0.35 (BG_TH)",
    ),
]


def build_notebook(source=SOURCE):
    """The notebook of the percent-format script `source`: no outputs, each cell's id its `id=`."""
    try:
        nb = jupytext.read(source, fmt="py:percent")
    except FileNotFoundError:
        raise MissingFileError(f"{source}: notebook source not found") from None
    nb = nbformat.from_dict(json.loads(json.dumps(nb)))
    for k, cell in enumerate(nb.cells):
        # fixed ids: nbformat would draw random ones and the file would change on every conversion
        cell["id"] = str(cell.metadata.pop("id", f"cell-{k + 1}"))
        cell.metadata.pop("lines_to_next_cell", None)  # jupytext's note of the blank lines ruff format puts there
    nb["metadata"] = json.loads(json.dumps(METADATA))
    nb["nbformat"], nb["nbformat_minor"] = 4, 5
    try:
        nbformat.validate(nb)
    except nbformat.ValidationError as e:
        raise FormatError(f"{source}: not a valid notebook: {e.message}") from None
    ids = [c["id"] for c in nb.cells]
    if len(set(ids)) != len(ids):
        raise FormatError(f"{source}: cell ids repeat: {', '.join(sorted({i for i in ids if ids.count(i) > 1}))}")
    return nb


def notebook_text(nb):
    return nbformat.writes(nb) + "\n"


def without_outputs(nb):
    """A copy of the notebook node with every code cell's outputs and execution count cleared."""
    nb = nbformat.from_dict(json.loads(json.dumps(nb)))
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    return nb


def keep_outputs(nb, stored):
    """Copy onto `nb` the outputs of the code cells of `stored` with the same id and source."""
    old = {c["id"]: c for c in stored.cells if c.cell_type == "code"}
    for cell in nb.cells:
        match = old.get(cell["id"])
        if cell.cell_type == "code" and match is not None and match.source == cell.source:
            cell.outputs, cell.execution_count = match.outputs, match.execution_count
    return nb


@contextlib.contextmanager
def kernel_environment(settings):
    """A kernelspec running ipykernel on this interpreter, and the environment the kernel inherits:
    RSEPM_DEMO_{name} = settings[name] and no other RSEPM_DEMO_* (main passes the environment's
    own in `settings`), PNG figures via the inline backend, one thread per process unless
    OMP_NUM_THREADS is set."""
    saved = dict(os.environ)
    with tempfile.TemporaryDirectory() as tmp:
        spec = os.path.join(tmp, "kernels", KERNEL)
        os.makedirs(spec)
        with open(os.path.join(spec, "kernel.json"), "w", encoding="utf-8") as f:
            json.dump(
                {
                    "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                    "display_name": "RS+EPM demo",
                    "language": "python",
                },
                f,
            )
        for key in [k for k in os.environ if k.startswith(PREFIX)]:
            del os.environ[key]
        os.environ.update(
            {
                "JUPYTER_PATH": tmp,
                "JUPYTER_RUNTIME_DIR": os.path.join(tmp, "runtime"),
                "MPLBACKEND": "module://matplotlib_inline.backend_inline",
                "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
            }
        )
        os.environ.update({PREFIX + name: value for name, value in settings.items()})
        try:
            yield
        finally:
            os.environ.clear()
            os.environ.update(saved)


def execute(nb, timeout=900, settings=None):
    """Execute the notebook node in place from the repository root with RSEPM_DEMO_{name} =
    settings[name]; returns it without the run-to-run noise. A cell error raises ProjectError naming
    the cell and the exception (MissingFileError for a missing file, UsageError for settings that
    contradict each other)."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    with kernel_environment(settings or {}):
        try:
            NotebookClient(
                nb,
                timeout=timeout,
                kernel_name=KERNEL,
                record_timing=False,
                resources={"metadata": {"path": REPO_ROOT}},
            ).execute()
        except CellExecutionError as e:
            failed = next((c["id"] for c in nb.cells for o in c.get("outputs", []) if o["output_type"] == "error"), "?")
            error = (
                MissingFileError
                if e.ename in ("FileNotFoundError", "MissingFileError")
                else UsageError
                if e.ename == "UsageError"
                else ProjectError
            )
            raise error(f"cell {failed} of the notebook failed: {e.ename}: {e.evalue}") from None
    nb["metadata"] = json.loads(json.dumps(METADATA))  # not the temporary kernel, not the Python version
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        for output in cell.get("outputs", []):
            output.get("metadata", {}).pop("execution", None)
    nbformat.validate(nb)
    return nb


def read_stored(path):
    """The notebook at `path`, or None when there is none yet."""
    if not os.path.isfile(path):
        return None
    try:
        return nbformat.read(path, as_version=4)
    except (ValueError, nbformat.ValidationError) as e:  # NotJSONError is a ValueError
        raise FormatError(f"{path}: not a readable notebook ({e}); delete it or run with --execute") from None


def get_args_parser():
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--source", default=SOURCE, help="percent-format script the notebook is made from")
    parser.add_argument("--out", default=NOTEBOOK, help="notebook file to write")
    # --execute / --check alone mean "true"
    parser.add_argument(
        "--execute",
        default=False,
        type=str2bool,
        nargs="?",
        const=True,
        help="execute it and store the outputs: on the toy run (experiments/toy/), or on the run "
        "that the flags below and the RSEPM_DEMO_* variables of the environment name",
    )
    parser.add_argument(
        "--check",
        default=False,
        type=str2bool,
        nargs="?",
        const=True,
        help="only compare the cells of --out with --source (outputs are ignored)",
    )
    parser.add_argument("--timeout", default=900, type=int, help="seconds one cell may run with --execute")
    group = parser.add_argument_group(
        "the notebook's parameters (with --execute)",
        "Each flag sets the notebook parameter in brackets through its variable RSEPM_DEMO_<NAME> "
        "(e.g. --tag: RSEPM_DEMO_TAG, --root_dir: RSEPM_DEMO_ROOT). RSEPM_DEMO_* variables already set in "
        "the environment reach the notebook too; a flag wins over its variable. A parameter set by neither "
        "keeps the notebook's default, the toy run.",
    )
    for flag, name, kind, choices, text in PARAMETERS:
        group.add_argument(flag, default=None, type=kind, choices=choices, help=f"{text}; sets RSEPM_DEMO_{name}")
    return parser


def setting_text(value):
    """A flag's parsed value as the notebook's RSEPM_DEMO_ variable holds it."""
    return ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)


def notebook_settings(args, environ=None):
    """{NAME: (value, where it comes from)} of the RSEPM_DEMO_<NAME> variables the kernel gets: those
    of the environment, replaced by the parameter flags given."""
    environ = os.environ if environ is None else environ
    settings = {key[len(PREFIX) :]: (value, "environment") for key, value in environ.items() if key.startswith(PREFIX)}
    for flag, name, *_ in PARAMETERS:
        value = getattr(args, flag[2:])
        if value is not None:
            settings[name] = (setting_text(value), flag)
    return settings


def main(args):
    given = [flag for flag, *_ in PARAMETERS if getattr(args, flag[2:]) is not None]
    if given and not args.execute:
        raise UsageError(
            f"{', '.join(given)} need{'s' if len(given) == 1 else ''} --execute "
            "(they set the notebook's parameters for the run)"
        )
    nb = build_notebook(args.source)
    stored = read_stored(args.out)
    if args.check:
        if stored is None or notebook_text(without_outputs(stored)) != notebook_text(nb):
            print(
                f"{args.out}: its cells differ from {args.source}; run "
                "`python tools/toy/make_demo_notebook.py --execute` to regenerate it"
            )
            return {"failed": [args.out]}
        print(f"{args.out} is up to date")
        return {"failed": []}
    if args.execute:
        settings = notebook_settings(args)
        shown = [f"{PREFIX}{name}={value} ({where})" for name, (value, where) in settings.items() if value.strip()]
        print(
            f"executing the notebook {'with ' + ', '.join(shown) if shown else 'on the toy run'} (about a minute) ...",
            flush=True,
        )
        execute(nb, args.timeout, {name: value for name, (value, _) in settings.items()})
    elif stored is not None:
        keep_outputs(nb, stored)
    data = notebook_text(nb).encode("utf-8")
    if len(data) > MAX_BYTES:
        raise ProjectError(
            f"{args.out}: the notebook would be {len(data) / 2**20:.1f} MB, over "
            f"{MAX_BYTES / 2**20:.0f} MB; show fewer or smaller images (NUM_IMAGES, FIGURE_DPI)"
        )
    with atomic_output(args.out, "wb") as f:
        f.write(data)
    kept = sum(1 for c in nb.cells if c.cell_type == "code" and c.outputs)
    print(
        f"wrote {args.out} ({len(data) / 1024:.0f} KiB, {kept} code cell(s) with outputs"
        f"{', executed' if args.execute else ''})"
    )
    return {"out": args.out, "bytes": len(data), "executed": args.execute, "failed": []}


if __name__ == "__main__":
    cli(main, get_args_parser())
