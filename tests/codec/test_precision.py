"""Precision of the neural stages: bf16 records decode in fp32 (and back); unknown or unsupported
precisions are refused before any work."""

from __future__ import annotations

import numpy as np
import pytest

from sprdiff import precision
from sprdiff.bitstream import read_header
from sprdiff.evaluation import psnr


def test_bf16_records_are_valid_records_of_the_same_model(tiny_model, sample_images):
    image = np.ascontiguousarray(sample_images["astronaut"][:128, :128])
    [fp32] = tiny_model.compress([image])
    [bf16] = tiny_model.compress([image], precision="bf16")
    assert read_header(bf16)[0].version == read_header(fp32)[0].version
    pixels = {(enc, dec): tiny_model.decompress([rec], precision=dec)[0]
              for enc, rec in (("fp32", fp32), ("bf16", bf16)) for dec in ("fp32", "bf16")}
    scores = {k: psnr(image, v) for k, v in pixels.items()}
    assert max(scores.values()) - min(scores.values()) < 1.0, scores  # the same code, rounded differently


def test_precisions_are_checked_before_any_work(tiny_model, sample_images):
    image = np.ascontiguousarray(sample_images["coffee"][:64, :64])
    with pytest.raises(ValueError, match="precision must be one of"):
        tiny_model.compress([image], precision="fp16")
    with pytest.raises(ValueError, match="precision must be one of"):
        tiny_model.decompress(tiny_model.compress([image]), precision="int8")
    assert precision.default_precision("cpu") == "fp32"
    assert precision.check_precision("bf16", "cpu") == "bf16"
