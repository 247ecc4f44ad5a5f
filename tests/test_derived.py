"""Every folder a stage writes knows what it was made from (core.io.claim_output_folder): weights
by content, flags, the input folder's record; --overwrite removes what was derived from the old
contents; a run that wrote nothing blocks nothing; --overwrite never deletes outside the root."""
import json
import os

import pytest

from core.errors import FormatError, UsageError
from core.io import claim_output_folder, file_fingerprint, read_json, settings_path, write_json


def weights_file(path, payload):
    with open(path, "wb") as f:
        f.write(payload)
    return str(path)


def fill(folder, names):
    for name in names:
        with open(os.path.join(folder, name), "w") as f:
            f.write("x")


def test_retrained_weights_of_the_same_size_are_other_settings(tmp_path):
    """The random-walk masks' case: a network retrained into the same tag gives a file of the same
    size; the sha256 tells them apart, and the path alone is not compared."""
    folder, weights = str(tmp_path / "pseudo-labels" / "t@rw" / "train"), tmp_path / "last.pth"
    claim_output_folder(folder, {"affinity_weights": file_fingerprint(weights_file(weights, b"A" * 64))}, ".png")
    fill(folder, ["a.png", "b.png"])
    retrained = file_fingerprint(weights_file(weights, b"B" * 64))
    assert retrained["size"] == 64
    with pytest.raises(UsageError, match="affinity_weights.sha256.*--overwrite true"):
        claim_output_folder(folder, {"affinity_weights": retrained}, ".png")
    moved = file_fingerprint(weights_file(tmp_path / "copy.pth", b"A" * 64))  # same content elsewhere
    claim_output_folder(folder, {"affinity_weights": moved}, ".png")
    assert sorted(n for n in os.listdir(folder) if n.endswith(".png")) == ["a.png", "b.png"]


def test_overwrite_removes_the_outputs_and_what_was_derived_from_them(tmp_path):
    folder = str(tmp_path / "predictions" / "t" / "validation")
    claim_output_folder(folder, {"th": 0.1}, ".pkl")
    fill(folder, ["a.pkl", "b.pkl"])
    evaluation = folder + ".eval.json"
    write_json(evaluation, {"mIoU": 50.0})
    assert claim_output_folder(folder, {"th": 0.2}, ".pkl", overwrite=True) == 2
    assert not os.path.exists(evaluation)
    assert [n for n in os.listdir(folder) if n.endswith(".pkl")] == []
    assert read_json(settings_path(folder)) == {"th": 0.2}


def test_a_record_beside_no_outputs_blocks_nothing(tmp_path):
    """A run that failed before writing any output (a truncated checkpoint, say) leaves its record;
    the corrected re-run with other settings goes ahead without --overwrite."""
    folder = str(tmp_path / "pseudo-labels" / "t" / "train")
    claim_output_folder(folder, {"weights": {"sha256": "aaa"}}, ".png")
    claim_output_folder(folder, {"weights": {"sha256": "bbb"}}, ".png")
    assert read_json(settings_path(folder)) == {"weights": {"sha256": "bbb"}}
    fill(folder, ["a.png"])
    with pytest.raises(UsageError, match="other settings"):
        claim_output_folder(folder, {"weights": {"sha256": "ccc"}}, ".png")


def test_overwrite_refuses_a_folder_that_leads_outside_the_root(tmp_path):
    outside = tmp_path / "precious"
    outside.mkdir()
    fill(str(outside), ["keep.png"])
    root = tmp_path / "exp"
    (root / "pseudo-labels" / "t").mkdir(parents=True)
    link = root / "pseudo-labels" / "t" / "train"
    os.symlink(outside, link)
    with pytest.raises(UsageError, match="outside the experiment root"):
        claim_output_folder(str(link), {"x": 1}, ".png", overwrite=True, root=str(root))
    assert os.listdir(outside) == ["keep.png"]
    # a root that is itself a link (experiments -> /scratch/...) is the user's layout: allowed
    scratch = tmp_path / "scratch"
    (scratch / "pseudo-labels" / "t" / "train").mkdir(parents=True)
    os.symlink(scratch, tmp_path / "exp2")
    claim_output_folder(str(tmp_path / "exp2" / "pseudo-labels" / "t" / "train"), {"x": 1}, ".png",
                        overwrite=True, root=str(tmp_path / "exp2"))


@pytest.mark.parametrize("payload, words", [(b'{"a": "\xff"}', "not UTF-8"), (b"[" * 100000, "nested too deeply")])
def test_a_settings_file_that_is_not_json_text_is_one_line(tmp_path, payload, words):
    path = tmp_path / "settings.json"
    path.write_bytes(payload)
    with pytest.raises(FormatError, match=words):
        read_json(str(path))


def test_the_cli_names_the_bad_settings_file(tmp_path, toy_dataset):
    """Through a real stage: convert reads the seed folder's record; a non-UTF-8 byte there is one
    line, exit status 1."""
    import subprocess
    import sys
    from tools.paths import REPO_ROOT, predictions_dir
    pred = tmp_path / "exp"
    seeds = predictions_dir(str(pred), "t", "validation")
    os.makedirs(seeds)
    with open(settings_path(seeds), "wb") as f:
        f.write(json.dumps({"kind": "rsepm"}).encode()[:-1] + b', "x": "\xff"}')
    result = subprocess.run([sys.executable, "convert_seed_to_pseudo_masks.py", "--dataset", "TOY", "--root_dir",
                             toy_dataset(), "--domain", "validation", "--pred_dir", str(pred), "--tag", "t",
                             "--gpus", "cpu"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and "not UTF-8" in last, result.stderr
