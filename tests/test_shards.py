"""Per-image stages spread over processes (tools/shards.py): 2 gloo ranks under torchrun, and one
spawned process per device, write the same seed files, byte for byte, as one process; each rank
does its share; a re-run after a lost share completes the set."""

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import run_main

import infer_rsepm
from core.networks import RSEPM
from core.weights import save_weights
from tools.paths import REPO_ROOT, model_dir, model_path, predictions_dir
from tools.shards import Shard, run_spawned

TAG = "ResNet18@TOY@shards"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, toy_dataset):
    root = toy_dataset(num_validation=5)
    models = str(tmp_path_factory.mktemp("shard_models"))
    torch.manual_seed(0)
    save_weights(RSEPM("resnet18", num_classes=6), model_path(models, TAG))
    with open(os.path.join(model_dir(models, TAG), "config.json"), "w") as f:
        json.dump({"args": {"backbone": "resnet18"}}, f)
    return root, models


def experiment(models, folder):
    import shutil

    shutil.copytree(os.path.join(models, "models"), os.path.join(folder, "models"))
    return str(folder)


def argv(root, pred):
    return [
        "--root_dir",
        root,
        "--dataset",
        "TOY",
        "--domain",
        "validation",
        "--tag",
        TAG,
        "--pred_dir",
        pred,
        "--scales",
        "1.0,0.5",
        "--conf_th",
        "0.3",
        "--num_workers",
        "0",
        "--gpus",
        "cpu",
        "--threads",
        "1",
    ]


def seed_bytes(pred):
    folder = predictions_dir(pred, TAG, "validation")
    return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))}


def torchrun(args, nproc=2):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc), *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_shares_are_disjoint_and_cover_the_list():
    ids = [f"i{k}" for k in range(11)]
    shares = [Shard(r, 3).share(ids) for r in range(3)]
    assert sorted(sum(shares, [])) == sorted(ids) and shares[1] == ["i1", "i4", "i7", "i10"]


def test_two_torchrun_ranks_write_the_seeds_of_one_process(inputs, tmp_path):
    root, models = inputs
    single = experiment(models, tmp_path / "one")
    summary = run_main(infer_rsepm, argv(root, single))
    assert summary["written"] == 5
    two = experiment(models, tmp_path / "two")
    result = torchrun(["infer_rsepm.py", *argv(root, two)])
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert seed_bytes(two) == seed_bytes(single)
    out = result.stdout
    assert "rank 0 of 2: 3 images (0 done)" in out and "rank 1 of 2: 2 images (0 done)" in out
    assert out.count("wrote 5 seed files") == 1  # the summary adds up both shares, printed once
    # a lost share (rank 1's files deleted, as if it had died) is completed by a re-run
    folder = predictions_dir(two, TAG, "validation")
    ids = sorted(name[:-4] for name in os.listdir(folder))
    for image_id in ids[1::2]:
        os.remove(os.path.join(folder, image_id + ".pkl"))
    result = torchrun(["infer_rsepm.py", *argv(root, two)])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "rank 1 of 2: 2 images (0 done)" in result.stdout and "rank 0 of 2: 3 images (3 done)" in result.stdout
    assert seed_bytes(two) == seed_bytes(single)


def test_one_spawned_process_per_device_writes_the_seeds_of_one_process(inputs, tmp_path):
    """The path of `--gpus 0,1` without torchrun, on two CPU 'devices'."""
    from tools.seeds import infer_loop

    root, models = inputs
    single = experiment(models, tmp_path / "one")
    run_main(infer_rsepm, argv(root, single))
    spawned = experiment(models, tmp_path / "spawned")
    args = infer_rsepm.get_args_parser().parse_args(argv(root, spawned))
    infer_loop.resolve_network_args(args, infer_loop.weights_path(args), {"backbone": "resnet50"})
    network = RSEPM("resnet18", num_classes=6)
    from core.weights import load_checkpoint

    load_checkpoint(network, infer_loop.weights_path(args))
    from core.dataset_layout import SeedLayout, load_dataset_info

    layout = SeedLayout(root, "validation", load_dataset_info("TOY"))
    ids = infer_loop.image_order(layout, args)
    out_dir = predictions_dir(spawned, TAG, "validation")
    os.makedirs(out_dir)
    shares = run_spawned(
        infer_loop._infer_share,
        [torch.device("cpu")] * 2,
        args,
        network,
        "rsepm",
        True,
        "nearest",
        "sigmoid",
        False,
        layout,
        ids,
        out_dir,
    )
    assert [s["rank"] for s in shares] == [0, 1] and [s["written"] for s in shares] == [3, 2]
    assert seed_bytes(spawned) == seed_bytes(single)


def test_two_torchrun_ranks_make_the_random_walk_masks_of_one_process(inputs, tmp_path):
    """--mode rw (and the CRF mode, the same code) over 2 gloo ranks: the masks of one process."""
    import convert_seed_to_pseudo_masks as convert
    from core.affinity import AffinityNet

    root, models = inputs
    runs = {}
    for name in ("one", "two"):
        pred = experiment(models, tmp_path / name)
        torch.manual_seed(1)
        save_weights(AffinityNet("resnet18"), model_path(pred, "aff"))
        run_main(infer_rsepm, argv(root, pred))
        runs[name] = pred
    rw = [
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
        "--mode",
        "rw",
        "--affinity_tag",
        "aff",
        "--affinity_backbone",
        "resnet18",
        "--exp_times",
        "3",
        "--num_workers",
        "0",
        "--gpus",
        "cpu",
        "--threads",
        "1",
    ]
    assert run_main(convert, rw + ["--pred_dir", runs["one"]])["written"] == 5
    result = torchrun(["convert_seed_to_pseudo_masks.py", *rw, "--pred_dir", runs["two"]])
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "rank 1 of 2: 2 images (0 done)" in result.stdout
    masks = {}
    for name, pred in runs.items():
        folder = os.path.join(pred, "pseudo-labels", TAG + "@rw", "validation")
        masks[name] = {n: open(os.path.join(folder, n), "rb").read() for n in sorted(os.listdir(folder))}
    assert len(masks["one"]) == 5 and masks["two"] == masks["one"]
