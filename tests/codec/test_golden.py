"""Golden records: every record format version ever written must keep decoding to the same pixels.

``golden/`` holds records written by the ``tiny`` preset, one or more per format version, each with
the PNG its writer decoded it to. Every golden must still decode to that PNG (max |Δ| ≤ 1, at least
99 % of pixels exact: float kernels may differ in the last bit across CPUs), or, for records made to
be refused, still be refused with the same status. Goldens are never rewritten: they are what old
archives hold.

``CASES`` are the goldens today's encoder must reproduce byte for byte. If the encoder's bytes
change on purpose, point the case at a new golden name and add it with
``SPRDIFF_ADD_GOLDEN=1 .venv/bin/python -m pytest tests/codec/test_golden.py``: that writes goldens
that are missing and refuses to touch any that exist.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from golden_pixels import assert_same_pixels
from PIL import Image

from sprdiff import bitstream
from sprdiff.bitstream import SUPPORTED_VERSIONS, Extension, read_header
from sprdiff.errors import BitstreamError
from sprdiff.images import encode_png

GOLDEN = Path(__file__).parent / "golden"
INDEX = GOLDEN / "index.json"
CROPS = {  # name: (sample image, rows, columns)
    "astronaut-97x131": ("astronaut", slice(100, 197), slice(200, 331)),
    "coffee-1x64": ("coffee", slice(50, 51), slice(100, 164)),
    "chelsea-64x64": ("chelsea", slice(0, 64), slice(0, 64)),
}
CASES = {  # golden written by today's encoder: (crop, colour_correction)
    "astronaut-97x131-v4": ("astronaut-97x131", False),
    "coffee-1x64-v4": ("coffee-1x64", False),
    "chelsea-64x64-v4": ("chelsea-64x64", False),
    "astronaut-97x131-v4-corrected": ("astronaut-97x131", True),
}
# version-4 records carrying an extension this sprdiff does not know, made from a case's record:
# (base golden, the extension, the status a reader must give: None = decodes to the base's pixels)
WITH_EXTENSIONS = {
    "astronaut-97x131-v4-unknown-optional": ("astronaut-97x131-v4-corrected",
                                             Extension(id=60, critical=False, payload=b"note"), None),
    "astronaut-97x131-v4-unknown-critical": ("astronaut-97x131-v4-corrected",
                                             Extension(id=61, critical=True, payload=b"\x01"), "future_version"),
}


def record_info(record: bytes) -> dict:
    """What the index says of a record (the key names of the first goldens' index, kept as they were)."""
    header, _ = read_header(record)
    return {
        "format_version": header.version, "width": header.width, "height": header.height,
        "rate_id": header.rate_id, "timestep": header.timestep, "padding": header.padding,
        "fingerprint_tag": f"{header.fingerprint_tag:02x}", "colour_map": header.colour_map is not None,
        "offset_grid": None if header.offset_grid is None else f"{header.offset_grid.rows}x{header.offset_grid.cols}",
        "num_bytes": len(record), "bpp": 8 * len(record) / header.num_pixels,
        "container_bytes": len(record) - sum(header.string_lengths),
    }


def _index() -> dict:
    return json.loads(INDEX.read_text())


def _input(crop: str, sample_images) -> np.ndarray:
    image, rows, cols = CROPS[crop]
    return np.ascontiguousarray(sample_images[image][rows, cols])


def _encode(model, case: str, sample_images) -> bytes:
    crop, colour_correction = CASES[case]
    [record] = model.compress([_input(crop, sample_images)], colour_correction=colour_correction)
    return record


def _with_extension(model, base: bytes, extension: Extension) -> bytes:
    header, strings = bitstream.unpack(base, model.fingerprint_bytes, num_strings=1)
    return bitstream.pack(replace(header, extensions=(extension,)), strings, model.fingerprint_bytes)


def _add(name: str, record: bytes, entry: dict, index: dict, pixels: np.ndarray | None) -> None:
    if name in index or (GOLDEN / f"{name}.sprd").exists():
        return  # never touch an existing golden
    (GOLDEN / f"{name}.sprd").write_bytes(record)
    if pixels is not None:
        (GOLDEN / f"{name}.png").write_bytes(encode_png(pixels))
    index[name] = {**entry, "sha256": hashlib.sha256(record).hexdigest()}


@pytest.fixture(scope="module", autouse=True)
def add_missing_goldens(tiny_model, sample_images):
    if os.environ.get("SPRDIFF_ADD_GOLDEN") != "1":
        return
    index = _index()
    for case in CASES:
        record = _encode(tiny_model, case, sample_images)
        [pixels] = tiny_model.decompress([record])
        _add(case, record, {**record_info(record), "model_fingerprint": tiny_model.fingerprint}, index, pixels)
    for name, (base, extension, status) in WITH_EXTENSIONS.items():
        record = _with_extension(tiny_model, (GOLDEN / f"{base}.sprd").read_bytes(), extension)
        pixels = None if status else tiny_model.decompress([record])[0]
        info = {"format_version": 4} if status else record_info(record)
        _add(name, record, {**info, "model_fingerprint": tiny_model.fingerprint, "expect_status": status}, index,
             pixels)
    INDEX.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


ALL = sorted(json.loads(INDEX.read_text()))


@pytest.mark.parametrize("name", ALL)
def test_golden_file_is_unchanged_and_its_header_parses(name):
    entry = _index()[name]
    record = (GOLDEN / f"{name}.sprd").read_bytes()
    assert hashlib.sha256(record).hexdigest() == entry["sha256"], "a golden record itself changed: never rewrite one"
    if entry.get("expect_status"):
        with pytest.raises(BitstreamError):
            read_header(record)
        return
    header, _ = read_header(record)
    assert header.version == entry["format_version"]
    info = record_info(record)
    assert info == {k: entry[k] for k in info}


@pytest.mark.parametrize("name", ALL)
def test_golden_record_decodes_to_its_pixels(name, tiny_model):
    entry = _index()[name]
    record = (GOLDEN / f"{name}.sprd").read_bytes()
    if entry.get("expect_status"):
        with pytest.raises(BitstreamError) as e:
            tiny_model.decompress([record])
        assert e.value.status == entry["expect_status"]
        return
    [pixels] = tiny_model.decompress([record])  # fails on fingerprint/CRC/format drift
    expected = np.asarray(Image.open(GOLDEN / f"{name}.png").convert("RGB"))
    assert_same_pixels(name, pixels, expected)


@pytest.mark.parametrize("case", sorted(CASES))
def test_encoder_reproduces_golden_bytes(case, tiny_model, sample_images):
    assert (GOLDEN / f"{case}.sprd").exists(), f"add the golden {case} (SPRDIFF_ADD_GOLDEN=1)"
    assert _encode(tiny_model, case, sample_images) == (GOLDEN / f"{case}.sprd").read_bytes(), (
        f"today's encoder no longer writes golden {case}: if intended, point the case at a new golden name")


def test_goldens_cover_every_version_and_both_kinds_of_extension():
    index = _index()
    assert {entry["format_version"] for entry in index.values()} == set(SUPPORTED_VERSIONS)
    assert index["astronaut-97x131-colour"]["colour_map"] and not index["astronaut-97x131-colour"]["offset_grid"]
    assert index["astronaut-97x131-corrected"]["offset_grid"] and index["astronaut-97x131-v4-corrected"]["colour_map"]
    assert set(WITH_EXTENSIONS) <= set(index)
