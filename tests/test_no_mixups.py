"""No silent mix-ups: one live writer per output, inputs that are not regular files, validation that
skips, a second SIGTERM, short temporary names, a replaced file refused on resume, the own-data
builder's guards (docs/reliability.md#one-writer-per-output)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from helpers import run_main
from PIL import Image

import convert_seed_to_pseudo_masks as convert
import evaluate
import infer_rsepm
import train_seg
from core.affinity import AffinityNet
from core.errors import OutputError, PrepareError, ProjectError, ResumeError, UsageError
from core.io import atomic_output, save_mask
from core.networks import RSEPM
from core.safety import (
    OutputBusyError,
    hold_output,
    lock_path,
    output_writer,
    release_output,
    remove_stale_temp_files,
    temp_prefix,
)
from core.weights import save_weights
from tools.args import cli
from tools.builders import prepare_own
from tools.engine.resume_state import check_dataset, dataset_identity
from tools.paths import REPO_ROOT, model_dir, model_path, output_dir, predictions_dir, pseudo_labels_dir

TAG = "ResNet18@TOY@mixups"


# --- a writer lock held by another live process ------------------------------------------------
class Holder:
    """A separate process that holds the writer lock of `output` until stopped (or killed)."""

    def __init__(self, output):
        code = (
            "import sys; sys.path.insert(0, sys.argv[1]); from core.safety import hold_output; "
            "hold_output(sys.argv[2]); print('held', flush=True); sys.stdin.read()"
        )
        self.process = subprocess.Popen(
            [sys.executable, "-c", code, REPO_ROOT, output], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout.readline().strip() == "held"

    def kill(self):
        self.process.kill()
        self.process.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()


def test_a_second_writer_is_refused_naming_the_live_one_and_a_dead_ones_lock_is_taken_over(tmp_path):
    folder = str(tmp_path / "out")
    holder = Holder(folder)
    with pytest.raises(OutputBusyError, match=rf"pid {holder.process.pid} .*command: .*-c"):
        hold_output(folder)
    assert output_writer(folder) and f"pid {holder.process.pid}" in output_writer(folder)
    holder.kill()  # SIGKILL: no clean-up ran, the kernel released the lock
    assert output_writer(folder) is None
    assert hold_output(folder) == lock_path(folder) == str(tmp_path / ".out.lock")
    assert hold_output(folder) == lock_path(folder)  # this process again: a no-op
    record = json.loads(open(lock_path(folder)).read())
    assert record["pid"] == os.getpid()
    # held here, a new process is refused
    code = (
        f"import sys; sys.path.insert(0, {REPO_ROOT!r}); from core.safety import hold_output; hold_output({folder!r})"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0 and f"pid {os.getpid()}" in result.stderr
    release_output(folder)
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.fixture(scope="module")
def stage_inputs(tmp_path_factory, toy_dataset):
    """A toy dataset, random RS+EPM and affinity weights, seeds of train_aug and validation, their
    CRF masks: the inputs of every stage."""
    root = toy_dataset(num_validation=3)
    pred = str(tmp_path_factory.mktemp("mixups") / "exp")
    torch.manual_seed(0)
    save_weights(RSEPM("resnet18", num_classes=6), model_path(pred, TAG))
    with open(os.path.join(model_dir(pred, TAG), "config.json"), "w") as f:
        json.dump({"args": {"backbone": "resnet18"}}, f)  # the network comes from the record
    save_weights(AffinityNet("resnet18"), model_path(pred, "aff"))
    with open(os.path.join(model_dir(pred, "aff"), "config.json"), "w") as f:
        json.dump({"args": {"backbone": "resnet18", "crop_size": 64}}, f)
    for domain in ("train_aug", "validation"):
        run_main(
            infer_rsepm,
            [
                "--root_dir",
                root,
                "--dataset",
                "TOY",
                "--domain",
                domain,
                "--tag",
                TAG,
                "--pred_dir",
                pred,
                "--scales",
                "1.0",
                "--num_workers",
                "0",
                "--gpus",
                "cpu",
            ],
        )
        run_main(
            convert,
            [
                "--root_dir",
                root,
                "--dataset",
                "TOY",
                "--domain",
                domain,
                "--folder",
                "predictions",
                "--tag",
                TAG,
                "--pred_dir",
                pred,
                "--num_workers",
                "0",
                "--gpus",
                "cpu",
            ],
        )
    return root, pred


def common(root, pred, domain="validation"):
    return [
        "--root_dir",
        root,
        "--dataset",
        "TOY",
        "--domain",
        domain,
        "--pred_dir",
        pred,
        "--num_workers",
        "0",
        "--gpus",
        "cpu",
    ]


STAGES = {
    "infer_rsepm": lambda root, pred: (
        infer_rsepm,
        common(root, pred) + ["--tag", TAG, "--scales", "1.0", "--overwrite", "true"],
        predictions_dir(pred, TAG, "validation"),
    ),
    "convert crf": lambda root, pred: (
        convert,
        common(root, pred) + ["--folder", "predictions", "--tag", TAG, "--overwrite", "true"],
        pseudo_labels_dir(pred, TAG, "validation"),
    ),
    "convert rw": lambda root, pred: (
        convert,
        common(root, pred) + ["--folder", "predictions", "--tag", TAG, "--mode", "rw", "--affinity_tag", "aff"],
        pseudo_labels_dir(pred, TAG + "@rw", "validation"),
    ),
    "evaluate": lambda root, pred: (
        evaluate,
        [
            "--root_dir",
            root,
            "--dataset",
            "TOY",
            "--domain",
            "validation",
            "--folder",
            "pseudo-labels",
            "--tag",
            TAG,
            "--pred_dir",
            pred,
            "--num_workers",
            "0",
        ],
        output_dir(pred, "pseudo-labels", TAG, "validation") + ".eval.json",
    ),
    "train_seg": lambda root, pred: (
        train_seg,
        common(root, pred, "train_aug")
        + [
            "--label_tag",
            TAG,
            "--tag",
            "seg",
            "--backbone",
            "resnet18",
            "--pretrained",
            "none",
            "--crop_size",
            "32",
            "--min_image_size",
            "32",
            "--max_image_size",
            "48",
            "--batch_size",
            "4",
            "--max_epoch",
            "1",
        ],
        model_dir(pred, "seg"),
    ),
}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_stage_refuses_a_second_live_writer_and_runs_once_it_is_gone(stage_inputs, stage):
    root, pred = stage_inputs
    module, argv, output = STAGES[stage](root, pred)
    with Holder(output) as holder:
        with pytest.raises(OutputBusyError, match=f"pid {holder.process.pid}"):
            run_main(module, argv)
    if stage == "train_seg":  # a relation: its output is written, so the stage ran
        assert run_main(module, argv)["iterations"] == 2
    else:
        result = run_main(module, argv)
        assert not result.get("failed"), result.get("failed")


def test_evaluate_refuses_a_folder_that_is_still_being_written(stage_inputs):
    root, pred = stage_inputs
    folder = pseudo_labels_dir(pred, TAG, "validation")
    with Holder(folder):
        with pytest.raises(OutputBusyError, match="still writing"):
            run_main(
                evaluate,
                [
                    "--root_dir",
                    root,
                    "--dataset",
                    "TOY",
                    "--domain",
                    "validation",
                    "--folder",
                    "pseudo-labels",
                    "--tag",
                    TAG,
                    "--pred_dir",
                    pred,
                    "--num_workers",
                    "0",
                ],
            )


def test_relation_labels_are_locked_and_their_conflict_names_the_flags_that_key_them(stage_inputs, tmp_path):
    from core.dataset_layout import SeedLayout, load_dataset_info
    from tools.seeds.relation_cache import claim_ir_labels, ir_labels_dir

    root, pred = stage_inputs
    layout = SeedLayout(root, "train_aug", load_dataset_info("TOY"))
    seeds, labels = predictions_dir(pred, TAG, "train_aug"), ir_labels_dir(str(tmp_path), TAG, "train_aug")
    with Holder(labels):
        with pytest.raises(OutputBusyError):
            claim_ir_labels(layout, seeds, labels, 0.3, 0.05, True)
    claim_ir_labels(layout, seeds, labels, 0.3, 0.05, True)
    save_mask(os.path.join(labels, layout.ids[0] + ".png"), np.zeros((4, 4), np.uint8), [0] * 768)
    with pytest.raises(UsageError) as error:
        claim_ir_labels(layout, seeds, labels, 0.4, 0.05, True)
    assert "--ir_fg_th" in str(error.value) and "--seed_tag" in str(error.value)
    assert "new --tag" not in str(error.value)


# --- prepare_own -------------------------------------------------------------------------------
def photos(folder, count=6, size=(40, 30)):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(
            os.path.join(folder, f"p{i}.jpg"), quality=90
        )
    return [f"p{i}" for i in range(count)]


def own_argv(images, tags, out, *extra):
    return ["--images", images, "--tags", tags, "--out", out, "--num_workers", "0", "--val_fraction", "0.34", *extra]


def write_tags(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        f.write("image,tags\n" + "".join(f"{image},{tags}\n" for image, tags in rows))
    return path


@pytest.mark.parametrize("layout", ["same", "parent", "parent-symlink"])
def test_prepare_own_never_builds_over_its_inputs(tmp_path, layout):
    """--images mydata/photos --out mydata with --overwrite true deleted the photos (exit 0)."""
    data = tmp_path / "mydata"
    images = str(data / "photos")
    ids = photos(images)
    tags = write_tags(str(data / "tags.csv"), [(i, "cat" if k % 2 else "dog") for k, i in enumerate(ids)])
    out = images if layout == "same" else str(data)
    if layout == "parent-symlink":
        os.symlink(data, tmp_path / "link")
        out = str(tmp_path / "link")
    before = sorted(os.listdir(images))
    with pytest.raises(SystemExit) as error:
        cli(
            prepare_own.main,
            prepare_own.get_args_parser(),
            own_argv(images, tags, out, "--overwrite", "true", "--link", "symlink"),
        )
    assert error.value.code == 2
    assert sorted(os.listdir(images)) == before and os.path.isfile(tags)


def test_prepare_own_second_builder_is_refused_and_a_finished_dataset_is_not_replaced(tmp_path, capsys):
    images = str(tmp_path / "photos")
    ids = photos(images)
    tags = write_tags(str(tmp_path / "tags.csv"), [(i, "cat" if k % 2 else "dog") for k, i in enumerate(ids)])
    out = str(tmp_path / "built")
    with Holder(out):
        with pytest.raises(OutputBusyError):
            run_main(prepare_own, own_argv(images, tags, out))
    assert not os.path.exists(out)
    run_main(prepare_own, own_argv(images, tags, out, "--seed", "0"))
    first = sorted(os.listdir(os.path.join(out, "validation", "image")))
    with pytest.raises(UsageError, match="exists"):  # the second of two runs into one new --out
        run_main(prepare_own, own_argv(images, tags, out, "--seed", "1"))
    assert sorted(os.listdir(os.path.join(out, "validation", "image"))) == first


def test_prepare_own_rechecks_out_at_its_final_rename(tmp_path, monkeypatch):
    images = str(tmp_path / "photos")
    ids = photos(images)
    tags = write_tags(str(tmp_path / "tags.csv"), [(i, "cat" if k % 2 else "dog") for k, i in enumerate(ids)])
    out = str(tmp_path / "built")
    original = prepare_own.verify_split

    def verify_then_someone_creates_out(*args, **kwargs):
        os.makedirs(os.path.join(out, "theirs"), exist_ok=True)  # a writer that took no lock
        return original(*args, **kwargs)

    monkeypatch.setattr(prepare_own, "verify_split", verify_then_someone_creates_out)
    with pytest.raises(PrepareError, match="appeared while"):
        run_main(prepare_own, own_argv(images, tags, out))
    assert os.listdir(out) == ["theirs"]
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".rsepm.tmp")]  # the build folder is gone


def mask_of(path, values):
    Image.fromarray(np.asarray(values, np.uint8)).save(path)


def test_masks_drawn_in_another_order_are_refused_without_classes(tmp_path):
    """Without --classes, mask index i is the i-th tag in sorted order; a mask holding a class its
    image is not tagged with (here every one) is an order mix-up: exit 1, nothing written."""
    images, masks = str(tmp_path / "photos"), tmp_path / "masks"
    ids = photos(images, count=4)
    masks.mkdir()
    # tags: zebra on p0, p2; apple on p1, p3 -> sorted: 1 apple, 2 zebra; the masks were drawn zebra=1
    rows = [(i, "zebra" if k % 2 == 0 else "apple") for k, i in enumerate(ids)]
    for k, i in enumerate(ids):
        value = 1 if k % 2 == 0 else 2
        mask_of(masks / f"{i}.png", np.pad(np.full((10, 10), value), ((0, 20), (0, 30))))
    tags = write_tags(str(tmp_path / "tags.csv"), rows)
    out = str(tmp_path / "built")
    with pytest.raises(PrepareError) as error:
        run_main(prepare_own, own_argv(images, tags, out, "--masks", str(masks)))
    message = str(error.value)
    assert "4 mask(s)" in message and "p0.png: index 1 (apple)" in message and "--classes" in message
    assert not os.path.exists(out)
    # drawn against --classes: the same masks are read in that order and accepted
    result = run_main(prepare_own, own_argv(images, tags, out, "--masks", str(masks), "--classes", "zebra,apple"))
    assert result["classes"] == ["zebra", "apple"] and set(result["masks"]) == {"train", "validation"}


def test_class_names_are_nfc_and_case_twins_are_refused(tmp_path):
    images = str(tmp_path / "photos")
    ids = photos(images, count=4)
    decomposed, composed = "cafe\u0301", "caf\u00e9"
    tags = write_tags(
        str(tmp_path / "tags.csv"), [(ids[0], decomposed), (ids[1], composed), (ids[2], composed), (ids[3], decomposed)]
    )
    result = run_main(prepare_own, own_argv(images, tags, str(tmp_path / "a")))
    assert result["classes"] == [composed]
    tags = write_tags(str(tmp_path / "tags2.csv"), [(ids[0], "Dog"), (ids[1], "dog"), (ids[2], "dog"), (ids[3], "Dog")])
    with pytest.raises(PrepareError, match="'Dog' and 'dog' differ only by case"):
        run_main(prepare_own, own_argv(images, tags, str(tmp_path / "b")))
    with pytest.raises(PrepareError, match="differ only by case"):
        run_main(prepare_own, own_argv(images, tags, str(tmp_path / "c"), "--classes", "Dog,dog"))


def test_tag_json_nested_deeply_or_with_many_entries(tmp_path):
    images = str(tmp_path / "photos")
    photos(images, count=2)
    deep = tmp_path / "deep.json"
    deep.write_text('{"p0.jpg": ' + "[" * 100000 + "]" * 100000 + "}")
    with pytest.raises(PrepareError, match="nested too deeply"):
        prepare_own.read_tag_table(str(deep))
    # 80,000 entries with one duplicate at the end: found by a set (the per-key count took 94 s)
    many = tmp_path / "many.json"
    entries = [f'"img{i}.jpg": "dog"' for i in range(80000)] + ['"img5.jpg": "cat"']
    many.write_text("{" + ",".join(entries) + "}")
    start = time.perf_counter()
    with pytest.raises(PrepareError, match=r"'img5.jpg': duplicate id \(listed 2 times\)"):
        prepare_own.read_tag_table(str(many))
    assert time.perf_counter() - start < 30  # a bound against the quadratic check, not a benchmark


def test_a_killed_builders_folder_is_removed_by_the_next_run(tmp_path):
    out = str(tmp_path / "built")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    from core.safety import HOST

    left = tmp_path / f".built.{HOST}-{pid}-12345.abcdefgh.rsepm.tmp"
    (left / "train" / "image").mkdir(parents=True)
    (left / "train" / "image" / "x.jpg").write_bytes(b"x")
    alive = tmp_path / f".built.{temp_prefix(out).split('.')[-2]}.abcdefgh.rsepm.tmp"
    alive.mkdir()
    removed = remove_stale_temp_files(str(tmp_path))
    assert removed == [str(left)] and not left.exists() and alive.exists()


# --- inputs that are not regular files -----------------------------------------------------------
def fifo_copy(root, tmp_path, domain, image_id):
    copy = str(tmp_path / "TOY")
    shutil.copytree(root, copy, symlinks=True)
    path = os.path.join(copy, domain, "image", image_id + ".jpg")
    os.remove(path)
    os.mkfifo(path)
    return copy, path


def test_a_fifo_image_is_skipped_and_listed_by_inference_and_conversion(stage_inputs, tmp_path):
    root, pred = stage_inputs
    ids = sorted(n[:-4] for n in os.listdir(os.path.join(root, "validation", "image")))
    copy, fifo = fifo_copy(root, tmp_path, "validation", ids[0])
    other = str(tmp_path / "exp")
    shutil.copytree(os.path.join(pred, "models"), os.path.join(other, "models"))
    result = subprocess.run(
        [sys.executable, "infer_rsepm.py", *common(copy, other), "--tag", TAG, "--scales", "1.0"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1 and "FIFO" in result.stderr and fifo in result.stderr
    assert sorted(os.listdir(predictions_dir(other, TAG, "validation"))) == [i + ".pkl" for i in ids[1:]]
    # a FIFO seed file: skipped by the conversion, the other seeds converted
    seed = os.path.join(predictions_dir(other, TAG, "validation"), ids[1] + ".pkl")
    os.remove(seed)
    os.mkfifo(seed)
    result = subprocess.run(
        [
            sys.executable,
            "convert_seed_to_pseudo_masks.py",
            *common(root, other),
            "--folder",
            "predictions",
            "--tag",
            TAG,
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1 and "FIFO" in result.stderr and seed in result.stderr
    assert sorted(os.listdir(pseudo_labels_dir(other, TAG, "validation"))) == [i + ".png" for i in ids[2:]]


def test_a_fifo_image_is_skipped_by_training_which_ends(toy_dataset, tmp_path):
    root = toy_dataset()
    ids = sorted(n[:-4] for n in os.listdir(os.path.join(root, "train_aug", "image")))
    copy, fifo = fifo_copy(root, tmp_path, "train_aug", ids[1])
    pred = str(tmp_path / "exp")
    argv = [
        "train_rsepm.py",
        *common(copy, pred, "train_aug"),
        "--backbone",
        "resnet18",
        "--pretrained",
        "none",
        "--crop_size",
        "32",
        "--min_image_size",
        "32",
        "--max_image_size",
        "48",
        "--batch_size",
        "4",
        "--max_epoch",
        "1",
        "--rs_start",
        "1",
        "--mix_start",
        "1",
        "--tag",
        "fifo",
    ]
    result = subprocess.run([sys.executable, *argv], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "FIFO" in result.stderr and "skipped 1 bad file" in result.stderr
    assert os.path.isfile(model_path(pred, "fifo"))


def test_prepare_own_refuses_a_fifo_named_like_an_image(tmp_path):
    images = str(tmp_path / "photos")
    ids = photos(images, count=4)
    os.mkfifo(os.path.join(images, "p9.jpg"))
    tags = write_tags(str(tmp_path / "tags.csv"), [(i, "dog") for i in ids] + [("p9.jpg", "dog")])
    result = subprocess.run(
        [sys.executable, "tools/builders/prepare_own.py", *own_argv(images, tags, str(tmp_path / "built"))],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1 and "FIFO" in result.stderr and "p9.jpg" in result.stderr
    fifo_tags = str(tmp_path / "fifo.csv")
    os.mkfifo(fifo_tags)
    with pytest.raises(PrepareError, match="FIFO"):
        prepare_own.read_tag_table(fifo_tags)


# --- validation that skips, the epoch saved before it ----------------------------------------------
def test_an_unreadable_validation_image_is_skipped_and_the_epoch_is_saved(stage_inputs, tmp_path):
    root, pred = stage_inputs
    copy = str(tmp_path / "TOY")
    shutil.copytree(root, copy, symlinks=True)
    ids = sorted(n[:-4] for n in os.listdir(os.path.join(copy, "validation", "image")))
    with open(os.path.join(copy, "validation", "image", ids[0] + ".jpg"), "wb") as f:
        f.write(b"not an image")
    other = str(tmp_path / "exp")
    shutil.copytree(pred, other)
    module, argv, _ = STAGES["train_seg"](copy, other)
    argv = [a.replace(root, copy) for a in argv] + ["--val_every", "1", "--val_images", "3", "--tag", "val"]
    with pytest.raises(ProjectError, match=rf"skipped 1 bad file.*{ids[0]}.jpg"):
        run_main(module, argv)
    assert os.path.isfile(model_path(other, "val")) and os.path.isfile(
        os.path.join(model_dir(other, "val"), "resume.pth")
    )
    log = [json.loads(line) for line in open(os.path.join(model_dir(other, "val"), "logs", "log.jsonl"))]
    assert any("val_mIoU" in row for row in log)  # the other images were validated


# --- a second SIGTERM --------------------------------------------------------------------------------
STOPPER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, sys.argv[1])
    from tools.engine.stop_request import StopRequest
    stop = StopRequest(grace=float(sys.argv[2])).install()
    print("ready", flush=True)
    while True:  # an iteration that never reaches its end
        time.sleep(0.05)
""")


def test_a_second_sigterm_ends_the_process_at_once():
    process = subprocess.Popen([sys.executable, "-c", STOPPER, REPO_ROOT, "0"], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "ready"
    process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    assert process.poll() is None  # the first one is noted, the run would save at the next boundary
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == -signal.SIGTERM


def test_a_sigterm_no_iteration_answers_ends_the_process_after_the_grace():
    process = subprocess.Popen(
        [sys.executable, "-c", STOPPER, REPO_ROOT, "0.5"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert process.stdout.readline().strip() == "ready"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 128 + signal.SIGTERM
    assert "no iteration could finish" in process.stderr.read()


# --- names, per-item write errors, resume identity, evaluate's usage --------------------------------------
def test_every_accepted_name_has_a_temporary_name_that_fits(tmp_path):
    for length in (200, 212, 240, 255):
        name = "x" * (length - 4) + ".pkl"
        with atomic_output(str(tmp_path / name)) as f:
            f.write(b"ok")
        assert (tmp_path / name).read_bytes() == b"ok"
    assert len(temp_prefix("/x/" + "é" * 127).encode()) < 100


def test_a_long_id_is_written_and_a_per_item_write_error_is_skipped(stage_inputs, tmp_path, monkeypatch):
    import errno

    from tools.seeds import infer_loop

    root, pred = stage_inputs
    copy = str(tmp_path / "TOY")
    shutil.copytree(root, copy, symlinks=True)
    ids = sorted(n[:-4] for n in os.listdir(os.path.join(copy, "validation", "image")))
    long_id = "v" * 250
    for kind, ext in (("image", ".jpg"), ("xml", ".xml"), ("mask", ".png")):
        os.rename(
            os.path.join(copy, "validation", kind, ids[0] + ext), os.path.join(copy, "validation", kind, long_id + ext)
        )
    other = str(tmp_path / "exp")
    shutil.copytree(os.path.join(pred, "models"), os.path.join(other, "models"))
    original = infer_loop.save_seed

    def refuse_one(path, *args, code=errno.EACCES):
        if os.path.basename(path) == ids[-1] + ".pkl":
            raise OutputError(f"{path}: cannot write (refused)") from OSError(code, "refused")
        return original(path, *args)

    monkeypatch.setattr(infer_loop, "save_seed", refuse_one)
    summary = run_main(infer_rsepm, common(copy, other) + ["--tag", TAG, "--scales", "1.0"])
    assert [f["id"] for f in summary["failed"]] == [ids[-1]]
    out = predictions_dir(other, TAG, "validation")
    assert os.path.isfile(os.path.join(out, long_id + ".pkl"))
    assert summary["written"] == len(ids) - 1
    # a full disk is every item's problem: the run stops
    monkeypatch.setattr(infer_loop, "save_seed", lambda path, *a: refuse_one(path, *a, code=errno.ENOSPC))
    with pytest.raises(OutputError):
        run_main(infer_rsepm, common(copy, other) + ["--tag", TAG, "--scales", "1.0"])


def test_a_file_replaced_at_the_same_size_is_refused_on_resume(toy_dataset, tmp_path):
    from core.dataset_layout import SeedLayout, load_dataset_info
    from core.train_datasets import ClassificationDataset

    copy = str(tmp_path / "TOY")
    shutil.copytree(toy_dataset(), copy, symlinks=True)
    layout = SeedLayout(copy, "train_aug", load_dataset_info("TOY"), require_xml=True)
    dataset = ClassificationDataset(layout, None, seed=0)
    saved = dataset_identity(dataset)
    path = layout.image_path(dataset.ids[2])
    data = bytearray(open(path, "rb").read())
    data[-3] ^= 1  # same size, other content
    stat = os.stat(path)
    with open(path, "wb") as f:
        f.write(data)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(ResumeError, match=f"the image of {dataset.ids[2]} was replaced"):
        check_dataset("resume.pth", saved, dataset_identity(dataset))
    older = dict(saved, files=[f[:3] for f in saved["files"]], sha256="old")  # an older record: sizes only
    assert "modification times" in check_dataset("resume.pth", older, dataset_identity(dataset))[0]


def test_contradictory_evaluation_flags_exit_2(stage_inputs):
    root, pred = stage_inputs
    with pytest.raises(SystemExit) as error:
        cli(
            evaluate.main,
            evaluate.get_args_parser(),
            [
                "--root_dir",
                root,
                "--dataset",
                "TOY",
                "--domain",
                "validation",
                "--folder",
                "predictions",
                "--tag",
                TAG,
                "--pred_dir",
                pred,
                "--st_th",
                "0.6",
                "--end_th",
                "0.2",
            ],
        )
    assert error.value.code == 2


@pytest.mark.parametrize("script, flag", [("train_seg", "--label_tag"), ("train_affinity", "--seed_tag")])
def test_a_bad_tag_is_named_by_the_flag_that_gave_it(stage_inputs, script, flag, capsys):
    import importlib

    root, pred = stage_inputs
    module = importlib.import_module(script)
    argv = common(root, pred, "train_aug") + [
        "--backbone",
        "resnet18",
        "--pretrained",
        "none",
        "--tag",
        "ok",
        flag,
        "../escape",
    ]
    with pytest.raises(SystemExit) as error:
        cli(module.main, module.get_args_parser(), argv)
    assert error.value.code == 2
    assert f"{flag}: refusing the name '../escape'" in capsys.readouterr().err
