"""Property-based fuzzing of the record parser and decoder: damaged input only ever raises
BitstreamError, quickly. (``bench/bench_fuzz.py`` runs the same mutations 100,000+ times.)"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sprdiff import BitstreamError
from sprdiff.bitstream import read_header, unpack

FUZZ = settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def records(tiny_model, sample_images):
    imgs = [np.ascontiguousarray(sample_images["coffee"][:64, :96]),
            np.ascontiguousarray(sample_images["astronaut"][:70, :64])]
    return tiny_model.compress(imgs)


def _decode_or_refuse(model, data: bytes):
    try:
        [img] = model.decompress([data])
    except BitstreamError as e:
        assert e.status in {"truncated", "corrupt", "model_mismatch", "future_version", "not_sprdiff"}
        return None
    return img


@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes(tiny_model, data):
    assert _decode_or_refuse(tiny_model, data) is None
    try:
        read_header(data)
    except BitstreamError:
        pass


@FUZZ
@given(st.data())
def test_bit_flips(tiny_model, records, data):
    rec = bytearray(data.draw(st.sampled_from(records)))
    for pos in data.draw(st.lists(st.integers(0, len(rec) - 1), min_size=1, max_size=4, unique=True)):
        rec[pos] ^= 1 << data.draw(st.integers(0, 7))
    assert _decode_or_refuse(tiny_model, bytes(rec)) is None


@FUZZ
@given(st.data())
def test_truncations_and_extensions(tiny_model, records, data):
    rec = data.draw(st.sampled_from(records))
    cut = data.draw(st.integers(0, len(rec) - 1))
    assert _decode_or_refuse(tiny_model, rec[:cut]) is None
    assert _decode_or_refuse(tiny_model, rec + data.draw(st.binary(min_size=1, max_size=8))) is None


@FUZZ
@given(st.data())
def test_splices(tiny_model, records, data):
    a, b = records
    i, j = data.draw(st.integers(1, len(a) - 1)), data.draw(st.integers(1, len(b) - 1))
    spliced = a[:i] + b[j:]
    if spliced in records:
        return
    assert _decode_or_refuse(tiny_model, spliced) is None


def test_untouched_records_still_decode(tiny_model, records):
    assert all(img is not None for img in (_decode_or_refuse(tiny_model, r) for r in records))
    header, strings = unpack(records[0], tiny_model.fingerprint_bytes, num_strings=1)
    assert (header.width, header.height) == (96, 64)
