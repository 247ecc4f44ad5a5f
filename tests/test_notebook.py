"""demo.ipynb: stored with its figures, its cells those of its source demo.py (jupytext percent
format), and it runs top to bottom.

The stored file is checked as committed (outputs of the toy run, small, no run-to-run noise).
The notebook of demo.py is executed headlessly (nbclient, a kernel on this interpreter) against a tiny run
built here: a few TOY images, randomly initialised RS+EPM and DeepLabV3+ ResNet-18 weights,
seeds written by infer_rsepm.py / infer_seg.py and scored by evaluate.py, and random-walk and
CRF pseudo-mask files written here as the pipeline's stages would. A cell appended to
the executed copy pickles what the notebook computed, and that is checked against independent
computations: the scripts' seed files, a numpy threshold rule, and a CAM computed here by hand.
"""

import contextlib
import io
import json
import os
import pickle
import shutil
import sys
import xml.etree.ElementTree as ET

import nbformat
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import run_main
from nbclient import NotebookClient
from PIL import Image

import evaluate
import infer_rsepm
import infer_seg
import train_rsepm
import train_seg
from core.crf import seed_to_mask
from core.errors import MissingFileError, UsageError
from core.io import load_seed, read_json, write_json
from core.networks import RSEPM, DeepLabV3Plus
from core.weights import save_weights
from tools.engine.resume_state import config_path, run_config
from tools.paths import evaluation_path, model_dir, model_path, predictions_dir, pseudo_labels_dir
from tools.toy import make_demo_notebook

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "demo.ipynb")
SOURCE = os.path.join(ROOT, "demo.py")
KERNEL = "rsepm-demo-test"
TAG, SEG_TAG = "R18@TOY@demo-test", "R18@TOY@DeepLabV3+@MS@demo-test"
OWN_TAG, OWN_SEG_TAG = "MyRS", "MySeg"  # an own-data-like run, given to make_demo_notebook.py by flags
CLASSES = ["background", "disc", "square", "triangle", "ring", "cross"]
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
SCALES = "1.0,0.5"
NUM_VALIDATION = 3

# Appended to the executed copy only: hands the notebook's results to the test.
DUMP_CELL = """
import pickle
with open(os.environ["RSEPM_DEMO_TEST_DUMP"], "wb") as f:
    pickle.dump({"bg_th": bg_th, "results": [{k: r[k] for k in ("id", "classes", "cam", "seed", "seed_mask",
                                                                  "crf_mask", "seg_mask", "rw_mask")}
                             for r in results], "train_ids": train_ids}, f)
"""


# ---------------------------------------------------------------------------------------------
# The tiny run and the kernel
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run(tmp_path_factory, toy_dataset):
    """TOY images, random weights, the scripts' seeds and their evaluate.py results."""
    root = toy_dataset(num_train=1, num_train_aug=1, num_validation=NUM_VALIDATION, num_test=0)
    pred_dir = str(tmp_path_factory.mktemp("demo") / "experiments") + os.sep
    threads = torch.get_num_threads()
    # Tiny images: one thread is faster, and far faster on a busy machine (no OpenMP spinning).
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        save_weights(RSEPM("resnet18", 6), model_path(pred_dir, TAG))
        save_weights(DeepLabV3Plus("resnet18", 6, output_stride=16), model_path(pred_dir, SEG_TAG))
        common = ["--root_dir", root, "--dataset", "TOY", "--domain", "validation", "--pred_dir", pred_dir]
        infer = [*common, "--backbone", "resnet18", "--scales", SCALES, "--num_workers", "0", "--gpus", "cpu"]
        run_main(infer_rsepm, [*infer, "--tag", TAG])
        run_main(infer_seg, [*infer, "--tag", SEG_TAG, "--decoder", "deeplabv3+", "--output_stride", "16"])
        for tag in (TAG, SEG_TAG):
            run_main(evaluate, [*common, "--folder", "predictions", "--tag", tag, "--num_workers", "1"])
    finally:
        torch.set_num_threads(threads)
    ids = sorted(f[:-4] for f in os.listdir(os.path.join(root, "validation", "image")))
    # Random-walk masks of the first two validation images only (the third panel says "no mask"),
    # and CRF + random-walk pseudo masks of the train_aug image: each a different constant class.
    rw = {image_id: np.full(read_rgb(root, image_id).shape[:2], 1 + k, np.uint8) for k, image_id in enumerate(ids[:2])}
    for image_id, mask in rw.items():
        write_png(pseudo_labels_dir(pred_dir, TAG + "@rw", "validation"), image_id, mask)
    train_id = sorted(f[:-4] for f in os.listdir(os.path.join(root, "train_aug", "image")))[0]
    shape = read_rgb(root, train_id, "train_aug").shape[:2]
    write_png(pseudo_labels_dir(pred_dir, TAG, "train_aug"), train_id, np.full(shape, 3, np.uint8))
    write_png(pseudo_labels_dir(pred_dir, TAG + "@rw", "train_aug"), train_id, np.full(shape, 4, np.uint8))
    return {"root": root, "pred_dir": pred_dir, "ids": ids, "rw": rw, "train_id": train_id}


def install_kernel(directory):
    """A kernelspec running ipykernel on this interpreter (the venv), found through JUPYTER_PATH."""
    spec_dir = directory / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "RS+EPM demo test",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")


def execute_notebook(tmp, settings):
    """Run demo.ipynb plus the dump cell with RSEPM_DEMO_{name} = settings[name]; returns
    (executed notebook, the dumped results)."""
    install_kernel(tmp / "jupyter")
    dump = tmp / "dump.pkl"
    env = {
        "JUPYTER_PATH": str(tmp / "jupyter"),
        "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
        "IPYTHONDIR": str(tmp / "ipython"),
        "OMP_NUM_THREADS": "1",
        # The inline backend renders with Agg (no display needed) and returns PNG outputs.
        "MPLBACKEND": "module://matplotlib_inline.backend_inline",
        "RSEPM_DEMO_TEST_DUMP": str(dump),
    }
    env.update({"RSEPM_DEMO_" + name: value for name, value in settings.items()})
    nb = make_demo_notebook.build_notebook(SOURCE)
    nb.cells.append(nbformat.v4.new_code_cell(DUMP_CELL.strip()))
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        NotebookClient(nb, timeout=300, kernel_name=KERNEL, resources={"metadata": {"path": ROOT}}).execute()
    with open(dump, "rb") as f:
        return nb, pickle.load(f)


@pytest.fixture(scope="module")
def executed(run, tmp_path_factory):
    """The notebook on the whole tiny run: both models, evaluate.py results present."""
    return execute_notebook(
        tmp_path_factory.mktemp("kernel"),
        {"ROOT": run["root"], "PRED_DIR": run["pred_dir"], "TAG": TAG, "SEG_TAG": SEG_TAG, "SCALES": SCALES},
    )


@pytest.fixture(scope="module")
def executed_bare(run, tmp_path_factory):
    """The notebook on an empty experiment folder: RS+EPM weights given by path, no retrained
    model, no evaluate.py results, one chosen image, predicted classes."""
    tmp = tmp_path_factory.mktemp("bare")
    return execute_notebook(
        tmp,
        {
            "ROOT": run["root"],
            "PRED_DIR": str(tmp / "empty"),
            "TAG": TAG,
            "SEG_TAG": SEG_TAG,
            "WEIGHTS": model_path(run["pred_dir"], TAG),
            "IMAGE_IDS": run["ids"][1],
            "CONF_TH": "0.34",
            "SCALES": "1.0",
        },
    )


@pytest.fixture(scope="module")
def own_run(run, tmp_path_factory):
    """An own-data-like run: the tiny run's weights under other tags in another folder, each with
    the config.json its training would write (train_rsepm.py's / train_seg.py's own flags); the
    retrained model's records output stride 8 (the notebook's default is 16)."""
    pred_dir = str(tmp_path_factory.mktemp("own") / "experiments") + os.sep
    common = ["--root_dir", run["root"], "--dataset", "TOY", "--domain", "train_aug", "--pred_dir", pred_dir]
    trainings = [
        (
            OWN_TAG,
            TAG,
            train_rsepm,
            [
                "--backbone",
                "resnet18",
                "--max_epoch",
                "7",
                "--batch_size",
                "3",
                "--lr",
                "0.0123",
                "--crop_size",
                "96",
                "--rs_start",
                "2",
                "--mix_start",
                "5",
                "--seed",
                "41",
            ],
        ),
        (
            OWN_SEG_TAG,
            SEG_TAG,
            train_seg,
            [
                "--decoder",
                "deeplabv3+",
                "--backbone",
                "resnet18",
                "--output_stride",
                "8",
                "--label_tag",
                OWN_TAG + "@rw",
                "--max_epoch",
                "9",
                "--batch_size",
                "5",
                "--crop_size",
                "80",
                "--seed",
                "42",
            ],
        ),
    ]
    for tag, source, script, flags in trainings:
        os.makedirs(model_dir(pred_dir, tag))
        shutil.copy(model_path(run["pred_dir"], source), model_path(pred_dir, tag))
        args = script.get_args_parser().parse_args([*common, "--tag", tag, *flags])
        write_json(config_path(pred_dir, tag), run_config(args, tag=tag))
    return pred_dir


def execute_with_flags(tmp, *flags):
    """make_demo_notebook.py --execute FLAGS --out tmp/demo.ipynb as a user runs it, with the
    environment's RSEPM_DEMO_* of the test only; returns (notebook, what it printed)."""
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        for key in [k for k in os.environ if k.startswith("RSEPM_DEMO_")]:
            patch.delenv(key)
        patch.setenv("IPYTHONDIR", str(tmp / "ipython"))
        patch.setenv("RSEPM_DEMO_TAG", "no-such-run")  # --tag wins over it
        patch.setenv("RSEPM_DEMO_NUM_IMAGES", "1")  # no flag: reaches the kernel
        with contextlib.redirect_stdout(printed):
            convert(SOURCE, tmp / "demo.ipynb", "--execute", *flags)
    return nbformat.read(str(tmp / "demo.ipynb"), as_version=4), printed.getvalue()


@pytest.fixture(scope="module")
def executed_own(run, own_run, tmp_path_factory):
    """make_demo_notebook.py --execute on the own-data-like run, given by flags."""
    return execute_with_flags(
        tmp_path_factory.mktemp("own-notebook"),
        "--tag",
        OWN_TAG,
        "--seg_tag",
        OWN_SEG_TAG,
        "--dataset",
        "TOY",
        "--root_dir",
        run["root"],
        "--pred_dir",
        own_run,
        "--scales",
        "1.0",
    )


def outputs(nb, cell_id):
    return next(c for c in nb.cells if c.get("id") == cell_id)["outputs"]


def text_of(nb, cell_id, mime="text/plain"):
    """stdout plus the `mime` representation of every output of a cell, joined."""
    parts = []
    for out in outputs(nb, cell_id):
        parts.append(out.get("text", "") if out["output_type"] == "stream" else out.get("data", {}).get(mime, ""))
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# The stored file
# ---------------------------------------------------------------------------------------------
def test_notebook_is_stored_with_its_figures_small_and_without_run_noise():
    with open(NOTEBOOK, "rb") as f:
        size = len(f.read())
    assert size < 2 * 1024 * 1024
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata == {
        "jupytext": {"cell_metadata_filter": "id,tags,-all", "formats": "ipynb,py:percent"},
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code[0].metadata.get("tags") == ["parameters"]
    # Every code cell ran, in order, without an error; no timings or kernel details were kept.
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    assert all(o["output_type"] != "error" for c in code for o in c.outputs)
    assert all("execution" not in c.metadata for c in nb.cells)
    for cell_id in ("figure", "train-masks", "evaluation-chart"):
        assert any("image/png" in o.get("data", {}) for o in outputs(nb, cell_id)), cell_id
    assert "mIoU" in text_of(nb, "evaluation-table", "text/markdown")
    assert "lr " in text_of(nb, "toy-settings", "text/markdown")
    # The stored outputs are the toy pipeline's run, not a test's.
    assert "./experiments/toy/" in text_of(nb, "threshold")


def percent_cells(path):
    """(id, kind, source) of each `# %%` cell of a percent-format script, read here by hand: a
    markdown cell's lines lose their `# ` (or a bare `#`), blank lines around a cell are dropped."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    cells, current = [], None
    for line in lines:
        if line.startswith("# %%"):
            kind = "markdown" if "[markdown]" in line else "code"
            current = (line.split('id="')[1].split('"')[0], kind, [])
            cells.append(current)
        elif current is not None:
            current[2].append(
                line[2:]
                if current[1] == "markdown" and line.startswith("# ")
                else ""
                if current[1] == "markdown" and line == "#"
                else line
            )
    return [(i, k, "\n".join(body).strip("\n")) for i, k, body in cells]


def test_notebook_cells_are_those_of_the_percent_script():
    stored = nbformat.read(NOTEBOOK, as_version=4)
    assert [(c.id, c.cell_type, c.source) for c in stored.cells] == percent_cells(SOURCE)
    parameters = next(c for c in stored.cells if c.id == "parameters")
    assert parameters.metadata == {"tags": ["parameters"]}
    assert all(c.metadata == {} for c in stored.cells if c.id != "parameters")
    args = make_demo_notebook.get_args_parser().parse_args(["--check"])
    assert make_demo_notebook.main(args) == {"failed": []}


def convert(source, out, *extra):
    return make_demo_notebook.main(
        make_demo_notebook.get_args_parser().parse_args(["--source", str(source), "--out", str(out), *extra])
    )


def test_editing_the_script_and_converting_updates_only_that_cell(tmp_path):
    source, out = tmp_path / "demo.py", tmp_path / "demo.ipynb"
    shutil.copy(SOURCE, source)
    shutil.copy(NOTEBOOK, out)
    text = source.read_text(encoding="utf-8")
    heading = "# # RS+EPM demo: from class activation maps to pseudo masks\n"
    code = "DEFAULT_BG_TH = 0.35\n"
    assert text.count(heading) == 1 and text.count(code) == 1
    source.write_text(
        text.replace(heading, "# # An edited heading\n").replace(code, "DEFAULT_BG_TH = 0.25\n"), encoding="utf-8"
    )
    args = make_demo_notebook.get_args_parser().parse_args(["--source", str(source), "--out", str(out), "--check"])
    assert make_demo_notebook.main(args) == {"failed": [str(out)]}
    assert convert(source, out)["failed"] == []
    before, after = nbformat.read(NOTEBOOK, as_version=4), nbformat.read(str(out), as_version=4)
    assert [c.id for c in after.cells] == [c.id for c in before.cells]
    for old, new in zip(before.cells, after.cells):
        if old.id == "intro":
            assert new.source == old.source.replace(
                "# RS+EPM demo: from class activation maps to pseudo masks", "# An edited heading"
            )
        elif old.id == "threshold":  # its code changed: its stored outputs no longer hold
            assert new.source != old.source and new.outputs == [] and new.execution_count is None
        else:
            assert new == old, old.id
    assert convert(source, out, "--check") == {"failed": []}


def test_conversion_refuses_a_missing_source_and_parameters_without_execute(tmp_path):
    out = tmp_path / "demo.ipynb"
    with pytest.raises(MissingFileError, match="nothing.py"):
        convert(tmp_path / "nothing.py", out)
    with pytest.raises(UsageError, match="--execute"):
        convert(SOURCE, out, "--pred_dir", str(tmp_path))
    with pytest.raises(UsageError, match="^--tag, --num_images need --execute"):
        convert(SOURCE, out, "--tag", "MyRS", "--num_images", "2")
    assert not out.exists()


def test_every_parameter_flag_sets_a_variable_the_parameters_cell_reads():
    parameters = next(c.source for c in make_demo_notebook.build_notebook(SOURCE).cells if c.id == "parameters")
    assert "papermill" not in parameters
    for flag, name, *_ in make_demo_notebook.PARAMETERS:
        assert f'setting("{name}",' in parameters, flag
    flags = {flag for flag, *_ in make_demo_notebook.PARAMETERS}
    assert {
        "--tag",
        "--seg_tag",
        "--dataset",
        "--backbone",
        "--domain",
        "--root_dir",
        "--pred_dir",
        "--image_ids",
        "--num_images",
        "--conf_th",
        "--weights",
    } <= flags


def test_flags_win_over_the_environment_which_is_passed_on():
    args = make_demo_notebook.get_args_parser().parse_args(
        ["--execute", "--tag", "MyRS", "--scales", "1.0,0.5", "--conf_th", "0.3"]
    )
    environ = {"RSEPM_DEMO_TAG": "other", "RSEPM_DEMO_ROOT": "../MyData/", "PATH": "/bin"}
    assert make_demo_notebook.notebook_settings(args, environ) == {
        "TAG": ("MyRS", "--tag"),
        "ROOT": ("../MyData/", "environment"),
        "SCALES": ("1.0,0.5", "--scales"),
        "CONF_TH": ("0.3", "--conf_th"),
    }
    bare = make_demo_notebook.get_args_parser().parse_args(["--execute"])
    assert make_demo_notebook.notebook_settings(bare, {"PATH": "/bin"}) == {}


def cell_source(cell_id):
    return next(c.source for c in make_demo_notebook.build_notebook(SOURCE).cells if c.id == cell_id)


def run_cells(monkeypatch, settings, *cell_ids):
    """Run cells of demo.py in this process with RSEPM_DEMO_{name} = settings[name] only; returns
    (namespace, what they displayed)."""
    import IPython.display

    shown = []
    monkeypatch.setattr(IPython.display, "display", shown.append)
    for key in [k for k in os.environ if k.startswith("RSEPM_DEMO_")]:
        monkeypatch.delenv(key)
    for name, value in settings.items():
        monkeypatch.setenv("RSEPM_DEMO_" + name, value)
    monkeypatch.chdir(ROOT)
    namespace = {}
    for cell_id in cell_ids:
        exec(cell_source(cell_id), namespace)
    return namespace, shown


def test_a_network_setting_contradicting_the_record_is_refused(run, own_run, monkeypatch):
    with pytest.raises(
        UsageError,
        match=r"^BACKBONE \(RSEPM_DEMO_BACKBONE, make_demo_notebook.py --backbone\) "
        r"resnet50 contradicts the training record .*MyRS.config.json",
    ):
        run_cells(
            monkeypatch,
            {"ROOT": run["root"], "PRED_DIR": own_run, "TAG": OWN_TAG, "BACKBONE": "resnet50"},
            "parameters",
            "toy-settings",
            "setup",
        )


def test_settings_cell_on_the_toy_run_shows_the_stored_toy_text(monkeypatch):
    """With the defaults (the toy run, here or not) the settings cell says what the stored one says."""
    namespace, shown = run_cells(monkeypatch, {}, "parameters", "toy-settings")
    assert namespace["ON_TOY_RUN"] and len(shown) == 1
    assert shown[0].data.startswith("**The toy run**")
    stored = nbformat.read(NOTEBOOK, as_version=4)
    assert shown[0].data == text_of(stored, "toy-settings", "text/markdown")


def test_notebook_text_states_the_pipeline_settings():
    """The scales, schedules and pretrained stand-in the stored notebook names are the pipeline's."""
    from tools.toy import toy_pipeline

    stored = nbformat.read(NOTEBOOK, as_version=4)
    text = text_of(stored, "toy-settings", "text/markdown").replace("\n  ", " ")  # unwrap the bullets
    scales = toy_pipeline.SCALES[toy_pipeline.SCALES.index("--scales") + 1]
    assert f"test-time scales `{scales}`" in text
    assert toy_pipeline.PRETRAINED in text
    for flags, start in ((toy_pipeline.RSEPM_TRAIN, "RS+EPM:"), (toy_pipeline.SEG_TRAIN, "the retrained DeepLabV3+")):
        epochs, crop = flags[flags.index("--max_epoch") + 1], flags[flags.index("--crop_size") + 1]
        line = next(line for line in text.split("\n* ") if line.startswith(start))
        assert f"{epochs} epochs" in line and f"{crop}-pixel crops" in line
    rsepm = next(line for line in text.split("\n* ") if line.startswith("RS+EPM:"))
    assert f"lr {toy_pipeline.RSEPM_TRAIN[toy_pipeline.RSEPM_TRAIN.index('--lr') + 1]}," in rsepm
    assert (
        f"pretrain_toy.py` for {toy_pipeline.PRETRAIN[toy_pipeline.PRETRAIN.index('--max_epoch') + 1]} epochs" in text
    )


# ---------------------------------------------------------------------------------------------
# The executed notebook
# ---------------------------------------------------------------------------------------------
def test_notebook_runs_and_draws_the_panels_and_the_chart(executed):
    nb, dump = executed
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o["output_type"] == "error"]
    assert errors == []
    for cell_id in ("figure", "evaluation-chart"):
        assert any("image/png" in o.get("data", {}) for o in outputs(nb, cell_id)), cell_id
    # not the toy run: its own settings, and it has no training record (weights written by the test)
    settings = text_of(nb, "toy-settings", "text/markdown")
    assert f"**The run `{TAG}`" in settings and "The toy run" not in settings
    assert f"* RS+EPM `{TAG}`: no training record" in settings
    assert "RS+EPM network: resnet18 (no config.json beside the weights)" in text_of(nb, "setup")
    assert len(dump["results"]) == NUM_VALIDATION  # NUM_IMAGES (4) capped by the split's size
    assert "skipped" not in text_of(nb, "retrained-model")
    assert dump["train_ids"] and "no CRF pseudo masks" not in text_of(nb, "train-masks")


def test_execute_with_flags_shows_that_runs_recorded_settings(own_run, executed_own):
    nb, printed = executed_own
    assert all(o["output_type"] != "error" for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    settings = text_of(nb, "toy-settings", "text/markdown")
    assert f"**The run `{OWN_TAG}` in `{own_run}`**" in settings
    rsepm = next(line for line in settings.splitlines() if line.startswith("* RS+EPM"))
    for text in (
        f"`{OWN_TAG}`",
        "dataset `TOY`",
        "`train_aug` images",
        "resnet18",
        "7 epochs",
        "batch 3",
        "lr 0.0123",
        "96-pixel crops",
        "RecurSeed from epoch 2",
        "EdgePredictMix from epoch 5",
        "training seed 41",
        config_path(own_run, OWN_TAG),
    ):
        assert text in rsepm, text
    seg = next(line for line in settings.splitlines() if line.startswith("* the retrained model"))
    for text in (
        f"`{OWN_SEG_TAG}`",
        "deeplabv3+",
        "output stride 8",
        f"on the pseudo masks of `{OWN_TAG}@rw`",
        "9 epochs",
        "batch 5",
        "80-pixel crops",
        "training seed 42",
    ):
        assert text in seg, text
    for toy_text in ("The toy run", "toy_pipeline.py", "pretrain_toy.py", "toy@ResNet18"):
        assert toy_text not in settings
    # the networks come from the records: output stride 8, not the notebook's default 16
    setup = text_of(nb, "setup")
    assert f"RS+EPM network: resnet18 ({config_path(own_run, OWN_TAG)})" in setup
    assert f"retrained network: deeplabv3+ resnet18, output stride 8 ({config_path(own_run, OWN_SEG_TAG)})" in setup
    assert model_path(own_run, OWN_SEG_TAG) in text_of(nb, "retrained-model")
    assert any("image/png" in o.get("data", {}) for o in outputs(nb, "figure"))
    assert "on the toy run" not in printed


def test_execute_passes_the_environment_on_and_its_flags_win(own_run, executed_own):
    nb, printed = executed_own
    assert f"RSEPM_DEMO_TAG={OWN_TAG} (--tag)" in printed and "RSEPM_DEMO_NUM_IMAGES=1 (environment)" in printed
    assert "no-such-run" not in printed
    assert text_of(nb, "setup").startswith("RS+EPM network") and "\n1 image(s) of TOY/validation" in text_of(
        nb, "setup"
    )
    assert f"RS+EPM weights: {model_path(own_run, OWN_TAG)}" in text_of(nb, "rsepm")


def test_execute_on_a_run_that_is_not_there_names_the_missing_weights(run, tmp_path):
    out = tmp_path / "demo.ipynb"
    pred_dir = str(tmp_path / "experiments") + os.sep
    with pytest.raises(MissingFileError) as error:
        execute_with_flags(tmp_path, "--tag", "MyRS", "--root_dir", run["root"], "--pred_dir", pred_dir)
    message = str(error.value)
    assert f"no RS+EPM weights at {model_path(pred_dir, 'MyRS')}" in message
    for setting in (
        "RSEPM_TAG (RSEPM_DEMO_TAG, make_demo_notebook.py --tag)",
        "PRED_DIR (RSEPM_DEMO_PRED_DIR, make_demo_notebook.py --pred_dir)",
        "--weights",
    ):
        assert setting in message
    assert "the toy run" not in message and "quickstart" not in message
    assert not out.exists()


def test_random_walk_masks_are_shown_where_their_files_exist(run, executed):
    _, dump = executed
    for r in dump["results"]:
        if r["id"] in run["rw"]:
            np.testing.assert_array_equal(r["rw_mask"], run["rw"][r["id"]])
        else:
            assert r["rw_mask"] is None
    assert dump["train_ids"] == [run["train_id"]]


def test_the_threshold_is_the_best_of_evaluate_sweep(run, executed):
    nb, dump = executed
    result = read_json(evaluation_path(run["pred_dir"], "predictions", TAG, "validation"))
    assert dump["bg_th"] == pytest.approx(result["threshold"])
    assert f"background threshold {result['threshold']:.2f} (best of the sweep" in text_of(nb, "threshold")


def test_the_iou_table_holds_every_evaluate_result(run, executed):
    nb, _ = executed
    table = text_of(nb, "evaluation-table", "text/markdown")
    for tag in (TAG, SEG_TAG):
        result = read_json(evaluation_path(run["pred_dir"], "predictions", tag, "validation"))
        assert f"`{tag}`" in table
        assert f"**{result['mIoU']:.2f}**" in table
        row = next(line for line in table.splitlines() if line.startswith("| disc |"))
        assert f"{result['iou']['disc']:.2f}" in row
    assert table.index(f"`{TAG}`") < table.index(f"`{SEG_TAG}`")  # the RS+EPM run first, as given


def test_seeds_equal_the_infer_rsepm_files(run, executed):
    _, dump = executed
    for r in dump["results"]:
        expected = load_seed(os.path.join(predictions_dir(run["pred_dir"], TAG, "validation"), r["id"] + ".pkl"))
        np.testing.assert_array_equal(r["seed"]["keys"], expected["keys"])
        np.testing.assert_allclose(r["seed"]["seed"], expected["seed"], atol=1e-5)
        assert r["classes"] == xml_classes(run["root"], r["id"])


def test_seed_panel_is_the_thresholded_argmax(executed):
    _, dump = executed
    for r in dump["results"]:
        keys, seed = r["seed"]["keys"], r["seed"]["seed"]
        # Background wins ties with the threshold, as the argmax over [threshold, seed...] does.
        expected = np.where(seed.max(axis=0) > dump["bg_th"], keys[1:][seed.argmax(axis=0)], 0)
        np.testing.assert_array_equal(r["seed_mask"], expected)


def test_crf_panel_matches_the_conversion_of_the_seed_file(run, executed):
    _, dump = executed
    for r in dump["results"]:
        seed = load_seed(os.path.join(predictions_dir(run["pred_dir"], TAG, "validation"), r["id"] + ".pkl"))
        expected = seed_to_mask(seed, read_rgb(run["root"], r["id"]), mode="crf")
        assert np.mean(r["crf_mask"] == expected) > 0.99


def test_retrained_panel_is_the_argmax_of_the_infer_seg_files(run, executed):
    _, dump = executed
    for r in dump["results"]:
        seed = load_seed(os.path.join(predictions_dir(run["pred_dir"], SEG_TAG, "validation"), r["id"] + ".pkl"))
        expected = seed["keys"][seed["seed"].argmax(axis=0)]
        assert r["seg_mask"].shape == expected.shape
        assert np.mean(r["seg_mask"] == expected) > 0.99


def test_cam_panel_is_the_max_of_the_normalised_tagged_cams(run, executed):
    _, dump = executed
    model = load_rsepm(run)
    for r in dump["results"]:
        image = (read_rgb(run["root"], r["id"]) / 255.0 - MEAN) / STD
        with torch.no_grad():
            cam = model(torch.from_numpy(image.transpose(2, 0, 1)).float()[None])["cam"][0]
        cam = cam.clamp(min=0)
        cam = cam / (cam.flatten(1).max(dim=1).values[:, None, None] + 1e-5)
        cam = cam[[c - 1 for c in r["classes"]]]
        cam = F.interpolate(cam[None], size=image.shape[:2], mode="bilinear", align_corners=False)[0]
        expected = cam.max(dim=0).values.numpy()
        np.testing.assert_allclose(r["cam"], expected, atol=1e-4)


def test_missing_retrained_model_and_results_are_skipped_with_a_message(run, executed_bare):
    nb, dump = executed_bare
    assert [r["id"] for r in dump["results"]] == [run["ids"][1]]
    assert all(r["seg_mask"] is None for r in dump["results"])
    assert dump["bg_th"] == 0.35
    assert "(default: no evaluate.py seed result" in text_of(nb, "threshold")
    assert "skipped the retrained model: no weights at" in text_of(nb, "retrained-model")
    assert "no evaluate.py results" in text_of(nb, "evaluation-table")
    assert outputs(nb, "evaluation-chart") == []
    assert all(r["rw_mask"] is None for r in dump["results"])
    assert dump["train_ids"] == [] and "no CRF pseudo masks of train_aug" in text_of(nb, "train-masks")
    assert any("image/png" in o.get("data", {}) for o in outputs(nb, "figure"))


def test_predicted_classes_are_those_scoring_at_least_conf_th(run, executed_bare):
    _, dump = executed_bare
    r = dump["results"][0]
    model = load_rsepm(run)
    image = torch.from_numpy(((read_rgb(run["root"], r["id"]) / 255.0 - MEAN) / STD).transpose(2, 0, 1)).float()
    with torch.no_grad():  # scale 1.0 and its flip, as SCALES = "1.0"
        scores = torch.sigmoid(model(torch.stack([image, image.flip(-1)]))["logits"]).mean(dim=0)
    assert r["classes"] == [c + 1 for c in range(5) if scores[c] >= 0.34]
    assert list(r["seed"]["keys"]) == [0] + r["classes"]


# ---------------------------------------------------------------------------------------------
# Helpers reading the tiny dataset without the project's readers
# ---------------------------------------------------------------------------------------------
def load_rsepm(run):
    model = RSEPM("resnet18", 6)
    model.load_state_dict(torch.load(model_path(run["pred_dir"], TAG), weights_only=True))
    return model.eval()


def read_rgb(root, image_id, domain="validation"):
    with Image.open(os.path.join(root, domain, "image", image_id + ".jpg")) as image:
        return np.array(image.convert("RGB"))


def write_png(directory, image_id, mask):
    os.makedirs(directory, exist_ok=True)
    Image.fromarray(mask, mode="L").save(os.path.join(directory, image_id + ".png"))


def xml_classes(root, image_id):
    names = [n.text for n in ET.parse(os.path.join(root, "validation", "xml", image_id + ".xml")).iter("name")]
    return sorted({CLASSES.index(n) for n in names})
