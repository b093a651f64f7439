"""The content-addressed model store (sprdiff.model_store): store once, resolve by fingerprint."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from sprdiff import SPRDiff
from sprdiff.config import WEIGHTS_NAME
from sprdiff.model_card import read_model_card
from sprdiff.model_store import (
    ModelCache,
    ModelNotFoundError,
    directory_fingerprint,
    fingerprint_digest,
    is_stored,
    locate_model,
    resolve_model,
    store_model,
    store_model_source,
)
from sprdiff.weight_layout import all_tensors, copies_in


@pytest.fixture(scope="module")
def other_model(tiny_model):
    """A second model: the tiny one with one weight changed (another fingerprint)."""
    model = SPRDiff.from_pretrained("tiny")
    with torch.no_grad():
        model.semantic_projection.bias.add_(0.25)
    model.invalidate_fingerprint()
    assert model.fingerprint != tiny_model.fingerprint
    return model


def test_a_saved_directory_has_the_loaded_models_fingerprint(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "m")
    assert directory_fingerprint(tmp_path / "m") == tiny_model.fingerprint


def test_a_file_with_a_dtype_numpy_lacks_is_hashed_as_torch_reads_it(tiny_model, tmp_path):
    """bfloat16 has no numpy dtype: such files take the torch path, and hash the bytes torch reads."""
    tiny_model.save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / WEIGHTS_NAME
    with safe_open(str(weights), framework="pt") as f:
        state, metadata = {name: f.get_tensor(name) for name in f.keys()}, f.metadata()
    name = next(n for n, t in sorted(state.items()) if t.is_floating_point() and t.numel() > 1)
    state[name] = state[name].to(torch.bfloat16)
    save_file(state, str(weights), metadata=metadata)
    with safe_open(str(weights), framework="pt") as f:
        tensors = list(all_tensors(list(f.keys()), copies_in(f.metadata()), f.get_tensor))
    expected = fingerprint_digest(tiny_model.config.to_json(), tensors).hex()
    assert directory_fingerprint(tmp_path / "m") == expected != tiny_model.fingerprint


def test_store_once_then_resolve_after_the_source_is_gone(other_model, tmp_path):
    source = tmp_path / "run" / "model"
    other_model.save_pretrained(source)
    store = tmp_path / "store"
    fingerprint, stored = store_model_source(str(source), str(store))
    assert fingerprint == other_model.fingerprint and stored == f"{store}/{fingerprint}"
    assert sorted(p.name for p in (store / fingerprint).iterdir()) == ["README.md", "config.json",
                                                                      "model.safetensors"]
    assert read_model_card(stored).fingerprint == fingerprint
    weights = store / fingerprint / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert store_model(other_model, str(store)) == stored  # idempotent: nothing rewritten
    assert weights.stat().st_mtime_ns == before
    assert [p.name for p in store.iterdir()] == [fingerprint]  # no temporary directory left
    shutil.rmtree(tmp_path / "run")
    model = resolve_model(fingerprint, [str(tmp_path / "elsewhere"), str(store)])
    assert model.fingerprint == fingerprint


def test_a_missing_fingerprint_names_itself_and_every_place_looked(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "a-model")
    fingerprint = "ab" * 32
    places = [str(tmp_path / "store"), str(tmp_path / "a-model"), "demo"]
    with pytest.raises(ModelNotFoundError) as caught:
        locate_model(fingerprint, places)
    message = str(caught.value)
    assert fingerprint in message
    assert f"{tmp_path / 'store'}/{fingerprint}/ (absent)" in message
    assert f"{tmp_path / 'a-model'} (a model directory with fingerprint {tiny_model.fingerprint[:16]}" in message
    assert "demo (the shipped model" in message
    assert isinstance(caught.value, FileNotFoundError)
    assert locate_model(tiny_model.fingerprint, places).source == str(tmp_path / "a-model")
    assert locate_model(tiny_model.fingerprint, ["tiny"]).source == "tiny"


def test_weights_changed_in_the_store_are_refused(other_model, tmp_path):
    stored = store_model(other_model, str(tmp_path / "store"))
    weights = f"{stored}/model.safetensors"
    data = bytearray(open(weights, "rb").read())
    data[-3] ^= 0x10  # inside the last tensor's bytes: still loads, other values
    open(weights, "wb").write(bytes(data))
    with pytest.raises(ValueError, match="changed after they were stored"):
        resolve_model(other_model.fingerprint, [str(tmp_path / "store")])


def test_an_object_store_copy_counts_only_once_its_card_is_written(other_model, s3_bucket):
    import s3fs

    store = f"{s3_bucket}/models"
    stored = store_model(other_model, store)
    assert stored == f"{store}/{other_model.fingerprint}" and is_stored(other_model.fingerprint, store)
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.rm(f"{stored}/README.md")  # what an upload cut short before its last object leaves
    assert not is_stored(other_model.fingerprint, store)
    with pytest.raises(ModelNotFoundError):
        locate_model(other_model.fingerprint, [store])
    store_model(other_model, store)  # completes it
    assert resolve_model(other_model.fingerprint, [store]).fingerprint == other_model.fingerprint


def test_the_cache_loads_each_model_once_and_stays_bounded(tiny_model, other_model, tmp_path):
    store = str(tmp_path / "store")
    store_model(tiny_model, store)
    store_model(other_model, store)
    cache = ModelCache([store], max_models=1)
    for fingerprint in [tiny_model.fingerprint] * 3:
        assert cache.get(fingerprint).fingerprint == fingerprint
    assert cache.loads == 1
    cache.get(other_model.fingerprint)
    assert cache.loads == 2 and len(cache._models) == 1
    missing = "cd" * 32
    for _ in range(2):
        with pytest.raises(ModelNotFoundError, match=missing):
            cache.get(missing)
