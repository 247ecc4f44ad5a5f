"""The README's toy numbers are tied to what a newcomer runs: tools/toy/reference.json records the
digest of the quick-start's settings, the sha256 of the pretrained backbone of the run that made
the table and that run's seed-0 rows; the README and docs/reproduction.md show those rows."""

import json
import os
import re

from tools.paths import REPO_ROOT
from tools.toy import toy_pipeline

REFERENCE = os.path.join(REPO_ROOT, toy_pipeline.REFERENCE)


def reference():
    with open(REFERENCE, encoding="utf-8") as f:
        return json.load(f)


def table_rows(path):
    """{row name: [cells]} of the markdown tables of a file."""
    rows = {}
    with open(os.path.join(REPO_ROOT, path), encoding="utf-8") as f:
        for line in f:
            if line.startswith("| ") and not line.startswith("| stage") and not line.startswith("|---"):
                cells = [c.strip() for c in line.strip().strip("|").split("|")]
                rows.setdefault(cells[0], cells[1:])
    return rows


def test_the_settings_are_those_the_table_was_made_with():
    """Change a setting of the quick-start and this fails until the table is measured again:
    `python tools/toy/toy_pipeline.py --fresh true --fresh_pretrain true --seeds 0,1,2`, then the
    tables of README.md and docs/reproduction.md and tools/toy/reference.json."""
    assert toy_pipeline.settings_digest() == reference()["settings_digest"], (
        "the toy pipeline's settings changed since the README's table was measured: re-run it from nothing and "
        "update README.md, docs/reproduction.md and tools/toy/reference.json"
    )


def test_the_digest_covers_every_setting(monkeypatch):
    digest = toy_pipeline.settings_digest()
    for name in (
        "PRETRAIN",
        "RSEPM_TRAIN",
        "SEG_TRAIN",
        "AFF_TRAIN",
        "RW_CONVERT",
        "SCALES",
        "SEED_FORMAT",
        "TOY_DATA_COMMAND",
        "PRETRAIN_DATA_COMMAND",
    ):
        monkeypatch.setattr(toy_pipeline, name, [*getattr(toy_pipeline, name), "--x"])
        assert toy_pipeline.settings_digest() != digest, name
        monkeypatch.undo()
    monkeypatch.setattr(toy_pipeline, "CONF_TH", "0.35")
    assert toy_pipeline.settings_digest() != digest


def test_readme_and_reproduction_show_the_reference_rows():
    ref = reference()
    rows = ref["seed0"]
    assert len(rows) == 6 and re.fullmatch(r"[0-9a-f]{64}", ref["pretrained_sha256"])
    reproduction = table_rows("docs/reproduction.md")
    for name, value in rows.items():
        assert reproduction[name][3] == f"{value:.2f}", name  # images, mean, min-max, seed 0
    readme = table_rows("README.md")
    for name in (
        "RS+EPM seeds, train, GT tags (best threshold)",
        "single stage: RS+EPM + CRF, validation, conf_th 0.34",
        "multi stage: DeepLabV3+ + CRF, validation",
    ):  # the README's three rows: images, mean, seed 0
        assert readme[name][2] == f"{rows[name]:.2f}", name
    with open(os.path.join(REPO_ROOT, "docs", "reproduction.md"), encoding="utf-8") as f:
        text = f.read()
    assert ref["pretrained_sha256"][:16] in text and ref["settings_digest"][:16] in text
