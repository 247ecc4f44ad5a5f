"""tools/gpu/gpu_check.py: its measuring helpers against hand-worked numbers, and `--smoke` end to end
on the CPU (the same code path as on a GPU, at tiny sizes), so the script cannot rot."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from core.io import save_seed
from tools.engine import flops
from tools.gpu.gpu_check import MATCH_TOL, SMOKE_CHECKS, inference_speed, seed_difference, training_speed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_training_speed_is_total_images_over_total_time_after_warmup(tmp_path):
    log = tmp_path / "log.jsonl"
    # iterations of batch 4 at 1, 2, 4, 8 images/s: 4, 2, 1, 0.5 s; warm-up 1 leaves 3.5 s for 12 images
    log.write_text(
        "".join(json.dumps({"iteration": i + 1, "images_per_s": r}) + "\n" for i, r in enumerate((1.0, 2.0, 4.0, 8.0)))
        + json.dumps({"val": 1})
        + "\n"
    )
    assert training_speed(str(log), 4, 1) == pytest.approx(12 / 3.5)
    with pytest.raises(ValueError, match="warm-up"):
        training_speed(str(log), 4, 4)


def test_inference_speed_from_file_times(tmp_path):
    for i, t in enumerate((0.0, 10.0, 10.5, 11.0, 12.0)):  # the first image is the warm-up
        path = tmp_path / f"{i}.pkl"
        path.write_bytes(b"")
        os.utime(path, ns=(int(t * 1e9), int(t * 1e9)))
    assert inference_speed(str(tmp_path), 1) == pytest.approx(3 / 2.0)


def test_seed_difference_by_hand_and_key_mismatch(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    seed = np.zeros((1, 2, 2), np.float32)
    save_seed(str(a / "x.pkl"), [0, 3], seed, "rsepm")
    save_seed(str(b / "x.pkl"), [0, 3], seed + np.array([[[0.0, 0.1], [0.0, 0.3]]], np.float32), "rsepm")
    worst, mean = seed_difference(str(a), str(b))
    assert worst == pytest.approx(0.3) and mean == pytest.approx(0.1)
    save_seed(str(b / "x.pkl"), [0, 2], seed, "rsepm")
    with pytest.raises(ValueError, match="classes differ"):
        seed_difference(str(a), str(b))


def test_peak_table_prefers_the_specific_name():
    assert flops.peak_tflops("NVIDIA H100 PCIe", "bf16") == 756.0
    assert flops.peak_tflops("NVIDIA H100 80GB HBM3", "bf16") == 989.4
    assert flops.peak_tflops("NVIDIA H200", "off") == 494.7
    assert flops.peak_tflops("NVIDIA A100-SXM4-80GB", "fp16") == 312.0
    assert flops.peak_tflops("cpu", "bf16") is None


def test_counted_flops_of_a_convolution_match_the_formula():
    conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
    x = torch.randn(2, 3, 10, 12, requires_grad=True)
    forward = 2 * 2 * 8 * 3 * 3 * 3 * 10 * 12  # 2 FLOPs per multiply-add, every output pixel
    assert flops._count(lambda: conv(x)) == forward
    assert flops._count(lambda: conv(x).sum().backward()) == 3 * forward  # + input and weight grads


def test_smoke_runs_every_check_on_cpu(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "gpu", "gpu_check.py"), "--smoke", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    rows = {r["name"]: r for r in result["rows"]}
    # every smoke check ran, once (the match adds its CPU-vs-CPU row)
    assert sorted(rows) == sorted(rows.keys()) and len(rows) == len(result["rows"])
    for prefix in SMOKE_CHECKS:
        assert any(name.startswith(prefix) for name in rows), prefix
    assert result["failed"] == [] and result["mode"] == "smoke" and result["rs_start"] == result["mix_start"]
    for name, row in rows.items():
        assert row["status"] == "ok", row
        if "match" in name:
            assert row["max_abs_diff"] <= MATCH_TOL and math.isfinite(row["mean_abs_diff"])
        else:
            assert math.isfinite(row["images_per_s"]) and row["images_per_s"] > 0, row
            assert math.isfinite(row["gflop_per_image"]) and row["gflop_per_image"] > 0, row
            assert row["mfu"] is None and row["peak_mem_gib"] is None  # no peak table / CUDA on a CPU
    table = (out / "result.md").read_text()
    assert all(f"| {name} |" in table for name in rows)
    assert "FAILED" not in table and proc.stdout.count("| train ") >= 4
