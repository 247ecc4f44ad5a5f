"""The training engine: optimiser groups, poly schedule, EMA, AMP, exact resume, logs, DDP."""

import glob
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from ddp_worker import TAG, TinyNet, train, write_tiny_layout
from torch import nn

from core.errors import NonFiniteError
from core.networks import split_parameters
from core.weights import load_checkpoint
from tools.engine import amp, data_loading, distributed, optim, resume_state, runlog, script_parts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- optimiser and schedule --------------------------------------------------------------------
def test_optimizer_has_four_groups_with_lr_and_decay():
    model = TinyNet()
    optimizer = optim.build_optimizer(split_parameters(model), lr=0.01, weight_decay=1e-4)
    groups = optimizer.param_groups
    assert [g["name"] for g in groups] == list(optim.GROUP_NAMES)
    assert [g["lr"] for g in groups] == [0.01, 0.01, pytest.approx(0.1), pytest.approx(0.1)]
    assert [g["weight_decay"] for g in groups] == [1e-4, 0.0, 1e-4, 0.0]
    assert all(g["momentum"] == 0.9 and g["nesterov"] for g in groups)
    members = [{id(p) for p in g["params"]} for g in groups]
    conv, bn, head = model.model[0], model.model[1], model.head[1]
    assert members[0] == {id(conv.weight)}
    assert members[1] == {id(conv.bias), id(bn.weight), id(bn.bias)}
    assert members[2] == {id(head.weight)}
    assert members[3] == {id(head.bias)}


def test_weight_decay_is_applied_as_decay_not_momentum():
    # First Nesterov step from zero momentum: p <- p - lr * (1 + m) * (g + wd * p) (no wd on biases).
    torch.manual_seed(0)
    model = TinyNet()
    optimizer = optim.build_optimizer(split_parameters(model), lr=0.1, weight_decay=0.01)
    model(torch.randn(2, 3, 8, 8)).square().mean().backward()
    before = {n: (p.detach().clone(), p.grad.clone()) for n, p in model.named_parameters()}
    optimizer.step()
    for name, param in model.named_parameters():
        p, g = before[name]
        lr = 1.0 if name.startswith("head.") else 0.1
        wd = 0.01 if param.ndim > 1 else 0.0
        assert torch.allclose(param, p - lr * 1.9 * (g + wd * p), atol=1e-7), name


def test_poly_lr_follows_the_formula_and_resumes():
    optimizer = optim.build_optimizer(split_parameters(TinyNet()), lr=0.01, weight_decay=0)
    scheduler = optim.PolyLR(optimizer, max_iterations=10, power=0.9)
    seen = []
    for _ in range(12):
        seen.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    for it, lrs in enumerate(seen):
        factor = max(0.0, 1 - it / 10) ** 0.9
        assert lrs == pytest.approx([0.01 * factor, 0.01 * factor, 0.1 * factor, 0.1 * factor], abs=1e-12)
    fresh = optim.PolyLR(optim.build_optimizer(split_parameters(TinyNet()), 0.01, 0), 10)
    fresh.load_state_dict(scheduler.state_dict())
    assert fresh.last_epoch == 12 and fresh.get_last_lr() == scheduler.get_last_lr()


def test_ema_decay_ramp_matches_the_closed_form():
    """d(u) = 0.999 * (1 - exp(-u / 2000)), values worked out by hand (exp(-1) = 0.367879441,
    exp(-5) = 0.006737947, 1 - exp(-0.0005) = 0.000499875)."""
    for updates, expected in ((0, 0.0), (1, 0.000499375), (2000, 0.631488438), (10000, 0.992268791)):
        assert optim.ema_decay_at(0.999, updates) == pytest.approx(expected, abs=1e-9), updates
    ema = optim.ModelEMA(nn.Linear(2, 1))  # default decay 0.999
    assert ema.decay == 0.999 and ema.updates == 0
    ema.update(nn.Linear(2, 1))
    assert ema.updates == 1 and ema.current_decay() == pytest.approx(0.000499375, abs=1e-9)


def test_ema_average_after_two_updates_matches_a_hand_computation():
    """Two updates at u = 2000 and 2001 with decay 0.9: d = 0.9 * (1 - exp(-u / 2000)) =
    0.568908503 and 0.569074007. Floating buffers (BN running mean) are averaged like the
    weights; integer buffers keep the value of the copy (the authors' ModelEMA)."""
    model = nn.Sequential(nn.Linear(2, 1), nn.BatchNorm1d(1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 2.0]]))
    ema = optim.ModelEMA(model, decay=0.9)
    ema.updates = 1999
    expected, running_mean = torch.tensor([[1.0, 2.0]]), torch.zeros(1)
    for value, decay in ((3.0, 0.568908503), (-1.0, 0.569074007)):
        with torch.no_grad():
            model[0].weight.fill_(value)
        model(torch.randn(4, 2))  # train mode: BN running stats and num_batches_tracked move
        ema.update(model)
        expected = decay * expected + (1 - decay) * torch.full((1, 2), value)
        running_mean = decay * running_mean + (1 - decay) * model[1].running_mean
    # by hand: 0.568908503 * 1 + 0.431091497 * 3 = 1.862182994, then
    # 0.569074007 * 1.862182994 - 0.430925993 = 0.628794; likewise 2 -> 2.431091497 -> 0.952545
    assert torch.allclose(expected, torch.tensor([[0.628794, 0.952545]]), atol=1e-5)
    assert torch.allclose(ema.module[0].weight, expected, atol=1e-6)
    assert torch.allclose(ema.module[1].running_mean, running_mean, atol=1e-6)
    assert ema.module[1].num_batches_tracked.item() == 0 and model[1].num_batches_tracked.item() == 2
    assert not ema.module.training and not any(p.requires_grad for p in ema.module.parameters())
    other = optim.ModelEMA(model, decay=0.5)
    other.load_state_dict(ema.state_dict())  # a resumed run continues the ramp
    assert other.decay == 0.9 and other.updates == 2001
    assert torch.equal(other.module[0].weight, ema.module[0].weight)


# --- mixed precision ---------------------------------------------------------------------------
def test_amp_defaults_and_cpu_bf16():
    cpu = torch.device("cpu")
    assert amp.resolve_amp_dtype(cpu, "auto") is None
    assert amp.resolve_amp_dtype(cpu, "off") is None
    assert amp.resolve_amp_dtype(cpu, "bf16") is torch.bfloat16
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        amp.resolve_amp_dtype(cpu, "fp16")
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with amp.autocast_context(cpu, dtype=torch.bfloat16):
        assert (a @ b).dtype == torch.bfloat16
    with amp.autocast_context(cpu):  # default on CPU: full precision
        assert (a @ b).dtype == torch.float32
    with amp.autocast_context(cpu, torch.bfloat16, enabled=False):
        assert (a @ b).dtype == torch.float32
    scaler = amp.make_grad_scaler(cpu, torch.bfloat16)
    loss = torch.tensor(2.0)
    assert not scaler.is_enabled() and scaler.scale(loss) is loss


def test_training_args_defaults_and_parsing():
    import argparse

    parser = argparse.ArgumentParser()
    script_parts.add_training_args(parser, lr=0.01, weight_decay=1e-4, max_epoch=30)
    args = parser.parse_args([])
    assert (args.lr, args.wd, args.max_epoch, args.batch_size, args.crop_size) == (0.01, 1e-4, 30, 16, 512)
    assert (args.min_image_size, args.max_image_size, args.amp, args.nesterov) == (320, 640, "auto", True)
    args = parser.parse_args(["--amp", "bf16", "--nesterov", "false", "--resume", "yes"])
    assert args.amp == "bf16" and args.nesterov is False and args.resume is True
    # colour jitter: the published strengths by default, 4 values or none, nothing else
    assert parser.parse_args([]).color_jitter == (0.3, 0.3, 0.3, 0.1)
    assert parser.parse_args(["--color_jitter", "0.3,0.3,0.3,0"]).color_jitter == (0.3, 0.3, 0.3, 0.0)
    assert parser.parse_args(["--color_jitter", "none"]).color_jitter is None
    assert parser.parse_args(["--color_jitter", "0,0,0,0"]).color_jitter is None
    for bad in ("0.3,0.3,0.3", "0.3,0.3,0.3,0.6", "a,b,c,d", "-1,0,0,0"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--color_jitter", bad])


def test_color_jitter_flag_reaches_the_training_transform(toy_dataset):
    """train_seg with hue jitter 0 and without jitter: the crops it trains on are those of
    TrainTransform(jitter=...) computed here independently (same per-sample rng)."""
    from core.dataset_layout import SeedLayout, load_dataset_info
    from core.train_datasets import SegmentationDataset
    from core.transforms import TrainTransform

    root = toy_dataset(seed=2, num_train=2, num_train_aug=2, max_size=60)
    layout = SeedLayout(root, "train_aug", load_dataset_info("TOY"))
    import train_seg

    args = train_seg.prepare_args(
        train_seg.get_args_parser().parse_args(
            ["--root_dir", root, "--dataset", "TOY", "--label_tag", "gt", "--color_jitter", "0.3,0.3,0.3,0"]
        )
    )
    assert args.color_jitter == (0.3, 0.3, 0.3, 0.0)
    plain = SegmentationDataset(layout, None, TrainTransform(48, 48, 60, jitter=None), seed=1)
    hue0 = SegmentationDataset(layout, None, TrainTransform(48, 48, 60, jitter=args.color_jitter), seed=1)
    full = SegmentationDataset(layout, None, TrainTransform(48, 48, 60), seed=1)
    a, b, c = plain[0]["image"], hue0[0]["image"], full[0]["image"]
    assert not torch.equal(a, b) and not torch.equal(b, c)  # the strengths change the crop's colours


# --- sanity checks and logs --------------------------------------------------------------------
def test_check_finite_names_iteration_and_terms():
    values = runlog.check_finite({"cls": torch.tensor(0.5), "seg": 1.5}, iteration=7)
    assert values == {"cls": 0.5, "seg": 1.5}
    with pytest.raises(NonFiniteError) as error:
        runlog.check_finite(
            {"cls": torch.tensor(0.5), "seg": torch.tensor(float("nan")), "rec": torch.tensor(float("inf"))},
            iteration=42,
        )
    message = str(error.value)
    assert "iteration 42" in message and "seg=nan" in message and "rec=inf" in message
    assert "cls" not in message


def test_mean_meter():
    meter = runlog.MeanMeter()
    meter.update({"a": 1.0, "b": 2.0})
    meter.update({"a": 3.0})
    assert meter.means() == {"a": 2.0, "b": 2.0}
    assert meter.means() == {}


def test_run_logger_writes_jsonl_text_and_tensorboard(tmp_path):
    logger = runlog.RunLogger(str(tmp_path / "logs"), enabled=True)
    for it in (1, 2, 3):
        logger.log(it, 0, {"seg": 0.5 * it, "lr": 0.01}, images=16)
    logger.close()
    records = [json.loads(line) for line in open(tmp_path / "logs" / "log.jsonl")]
    assert [r["iteration"] for r in records] == [1, 2, 3]
    assert records[1]["seg"] == 1.0 and records[1]["epoch"] == 0 and records[1]["images_per_s"] > 0
    assert len(glob.glob(str(tmp_path / "logs" / "events.out.tfevents.*"))) == 1
    assert "it 3" in (tmp_path / "logs" / "log.txt").read_text()
    # a resumed run at iteration 2 drops the records of the interrupted run after it
    with open(tmp_path / "logs" / "log.jsonl", "a") as f:
        f.write('{"iteration": 4, "ep')  # a line cut by the crash
    logger = runlog.RunLogger(str(tmp_path / "logs"), enabled=True, purge_after=2)
    logger.log(3, 0, {"seg": 9.0})
    logger.close()
    records = [json.loads(line) for line in open(tmp_path / "logs" / "log.jsonl")]
    assert [(r["iteration"], r["seg"]) for r in records] == [(1, 0.5), (2, 1.0), (3, 9.0)]


def test_run_logger_disabled_writes_nothing(tmp_path, capsys):
    logger = runlog.RunLogger(str(tmp_path / "logs"), enabled=False)
    logger.log(1, 0, {"seg": 1.0}, images=4)
    logger.info("hello")
    logger.close()
    assert not (tmp_path / "logs").exists()
    assert capsys.readouterr().out == ""


# --- data order --------------------------------------------------------------------------------
def test_epoch_sampler_order_shards_and_skip():
    def shard(rank, epoch, world=3, skip=0):
        sampler = data_loading.EpochSampler(10, seed=5, rank=rank, world_size=world)
        sampler.set_epoch(epoch, skip)
        return list(sampler)

    shards = [shard(r, 0) for r in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4]  # 10 padded to 12 by wrapping
    flat = [i for s in shards for i in s]
    assert sorted(set(flat)) == list(range(10)) and len(flat) == 12
    assert shard(1, 0) == shards[1]  # a function of (seed, epoch, rank)
    assert shard(1, 1) != shards[1]
    assert shard(1, 0, skip=3) == shards[1][3:]
    assert len(data_loading.EpochSampler(10, 5, rank=0, world_size=3)) == 4
    plain = data_loading.EpochSampler(5, shuffle=False)
    assert list(plain) == [0, 1, 2, 3, 4]


def test_set_loader_epoch_reaches_workers_and_skips(tmp_path):
    from core.dataset_layout import DatasetInfo, SeedLayout
    from core.train_datasets import SegmentationDataset
    from core.transforms import TrainTransform

    write_tiny_layout(str(tmp_path), count=6)
    layout = SeedLayout(str(tmp_path), "train", DatasetInfo("TOY"))
    dataset = SegmentationDataset(layout, None, TrainTransform(32, 30, 56), seed=1)
    loader = data_loading.build_loader(dataset, distributed.DistContext(), batch_size=2, num_workers=2, seed=1)
    epochs = []
    for epoch in (0, 1):
        data_loading.set_loader_epoch(loader, epoch)
        epochs.append(list(loader))
    data_loading.set_loader_epoch(loader, 1, skip_batches=1)
    skipped = list(loader)
    assert [b["id"] for b in skipped] == [b["id"] for b in epochs[1][1:]]
    assert torch.equal(skipped[0]["image"], epochs[1][1]["image"])
    # the workers augmented with the epoch that was set: compare with the main process
    for epoch, batches in enumerate(epochs):
        dataset.set_epoch(epoch)
        first = batches[0]
        assert torch.equal(first["image"][0], dataset[int(first["index"][0])]["image"])
    assert [b["id"] for b in epochs[0]] != [b["id"] for b in epochs[1]]


def test_derive_seed_separates_neighbours():
    assert len({distributed.derive_seed(a, b) for a in range(5) for b in range(5)}) == 25
    assert distributed.derive_seed(0, 1) != distributed.derive_seed(1, 0)


def test_single_process_context_on_cpu(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    ctx = distributed.setup_distributed("cpu")
    assert (ctx.rank, ctx.world_size, ctx.distributed, ctx.is_main) == (0, 1, False, True)
    assert ctx.device == torch.device("cpu")
    model = TinyNet()
    assert distributed.wrap_model(model, ctx) is model
    assert distributed.local_batch_size(16, distributed.DistContext(world_size=4, distributed=True)) == 4
    with pytest.raises(ValueError, match="not divisible"):
        distributed.local_batch_size(16, distributed.DistContext(world_size=3, distributed=True))


# --- checkpoints -------------------------------------------------------------------------------
def test_resume_mid_epoch_gives_identical_weights(tmp_path):
    """12 iterations in one go vs 6 + save_resume + fresh objects + load_resume + 6, with a real
    DataLoader, augmentation, dropout and a global-RNG permutation in the step. Different worker
    counts on purpose: the batches must not depend on them."""
    data = str(tmp_path / "data")
    write_tiny_layout(data, count=8)
    model_a, ema_a, opt_a, seen_a = train(data, str(tmp_path / "a"), max_epoch=3, num_workers=0)
    _, _, _, seen_b1 = train(data, str(tmp_path / "b"), max_epoch=3, stop_at=6, num_workers=2)
    model_b, ema_b, opt_b, seen_b2 = train(
        data, str(tmp_path / "b"), max_epoch=3, resume=True, num_workers=1, init_seed=99
    )
    assert len(seen_a) == 24 and seen_b1 + seen_b2 == seen_a
    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert torch.equal(a, b), name
    for a, b in zip(ema_a.module.state_dict().values(), ema_b.module.state_dict().values()):
        assert torch.equal(a, b)
    momentum_a = [opt_a.state[p]["momentum_buffer"] for g in opt_a.param_groups for p in g["params"]]
    momentum_b = [opt_b.state[p]["momentum_buffer"] for g in opt_b.param_groups for p in g["params"]]
    assert all(torch.equal(a, b) for a, b in zip(momentum_a, momentum_b))
    records = [json.loads(line) for line in open(tmp_path / "b" / "logs" / "log.jsonl")]
    assert [r["iteration"] for r in records] == list(range(1, 13))


def test_resume_without_restoring_rng_would_differ(tmp_path):
    """The control for the test above: the same resume with the global RNG left as it is."""
    data = str(tmp_path / "data")
    write_tiny_layout(data, count=8)
    model_a, *_ = train(data, str(tmp_path / "a"), max_epoch=2)
    train(data, str(tmp_path / "b"), max_epoch=2, stop_at=3)
    original = resume_state.set_rng_state
    resume_state.set_rng_state = lambda state, device=None: None
    try:
        model_b, *_ = train(data, str(tmp_path / "b"), max_epoch=2, resume=True, init_seed=99)
    finally:
        resume_state.set_rng_state = original
    assert not all(torch.equal(a, b) for a, b in zip(model_a.state_dict().values(), model_b.state_dict().values()))


def test_resume_refuses_another_seed_and_other_files(tmp_path):
    data = str(tmp_path / "data")
    write_tiny_layout(data, count=4)
    train(data, str(tmp_path / "run"), max_epoch=1, stop_at=1)
    path = resume_state.resume_path(str(tmp_path / "run"), TAG)
    model = TinyNet()
    with pytest.raises(ValueError, match="seed=0, this run has seed=1"):
        resume_state.load_resume(path, model, sampler=data_loading.EpochSampler(4, seed=1))
    torch.save(model.state_dict(), tmp_path / "weights.pth")
    with pytest.raises(ValueError, match="not a resume checkpoint"):
        resume_state.load_resume(str(tmp_path / "weights.pth"), model)


def test_save_resume_refuses_non_finite_weights_and_keeps_the_last_good_file(tmp_path):
    model = TinyNet()
    optimizer = optim.build_optimizer(split_parameters(model), 0.01, 0)
    path = str(tmp_path / "resume.pth")
    resume_state.save_resume(path, model, optimizer, epoch=0, step=3, iteration=3)
    good = open(path, "rb").read()
    with torch.no_grad():
        model.head[1].bias[0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"iteration 4: non-finite weights in head\.1\.bias"):
        resume_state.save_resume(path, model, optimizer, epoch=0, step=4, iteration=4)
    assert open(path, "rb").read() == good and os.listdir(tmp_path) == ["resume.pth"]
    assert resume_state.load_resume(path, TinyNet())["iteration"] == 3


def test_run_config_is_json_safe():
    config = resume_state.run_config({"seed": 3, "device": torch.device("cpu"), "gpus": "0"})
    assert config["args"]["device"] == "cpu" and config["seed"] == 3
    json.dumps(config)


def test_final_weights_and_config(tmp_path):
    data = str(tmp_path / "data")
    write_tiny_layout(data, count=4)
    model, *_ = train(data, str(tmp_path / "run"), max_epoch=1)
    directory = tmp_path / "run" / "models" / TAG
    assert sorted(os.listdir(directory)) == ["config.json", "last.pth", "resume.pth"]
    loaded = load_checkpoint(TinyNet(), str(directory / "last.pth"))  # strict, flat state_dict
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    config = json.loads((directory / "config.json").read_text())
    assert config["weight_decay_in_momentum_slot"] is False
    assert config["seed"] == 0 and config["world_size"] == 1
    assert config["versions"]["torch"] == torch.__version__


# --- torchrun ----------------------------------------------------------------------------------
def test_torchrun_two_processes_stay_in_step(tmp_path):
    data, out = str(tmp_path / "data"), str(tmp_path / "out")
    write_tiny_layout(data, count=8)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        os.path.join(ROOT, "tests", "ddp_worker.py"),
        "--root",
        data,
        "--out",
        out,
        "--max_epoch",
        "2",
    ]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rank0, rank1 = (torch.load(os.path.join(out, f"rank{r}.pt"), weights_only=True) for r in (0, 1))
    # parameters are identical; BN running statistics are rank-local after the last forward
    # (DDP broadcasts rank 0's buffers at the start of each forward), so they are not compared
    for name, _ in TinyNet().named_parameters():
        assert torch.equal(rank0["state"][name], rank1["state"][name]), name
    # each epoch: the two ranks saw disjoint halves of the 8 images
    for epoch in (0, 1):
        half0 = {i for e, i in rank0["indices"] if e == epoch}
        half1 = {i for e, i in rank1["indices"] if e == epoch}
        assert len(half0) == len(half1) == 4 and half0 | half1 == set(range(8))
    # only rank 0 logged and saved: one event file, one record per iteration (global batch 2)
    assert len(glob.glob(os.path.join(out, "logs", "events.out.tfevents.*"))) == 1
    records = [json.loads(line) for line in open(os.path.join(out, "logs", "log.jsonl"))]
    assert [r["iteration"] for r in records] == list(range(1, 9))
    final = torch.load(os.path.join(out, "models", TAG, "last.pth"), weights_only=True)
    assert all(torch.equal(final[k], rank0["state"][k]) for k in final)
    assert json.load(open(os.path.join(out, "models", TAG, "config.json")))["world_size"] == 2
    resume = torch.load(resume_state.resume_path(out, TAG), weights_only=True)
    assert len(resume["rng"]) == 2  # both ranks' generators travel in the checkpoint
    assert not torch.equal(resume["rng"][0]["torch"], resume["rng"][1]["torch"])
    assert math.isfinite(records[-1]["seg"])


def test_mfu_is_logged_where_the_peak_is_known_and_changes_no_weight(tmp_path, monkeypatch, toy_dataset):
    """On CUDA the log line carries mfu = images_per_s x FLOPs per image / peak; here a peak is
    given to the CPU. The FLOP count runs a forward and backward of its own: the weights of the
    run are those of a run without it, bit for bit (the random state is kept)."""
    import train_seg
    from core.dataset_layout import DatasetInfo, SeedLayout
    from core.io import save_mask
    from tools.engine import trainer
    from tools.paths import pseudo_labels_dir

    root = toy_dataset()
    layout = SeedLayout(root, "train_aug", DatasetInfo("TOY"))
    runs = {}
    for name, peak in (("plain", None), ("mfu", 1e12)):
        pred = tmp_path / name
        for image_id in layout.ids:
            save_mask(
                os.path.join(pseudo_labels_dir(str(pred), "masks", "train_aug"), image_id + ".png"),
                layout.read_mask(image_id),
                layout.info.palette,
            )
        monkeypatch.setattr(trainer, "device_peak_flops", lambda device, amp, peak=peak: peak)
        argv = [
            "--root_dir",
            root,
            "--dataset",
            "TOY",
            "--domain",
            "train_aug",
            "--gpus",
            "cpu",
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
            "--num_workers",
            "0",
            "--max_epoch",
            "1",
            "--label_tag",
            "masks",
            "--pred_dir",
            str(pred),
            "--tag",
            "t",
            "--log_interval",
            "1",
        ]
        runs[name] = train_seg.main(train_seg.get_args_parser().parse_args(argv))
    plain = torch.load(runs["plain"]["weights"], weights_only=True)
    counted = torch.load(runs["mfu"]["weights"], weights_only=True)
    assert all(torch.equal(plain[k], counted[k]) for k in plain)
    records = {
        name: [json.loads(line) for line in open(tmp_path / name / "models" / "t" / "logs" / "log.jsonl")]
        for name in runs
    }
    assert all("mfu" not in r for r in records["plain"])
    from tools.engine import flops

    per_image = flops.seg_train_flops(
        "deeplabv3+", "resnet18", 6, 8, 32, torch.device("cpu"), train_seg.segmentation_loss
    )
    for r in records["mfu"]:
        assert r["mfu"] == pytest.approx(r["images_per_s"] * per_image / 1e12, rel=1e-9)
