"""Golden records: archives written by this format version must keep decoding.

The records in ``golden/`` were written by the ``tiny`` preset: version 1 (no colour
correction), version 3 (today's encoder with its colour correction: colour map and offset
grid, sprdiff.colour and sprdiff.offset_grid) and, kept from before the offset grid, version 2
(colour map only), which today's encoder no longer writes for that image but must still decode.
If a change to the format, the tiny preset or the encoder breaks them, this fails. Regenerate
only for an intended format change (and bump FORMAT_VERSION, keeping old versions readable):
``SPRDIFF_REGENERATE_GOLDEN=1 .venv/bin/python -m pytest tests/codec/test_golden.py``; it
rewrites the CASES and only re-describes the LEGACY records.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from sprdiff.bitstream import FORMAT_VERSION, SUPPORTED_VERSIONS, read_header
from sprdiff.cli import record_info

GOLDEN = Path(__file__).parent / "golden"
CASES = {  # written by today's encoder: name: (crop, colour_correction)
    "astronaut-97x131": (lambda imgs: imgs["astronaut"][100:197, 200:331], False),
    "coffee-1x64": (lambda imgs: imgs["coffee"][50:51, 100:164], False),
    "chelsea-64x64": (lambda imgs: imgs["chelsea"][:64, :64], False),
    "astronaut-97x131-corrected": (lambda imgs: imgs["astronaut"][100:197, 200:331], True),
}
LEGACY = {"astronaut-97x131-colour": 2}  # written by an older encoder: name: its format version
ALL = sorted([*CASES, *LEGACY])


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
    for name in ALL:
        if name in CASES:
            (GOLDEN / f"{name}.sprd").write_bytes(_compress(tiny_model, name, sample_images))
        rec = (GOLDEN / f"{name}.sprd").read_bytes()
        [pixels] = tiny_model.decompress([rec])
        index[name] = {**record_info(rec), "sha256": hashlib.sha256(rec).hexdigest(),
                       "decoded_mean": float(pixels.mean()), "model_fingerprint": tiny_model.fingerprint}
    (GOLDEN / "index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


@pytest.fixture(scope="module")
def index() -> dict:
    return json.loads((GOLDEN / "index.json").read_text())


@pytest.mark.parametrize("name", ALL)
def test_golden_header_parses(name, index):
    rec = (GOLDEN / f"{name}.sprd").read_bytes()
    assert hashlib.sha256(rec).hexdigest() == index[name]["sha256"], "golden file itself changed"
    header, _ = read_header(rec)
    assert header.version <= FORMAT_VERSION
    assert record_info(rec) == {k: index[name][k] for k in record_info(rec)}


@pytest.mark.parametrize("name", ALL)
def test_golden_record_decodes(name, index, tiny_model):
    rec = (GOLDEN / f"{name}.sprd").read_bytes()
    [pixels] = tiny_model.decompress([rec])  # fails on fingerprint/CRC/format drift
    assert pixels.shape == (index[name]["height"], index[name]["width"], 3)
    assert abs(float(pixels.mean()) - index[name]["decoded_mean"]) < 0.5


@pytest.mark.parametrize("name", sorted(CASES))
def test_encoder_reproduces_golden_bytes(name, tiny_model, sample_images):
    rec = _compress(tiny_model, name, sample_images)
    assert rec == (GOLDEN / f"{name}.sprd").read_bytes()


def test_goldens_cover_every_version(index):
    versions = {name: entry["format_version"] for name, entry in index.items()}
    assert versions == {**{name: 3 if colour else 1 for name, (_, colour) in CASES.items()}, **LEGACY}
    assert set(versions.values()) == set(SUPPORTED_VERSIONS)
    assert index["astronaut-97x131-colour"]["colour_map"] and not index["astronaut-97x131-colour"]["offset_grid"]
    assert index["astronaut-97x131-corrected"]["offset_grid"]
