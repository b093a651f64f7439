"""Golden records: archives written by this format version must keep decoding.

The records in ``golden/`` were written by the ``tiny`` preset: version 1 (no colour map) and
version 2 (with the encoder's colour map, sprdiff.colour). If a change to the format,
the tiny preset or the encoder breaks them, this fails. Regenerate only for an intended
format change (and bump FORMAT_VERSION, keeping old versions readable):
``SPRDIFF_REGENERATE_GOLDEN=1 .venv/bin/python -m pytest tests/codec/test_golden.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from sprdiff.bitstream import FORMAT_VERSION, read_header
from sprdiff.cli import record_info

GOLDEN = Path(__file__).parent / "golden"
CASES = {  # name: (crop, colour_correction)
    "astronaut-97x131": (lambda imgs: imgs["astronaut"][100:197, 200:331], False),
    "coffee-1x64": (lambda imgs: imgs["coffee"][50:51, 100:164], False),
    "chelsea-64x64": (lambda imgs: imgs["chelsea"][:64, :64], False),
    "astronaut-97x131-colour": (lambda imgs: imgs["astronaut"][100:197, 200:331], True),
}


def _input(name, sample_images) -> np.ndarray:
    return np.ascontiguousarray(CASES[name][0](sample_images))


def _compress(model, name, sample_images) -> bytes:
    [rec] = model.compress([_input(name, sample_images)], colour_correction=CASES[name][1])
    return rec


@pytest.fixture(scope="module", autouse=True)
def regenerate(tiny_model, sample_images):
    if os.environ.get("SPRDIFF_REGENERATE_GOLDEN") != "1":
        return
    GOLDEN.mkdir(exist_ok=True)
    index = {}
    for name in CASES:
        rec = _compress(tiny_model, name, sample_images)
        (GOLDEN / f"{name}.sprd").write_bytes(rec)
        [pixels] = tiny_model.decompress([rec])
        index[name] = {**record_info(rec), "sha256": hashlib.sha256(rec).hexdigest(),
                       "decoded_mean": float(pixels.mean()), "model_fingerprint": tiny_model.fingerprint}
    (GOLDEN / "index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


@pytest.fixture(scope="module")
def index() -> dict:
    return json.loads((GOLDEN / "index.json").read_text())


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_header_parses(name, index):
    rec = (GOLDEN / f"{name}.sprd").read_bytes()
    assert hashlib.sha256(rec).hexdigest() == index[name]["sha256"], "golden file itself changed"
    header, _ = read_header(rec)
    assert header.version <= FORMAT_VERSION
    assert record_info(rec) == {k: index[name][k] for k in record_info(rec)}


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_record_decodes(name, index, tiny_model):
    rec = (GOLDEN / f"{name}.sprd").read_bytes()
    [pixels] = tiny_model.decompress([rec])  # fails on fingerprint/CRC/format drift
    assert pixels.shape == (index[name]["height"], index[name]["width"], 3)
    assert abs(float(pixels.mean()) - index[name]["decoded_mean"]) < 0.5


@pytest.mark.parametrize("name", sorted(CASES))
def test_encoder_reproduces_golden_bytes(name, tiny_model, sample_images):
    rec = _compress(tiny_model, name, sample_images)
    assert rec == (GOLDEN / f"{name}.sprd").read_bytes()


def test_goldens_cover_both_versions(index):
    versions = {name: entry["format_version"] for name, entry in index.items()}
    assert versions == {name: 2 if colour else 1 for name, (_, colour) in CASES.items()}
    assert {name: entry["colour_map"] for name, entry in index.items()} == {n: c for n, (_, c) in CASES.items()}
