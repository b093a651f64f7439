"""The PSNR breakdown decodes the real record and measures each stage on the image's own pixels."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from sprdiff.evaluation import psnr
from sprdiff.evaluation.breakdown import STAGES, reconstruction_breakdown

REPO = Path(__file__).resolve().parents[2]


def test_breakdown_measures_what_decompress_returns(tiny_model, sample_images):
    image = np.ascontiguousarray(sample_images["chelsea"][:70, :93])  # not a multiple of the padding
    result = reconstruction_breakdown(tiny_model, image)

    assert set(result) == {"bpp", *STAGES}
    record = tiny_model.compress([image])[0]
    assert result["bpp"] == 8 * len(record) / (70 * 93)
    assert result["x_hat"] == psnr(image, tiny_model.decompress([record])[0])
    assert all(np.isfinite(v) for v in result.values())
    assert len({round(result[name], 6) for name in STAGES}) == len(STAGES), "each stage is measured on its own output"
    assert result["x_hat"] > result["x_hat_uncorrected"]  # the record's colour map helps the random tiny model
    # the least-squares fit includes the identity: up to the grid's rounding, never below the plain round trip
    assert result["vae_round_trip_mapped"] > result["vae_round_trip"]


def test_breakdown_script_prints_each_image_and_the_mean(tmp_path, sample_images):
    path = tmp_path / "coffee.png"
    Image.fromarray(sample_images["coffee"][:64, :96]).save(path)
    out = subprocess.run([sys.executable, str(REPO / "scripts/psnr_breakdown.py"), "tiny", str(path)],
                         capture_output=True, text=True, check=True).stdout
    lines = [line.split() for line in out.splitlines() if not line.startswith("#")]
    header, row, mean = lines
    assert header == ["image", "bpp", *STAGES]
    assert row[0] == "coffee.png" and len(row) == len(header)
    assert row[1:] == mean[1:]  # one image: its row is the mean
