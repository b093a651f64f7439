"""Identical entropy tables are stored once in model.safetensors; files that store each copy still load."""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.torch import save_file

from sprdiff import SPRDiff
from sprdiff.config import CONFIG_NAME, WEIGHTS_NAME
from sprdiff.model_store import directory_fingerprint
from sprdiff.presets import SHIPPED_MODELS
from sprdiff.weight_layout import SHARED_TABLES_KEY

OLD_DEMO = "demo-2026-12-03"  # the demo shipped before rate points, saved before tables were stored once


def stored(path):
    with safe_open(str(path / WEIGHTS_NAME), framework="pt") as f:
        return set(f.keys()), f.metadata()


def save_every_table(model: SPRDiff, directory) -> None:
    """How model directories were written before tables were shared: the whole state dict."""
    directory.mkdir(parents=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_NAME), metadata={"format": "pt", "fingerprint": model.fingerprint})
    (directory / CONFIG_NAME).write_text(model.config.to_json() + "\n")


def test_each_distinct_table_is_stored_once_and_loads_back_as_every_copy(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "m")
    names, metadata = stored(tmp_path / "m")
    copies = json.loads(metadata[SHARED_TABLES_KEY])
    state = tiny_model.state_dict()
    cdfs = [n for n in state if n.endswith("gaussian_conditional._quantized_cdf")]
    assert len(cdfs) == len(tiny_model.config.entropy_groups) >= 4
    assert sum(n in names for n in cdfs) == 1 and all(n in copies for n in cdfs if n not in names)
    assert set(names) | set(copies) == set(state) and not set(names) & set(copies)
    assert all(n.endswith(("._quantized_cdf", "._offset", "._cdf_length", ".scale_table")) for n in copies)

    loaded = SPRDiff.from_pretrained(str(tmp_path / "m"))
    assert loaded.fingerprint == tiny_model.fingerprint == directory_fingerprint(tmp_path / "m")
    for name, tensor in loaded.state_dict().items():
        assert tensor.dtype == state[name].dtype and bool((tensor == state[name]).all()), name
    copy, source = next(iter(copies.items()))
    entropy_state = loaded.state_dict()
    assert entropy_state[copy].data_ptr() != entropy_state[source].data_ptr()  # copies, not aliases


def test_a_model_saved_with_every_table_loads_with_its_fingerprint_and_codes_the_same(tiny_model, tmp_path,
                                                                                     sample_images):
    save_every_table(tiny_model, tmp_path / "old")
    tiny_model.save_pretrained(tmp_path / "new")
    names, metadata = stored(tmp_path / "old")
    assert SHARED_TABLES_KEY not in metadata and len(names) == len(tiny_model.state_dict())
    assert (tmp_path / "new" / WEIGHTS_NAME).stat().st_size < (tmp_path / "old" / WEIGHTS_NAME).stat().st_size
    old, new = SPRDiff.from_pretrained(str(tmp_path / "old")), SPRDiff.from_pretrained(str(tmp_path / "new"))
    assert old.fingerprint == new.fingerprint == tiny_model.fingerprint == directory_fingerprint(tmp_path / "old")
    image = sample_images["astronaut"][:64, :96]
    [record] = old.compress([image])
    assert new.compress([image]) == [record]
    assert np.array_equal(new.decompress([record])[0], old.decompress([record])[0])


def test_the_old_shipped_demo_keeps_its_fingerprint_resaved_and_shrinks_by_its_copies(tmp_path):
    demo = SPRDiff.from_pretrained(OLD_DEMO)  # saved in the old layout: every table stored
    _, metadata = stored(SHIPPED_MODELS[OLD_DEMO])
    assert SHARED_TABLES_KEY not in metadata
    assert demo.fingerprint == metadata["fingerprint"] == directory_fingerprint(SHIPPED_MODELS[OLD_DEMO])
    demo.save_pretrained(tmp_path / "demo")
    before = (SHIPPED_MODELS[OLD_DEMO] / WEIGHTS_NAME).stat().st_size
    after = (tmp_path / "demo" / WEIGHTS_NAME).stat().st_size
    assert before - after > 3_000_000  # four of the five Gaussian tables (0.8 MB each)
    assert SPRDiff.from_pretrained(str(tmp_path / "demo")).fingerprint == demo.fingerprint
    assert directory_fingerprint(tmp_path / "demo") == demo.fingerprint


def test_a_copy_of_a_missing_table_is_a_clear_error(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "m")
    path = tmp_path / "m" / WEIGHTS_NAME
    from safetensors.torch import load_file

    state = load_file(str(path))
    names, metadata = stored(tmp_path / "m")
    copies = json.loads(metadata[SHARED_TABLES_KEY])
    source = next(iter(copies.values()))
    del state[source]
    save_file(state, str(path), metadata=metadata)
    with pytest.raises(ValueError, match="does not hold"):
        SPRDiff.from_pretrained(str(tmp_path / "m"))
