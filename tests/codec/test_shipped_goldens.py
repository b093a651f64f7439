"""Records written by every model that ever shipped in the package keep decoding to the same pixels.

Each retrain of ``demo`` ships a new ``demo`` and keeps the one it replaces under a dated name
(``sprdiff.presets.SHIPPED_MODELS``), so the records it wrote still decode. ``golden/shipped/``
holds records each shipped model wrote (a crop of skimage's astronaut at each of its rates, side
channels on, as ``sprdiff encode`` writes them) with the PNG they decoded to. ``sprdiff decode``
without ``--model`` must find each record's model by its fingerprint among the shipped ones and
decode it to that PNG (max |Δ| ≤ 1, at least 99 % of pixels exact, as for ``test_golden.py``).

When a new model ships, add its goldens with
``SPRDIFF_ADD_GOLDEN=1 .venv/bin/python -m pytest tests/codec/test_shipped_goldens.py``: that writes
goldens for shipped models that have none and never touches existing ones.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from golden_pixels import assert_same_pixels
from PIL import Image

from sprdiff.bitstream import read_header
from sprdiff.images import encode_png
from sprdiff.model_store import directory_fingerprint
from sprdiff.presets import SHIPPED_MODELS

SHIPPED = Path(__file__).parent / "golden" / "shipped"
INDEX = SHIPPED / "index.json"
CROP = ("astronaut", slice(40, 241), slice(150, 413))  # 201x263: odd sides (padded), big enough for side channels
SPRDIFF = shutil.which("sprdiff", path=str(Path(sys.executable).parent))


def _index() -> dict:
    return json.loads(INDEX.read_text()) if INDEX.exists() else {}


@pytest.fixture(scope="module", autouse=True)
def add_missing_goldens(sample_images):
    if os.environ.get("SPRDIFF_ADD_GOLDEN") != "1":
        return
    from sprdiff import SPRDiff

    index = _index()
    covered = {entry["model_fingerprint"] for entry in index.values()}
    image, rows, cols = CROP
    crop = np.ascontiguousarray(sample_images[image][rows, cols])
    for name, path in SHIPPED_MODELS.items():
        if directory_fingerprint(path) in covered:  # hashes the files; loads only the models to write
            continue
        model = SPRDiff.from_pretrained(name)
        for rate in model.rate_ids:
            golden = f"{model.fingerprint[:12]}-{image}-{crop.shape[0]}x{crop.shape[1]}-rate{rate}"
            [record] = model.compress([crop], rate=rate)
            [pixels] = model.decompress([record])
            SHIPPED.mkdir(parents=True, exist_ok=True)
            (SHIPPED / f"{golden}.sprd").write_bytes(record)
            (SHIPPED / f"{golden}.png").write_bytes(encode_png(pixels))
            index[golden] = {"model_name_when_written": name, "model_fingerprint": model.fingerprint, "rate_id": rate,
                             "num_bytes": len(record), "sha256": hashlib.sha256(record).hexdigest()}
    INDEX.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def test_every_shipped_model_has_goldens():
    covered = {entry["model_fingerprint"] for entry in _index().values()}
    missing = [name for name, path in SHIPPED_MODELS.items() if directory_fingerprint(path) not in covered]
    assert not missing, f"shipped models without goldens: {missing} (add them with SPRDIFF_ADD_GOLDEN=1)"


def test_shipped_goldens_are_unchanged_and_name_their_rate():
    index = _index()
    assert index, f"no shipped goldens in {SHIPPED}"
    for golden, entry in index.items():
        record = (SHIPPED / f"{golden}.sprd").read_bytes()
        assert hashlib.sha256(record).hexdigest() == entry["sha256"], f"{golden} changed: never rewrite a golden"
        header, _ = read_header(record)
        assert header.rate_id == entry["rate_id"]
        assert header.fingerprint_tag == int(entry["model_fingerprint"][:2], 16)


def test_sprdiff_decode_finds_each_records_shipped_model_and_gives_its_pixels(tmp_path):
    assert SPRDIFF, "the sprdiff console script is not installed in this environment (bash scripts/setup.sh)"
    index = _index()
    records = [str(SHIPPED / f"{golden}.sprd") for golden in sorted(index)]
    result = subprocess.run([SPRDIFF, "decode", *records, "-o", str(tmp_path)], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    for golden in sorted(index):
        pixels = np.asarray(Image.open(tmp_path / f"{golden}.png").convert("RGB"))
        expected = np.asarray(Image.open(SHIPPED / f"{golden}.png").convert("RGB"))
        assert_same_pixels(golden, pixels, expected)
