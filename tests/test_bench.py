"""tools/bench: the table run_all writes between the markers, the ratios, and the two ways of
computing IoU that bench_evaluate times against each other (hand-worked values)."""

import numpy as np
import pytest

from core.errors import FormatError
from tools.bench import measure, run_all
from tools.bench.bench_evaluate import confusion_iou, per_class_iou


def test_table_replaces_only_what_lies_between_the_markers(tmp_path):
    doc = tmp_path / "performance.md"
    doc.write_text(f"# title\nbefore\n{run_all.BEGIN}\nold table\n{run_all.END}\nafter\n")
    run_all.write_table(str(doc), "| new |")
    assert doc.read_text() == f"# title\nbefore\n{run_all.BEGIN}\n| new |\n{run_all.END}\nafter\n"
    run_all.write_table(str(doc), "| newer |")  # again: still one table
    assert doc.read_text().count("| new") == 1 and "| newer |" in doc.read_text()


@pytest.mark.parametrize(
    "text", ["no markers\n", f"{run_all.END}\n{run_all.BEGIN}\n", f"{run_all.BEGIN}\n{run_all.BEGIN}\n{run_all.END}\n"]
)
def test_a_page_without_one_pair_of_markers_is_refused_untouched(tmp_path, text):
    doc = tmp_path / "performance.md"
    doc.write_text(text)
    with pytest.raises(FormatError, match="performance.md: needs one"):
        run_all.write_table(str(doc), "| new |")
    assert doc.read_text() == text
    assert list(tmp_path.iterdir()) == [doc]  # no temporary file left behind


def test_ratio_of_minima_medians_and_cpu_seconds():
    slow = {"min": 3.0, "median": 4.0, "cpu": 1.5}
    fast = {"min": 1.5, "median": 1.0, "cpu": 0.5}
    assert measure.ratio(slow, fast) == {"min": 2.0, "median": 4.0, "cpu": 3.0}
    assert measure.stats([0.3, 0.1, 0.2], [0.05, 0.04, 0.06]) == {"min": 0.1, "median": 0.2, "runs": 3, "cpu": 0.04}


def test_both_iou_ways_give_the_hand_worked_values():
    gt = np.array([[0, 0, 1, 1], [0, 255, 1, 1]], np.uint8)
    pred = np.array([[0, 1, 1, 1], [1, 1, 1, 0]], np.uint8)
    # class 0: TP 1 (pixel (0,0)); gt 3 (excl. 255), predicted 2 on valid pixels -> union 4, IoU 1/4
    # class 1: TP 3; gt 4, predicted 5 on valid pixels -> union 6, IoU 1/2; class 2 absent: 0
    expected = [0.25, 0.5, 0.0]
    np.testing.assert_allclose(per_class_iou([(pred, gt)], 3), expected)
    np.testing.assert_allclose(confusion_iou([(pred, gt)], 3), expected)


def test_the_machine_line_names_the_cpu_model_and_its_vector_extensions(tmp_path):
    from tools.bench.measure import cpu_model

    intel = tmp_path / "intel"
    intel.write_text(
        "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
        "flags\t\t: fpu sse avx2 avx512f avx512_vnni amx_bf16 amx_tile\n\nprocessor\t: 1\n"
        "model name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu\n"
    )
    assert cpu_model(str(intel)) == (
        "Intel(R) Xeon(R) Platinum 8480+",
        ["avx2", "avx512f", "avx512_vnni", "amx_bf16", "amx_tile"],
    )
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd sve\nCPU part\t: 0xd40\n")
    name, flags = cpu_model(str(arm))
    assert flags == ["sve", "asimd"] and name  # no model name line: the platform's string
    name, flags = cpu_model(str(tmp_path / "missing"))
    assert flags == [] and name


def test_bench_inference_processes_counts_every_image_in_each_setting(capsys):
    """--processes runs the real inference loop over 1 and 2 processes; no timing is asserted,
    only that each setting did the whole set and the ratio is against 1 process."""
    from tools.bench import bench_inference

    result = bench_inference.main(
        bench_inference.get_args_parser().parse_args(["--processes", "1,2", "--repeat", "1", "--num_images", "4"])
    )
    rows = result["processes"]
    assert sorted(rows) == [1, 2] and rows[1]["ratio"] == 1.0 and rows[2]["ratio"] > 0
    assert all(row["seed_bytes"] > 0 and row["loop"]["max"] > 0 for row in rows.values())
    # the default (uint16) files against the same seeds in the authors' float32 form
    assert all(row["seed_bytes_float32"] > 8 * row["seed_bytes"] for row in rows.values())
    out = capsys.readouterr().out
    assert "processes" in out and "x 1.00" in out and "machine:" in out
