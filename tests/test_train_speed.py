"""The speed-minded parts of the training loop (issue: GPU path, item 4): no host-device sync per
iteration (LossMonitor), a NaN still stops the run naming its iteration, and channels-last
gives the same numbers as the default layout."""

import os

import pytest
import torch
from helpers import count_syncs

import train_rsepm
import train_seg
from core.errors import NonFiniteError
from core.networks import RSEPM, build_network
from core.rsepm import RSEPMConfig, RSEPMTraining
from tools.engine import data_loading, runlog, script_parts
from tools.paths import model_dir


@pytest.fixture(scope="module")
def toy(toy_dataset):
    return toy_dataset()


def common_argv(root, pred_dir, batch_size, *extra):
    return [
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
        "64",
        "--batch_size",
        str(batch_size),
        "--num_workers",
        "0",
        "--pred_dir",
        str(pred_dir),
        *extra,
    ]


# --- LossMonitor -------------------------------------------------------------------------------
def test_loss_monitor_means_match_a_plain_average():
    monitor = runlog.LossMonitor()
    steps = [
        {"a": torch.tensor(1.0), "b": 2.0},
        {"a": torch.tensor(4.0), "b": 3.0},
        {"a": torch.tensor(0.5), "b": 7.0, "c": torch.tensor(9.0)},
    ]  # c appears later (e.g. mix terms)
    for i, scalars in enumerate(steps):
        monitor.add(scalars, i)
    means = monitor.means()
    assert means == pytest.approx({"a": (1 + 4 + 0.5) / 3, "b": (2 + 3 + 7) / 3, "c": 9.0})
    assert monitor.means() == {}  # started afresh
    monitor.add({"a": 2.0}, 3)
    assert monitor.means() == {"a": 2.0}


def test_loss_monitor_names_the_first_bad_iteration_and_its_terms():
    monitor = runlog.LossMonitor()
    monitor.add({"cls": torch.tensor(0.3), "seg": torch.tensor(0.2)}, 10)
    monitor.add({"cls": torch.tensor(0.3), "seg": torch.tensor(float("nan"))}, 11)
    monitor.add({"cls": torch.tensor(float("inf")), "seg": torch.tensor(float("nan"))}, 12)  # later: not named
    with pytest.raises(NonFiniteError) as error:
        monitor.check()
    message = str(error.value)
    assert message.startswith("iteration 11: non-finite loss seg=nan;"), message
    assert "cls" not in message
    with pytest.raises(NonFiniteError, match="iteration 11"):
        monitor.means()  # the log line refuses too


def test_check_finite_with_a_monitor_defers_the_check_to_its_next_read(monkeypatch):
    monitor = runlog.LossMonitor()
    calls = count_syncs(
        monkeypatch,
        lambda: [
            runlog.check_finite({"cls": torch.tensor(0.5, dtype=torch.float64), "seg": 1.5}, 3, monitor=monitor),
            runlog.check_finite({"cls": torch.tensor(1.5), "seg": torch.tensor(float("nan"))}, 4, monitor=monitor),
        ],
    )
    assert not calls  # neither call reads a value back
    with pytest.raises(NonFiniteError, match=r"^iteration 4: non-finite loss seg=nan;"):
        monitor.means()


# --- no sync per iteration ---------------------------------------------------------------------
def test_training_loop_makes_no_host_sync_per_iteration(toy, tmp_path, monkeypatch):
    """The same epoch of 8 images as 2 or 4 iterations (RS and EPM active, one log line at the
    epoch's end): the host-sync calls are the same, so none of them is per iteration."""

    def run(batch_size):
        argv = common_argv(
            toy,
            tmp_path / f"b{batch_size}",
            batch_size,
            "--max_epoch",
            "1",
            "--rs_start",
            "1",
            "--mix_start",
            "1",
            "--pamr_iterations",
            "2",
            "--pamr_dilations",
            "1,2",
            "--log_interval",
            "100",
            "--save_interval",
            "100",
        )
        return count_syncs(monkeypatch, lambda: train_rsepm.main(train_rsepm.get_args_parser().parse_args(argv)))

    four, two = run(2), run(4)
    assert four == two, {k: (four[k], two[k]) for k in set(four) | set(two) if four[k] != two[k]}
    # the one log line reads the run's sums once (not once per iteration), and nothing else of the
    # recording or the loop syncs
    assert sum(v for (name, where, _), v in four.items() if where in ("runlog.py", "trainer.py")) == 1, four


# --- NaN between log lines ---------------------------------------------------------------------
def test_nan_between_log_lines_stops_the_run_naming_its_iteration(toy, tmp_path, monkeypatch):
    original, calls = train_seg.segmentation_loss, []

    def poisoned(logits, masks):
        calls.append(1)
        loss = original(logits, masks)
        return loss * float("nan") if len(calls) == 2 else loss

    monkeypatch.setattr(train_seg, "segmentation_loss", poisoned)
    argv = common_argv(
        toy,
        tmp_path,
        2,
        "--max_epoch",
        "2",
        "--label_tag",
        "gt",
        "--tag",
        "nan",
        "--log_interval",
        "100",
        "--save_interval",
        "3",
    )
    with pytest.raises(NonFiniteError) as error:
        train_seg.main(train_seg.get_args_parser().parse_args(argv))
    assert str(error.value).startswith("iteration 1: non-finite loss seg=nan"), str(error.value)
    assert len(calls) == 3  # stopped at the first check (before the save of iteration 3), not at the end
    assert not os.path.exists(os.path.join(model_dir(str(tmp_path), "nan"), "resume.pth"))
    assert not os.path.exists(os.path.join(model_dir(str(tmp_path), "nan"), "last.pth"))


# --- channels-last -----------------------------------------------------------------------------
def test_memory_format_flag():
    args = type("Args", (), {})()
    for value, device, expected in [
        ("auto", "cpu", torch.contiguous_format),
        ("true", "cpu", torch.channels_last),
        ("false", "cuda", torch.contiguous_format),
        ("auto", "cuda", torch.channels_last),
    ]:
        args.channels_last = value
        assert script_parts.memory_format(args, device) == expected


@pytest.mark.parametrize("decoder", ["deeplabv3+", "deeplabv2"])
def test_channels_last_segmentation_forward_matches(decoder):
    torch.manual_seed(0)
    network = build_network(decoder, "resnet18", 6, output_stride=8, pretrained="none").eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = network(images)
        network = network.to(memory_format=torch.channels_last)
        got = network(images.to(memory_format=torch.channels_last))
    assert got.is_contiguous(memory_format=torch.channels_last) or got.is_contiguous()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_channels_last_rsepm_step_matches():
    """RS+EPM losses (SCG, PAMR, certain filter, edge predict and the mix included) are the same
    with a channels-last network and inputs. Dropout is set to 0: its random mask follows the
    memory order, so it differs between layouts (as between two seeds), which is no error."""

    def losses(fmt):
        torch.manual_seed(0)
        network = RSEPM("resnet18", 6, output_stride=16, pretrained="none").to(memory_format=fmt)
        for module in network.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        step = RSEPMTraining(network, RSEPMConfig(pamr_iterations=2, pamr_dilations=(1, 2))).train()
        gen = torch.Generator().manual_seed(1)
        images = torch.randn(4, 3, 64, 64, generator=gen).to(memory_format=fmt)
        tags = torch.tensor([[1, 0, 0, 0, 0], [0, 1, 1, 0, 0], [0, 0, 0, 1, 0], [1, 0, 0, 0, 1]]).float()
        valid = torch.ones(4, 64, 64, dtype=torch.bool)
        valid[1, :, 48:] = False
        out = step(images, tags, valid, use_rs=True, use_mix=True, seed=5)
        return {k: v.detach() for k, v in out.items()}

    plain, last = losses(torch.contiguous_format), losses(torch.channels_last)
    assert {"rec", "seg", "rec_mix", "seg_mix"} <= set(plain) and set(plain) == set(last)
    for name in plain:
        torch.testing.assert_close(last[name], plain[name], atol=1e-5, rtol=1e-4, msg=name)


# --- data loading ------------------------------------------------------------------------------
class EpochEcho(torch.utils.data.Dataset):
    """Returns (worker pid, the epoch it was told, index)."""

    def __init__(self, size):
        self.size, self.epoch = size, 0

    def __len__(self):
        return self.size

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __getitem__(self, index):
        return torch.tensor([os.getpid(), self.epoch, index])


def test_loader_workers_persist_and_see_each_epoch():
    from tools.engine import distributed

    loader = data_loading.build_loader(EpochEcho(6), distributed.DistContext(), batch_size=2, num_workers=1, seed=3)
    assert loader.persistent_workers and not loader.pin_memory  # pinning only on CUDA
    seen = {}
    for epoch in (0, 1, 2):
        data_loading.set_loader_epoch(loader, epoch, skip_batches=1 if epoch == 2 else 0)
        rows = torch.cat(list(loader))
        seen[epoch] = rows
        assert rows[:, 1].tolist() == [epoch] * len(rows)  # the worker augmented with this epoch
        expected = loader.sampler.shard()[2 if epoch == 2 else 0 :].tolist()
        assert rows[:, 2].tolist() == expected
    assert len({int(p) for rows in seen.values() for p in rows[:, 0]}) == 1  # one worker process throughout
    assert int(seen[0][0, 0]) != os.getpid()
