"""Model pointers: a run's ``model`` names stored weights by fingerprint; loading follows and checks it."""

from __future__ import annotations

import json

import pytest

from sprdiff import SPRDiff
from sprdiff.model_pointer import POINTER_NAME, read_pointer, write_pointer


def test_a_local_pointer_loads_the_weights_it_names(tmp_path, tiny_model):
    stored = tmp_path / "run" / "models" / tiny_model.fingerprint
    tiny_model.save_pretrained(str(stored))
    write_pointer(str(tmp_path / "run" / "model"), f"../models/{tiny_model.fingerprint}", tiny_model.fingerprint)
    assert sorted(p.name for p in (tmp_path / "run" / "model").iterdir()) == [POINTER_NAME]
    assert read_pointer(str(tmp_path / "run" / "model")).target == str(stored)
    assert SPRDiff.from_pretrained(str(tmp_path / "run" / "model")).fingerprint == tiny_model.fingerprint


def test_a_pointer_on_s3_is_followed(s3_bucket, tiny_model, tmp_path):
    tiny_model.save_pretrained(f"{s3_bucket}/run/models/{tiny_model.fingerprint}")
    write_pointer(f"{s3_bucket}/run/model", f"../models/{tiny_model.fingerprint}", tiny_model.fingerprint)
    loaded = SPRDiff.from_pretrained(f"{s3_bucket}/run/model", cache_dir=tmp_path / "cache")
    assert loaded.fingerprint == tiny_model.fingerprint


def test_a_pointer_to_other_weights_is_refused(tmp_path, tiny_model):
    tiny_model.save_pretrained(str(tmp_path / "weights"))
    write_pointer(str(tmp_path / "model"), str(tmp_path / "weights"), "0" * 64)
    with pytest.raises(ValueError, match="changed in place"):
        SPRDiff.from_pretrained(str(tmp_path / "model"))


def test_pointer_cycles_and_bad_pointers_are_refused(tmp_path, tiny_model):
    write_pointer(str(tmp_path / "a"), "../b", tiny_model.fingerprint)
    write_pointer(str(tmp_path / "b"), "../a", tiny_model.fingerprint)
    with pytest.raises(ValueError, match="a cycle"):
        SPRDiff.from_pretrained(str(tmp_path / "a"))
    with pytest.raises(ValueError, match="fingerprint"):
        write_pointer(str(tmp_path / "c"), "x", "not-hex")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / POINTER_NAME).write_text(json.dumps({"target": "x"}))
    with pytest.raises(ValueError, match="not a model pointer"):
        read_pointer(str(tmp_path / "d"))
