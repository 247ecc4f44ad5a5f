"""The time budget spreads each stage as the code does, and its disk table adds up what the stages
write (tools/gpu/time_budget.py; the FLOP counts are replaced by round numbers here)."""

from types import SimpleNamespace

import pytest

from tools.gpu import time_budget

FLOPS = {
    "rsepm train": 1e12,
    "seg train": 2e12,
    "affinity forward": 1e11,
    "rsepm infer VOC": 2e12,
    "seg infer VOC": 5e12,
    "rsepm infer COCO": 3e12,
    "seg infer COCO": 9e12,
}
ARGS = SimpleNamespace(train_utilisation=0.3, infer_utilisation=0.2, scaling=0.9, cores=16)


@pytest.mark.parametrize("name", ["VOC", "COCO"])
def test_each_stage_spreads_as_the_code_spreads_it(name):
    one = dict(time_budget.stages(name, 1, FLOPS, time_budget.CPU, ARGS))
    eight = dict(time_budget.stages(name, 8, FLOPS, time_budget.CPU, ARGS))
    assert set(one) == set(time_budget.SPREAD)
    for stage, spread in time_budget.SPREAD.items():
        expected = {"shards": 8, "cores": 8, "ddp": 8 * 0.9}[spread]
        if stage.startswith("affinity"):  # its label cache is on the cores, its training over DDP
            assert 8 * 0.9 < one[stage] / eight[stage] < 8
            continue
        assert one[stage] / eight[stage] == pytest.approx(expected), stage
    # by hand: RS+EPM training on one GPU = FLOPs x images x epochs / (peak x utilisation)
    d = time_budget.DATASETS[name]
    assert one["RS+EPM training (GPU)"] == pytest.approx(
        1e12 * d["train"] * d["rsepm_epochs"] / (time_budget.PEAK * 0.3)
    )


def test_disk_rows_by_hand():
    rows = {what: (full, default) for what, full, default in time_budget.disk("VOC")}
    assert rows["seeds of train"][0] == pytest.approx(10582 * 1.5 * 375 * 500 * 4)
    assert rows["seeds of train"][1] == pytest.approx(rows["seeds of train"][0] / time_budget.UINT16_RATIO)
    assert rows["relation-label cache"] == (pytest.approx(10582 * 5e3),) * 2
    checkpoints = time_budget.checkpoint_bytes()
    assert 80e6 < checkpoints["RS+EPM ResNet-50"]["last"] < 200e6  # about 25 M float32 parameters
    assert checkpoints["RS+EPM ResNet-50"]["resume"] > 2 * checkpoints["RS+EPM ResNet-50"]["last"]
