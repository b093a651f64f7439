"""Classical baselines at matched bytes: never over budget, real files, honest failures."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from sprdiff.evaluation import metrics
from sprdiff.evaluation.baselines import CODECS, encode_at_budget, scaled_size, varint_length

SCALES = (1.0, 1 / 2, 1 / 4, 1 / 8)


@pytest.mark.parametrize("codec", sorted(CODECS))
@pytest.mark.parametrize("budget", [700, 2500, 9000])
def test_baseline_never_exceeds_the_budget_and_its_file_is_real(small_images, codec, budget):
    if CODECS[codec].available():
        pytest.skip(CODECS[codec].available())
    image = small_images["astronaut.png"]
    found = encode_at_budget(image, codec, budget, SCALES)
    assert found.status == "ok", found.message
    assert found.num_bytes <= budget
    downscaled = found.coded_size != (image.shape[1], image.shape[0])
    expected_side = varint_length(image.shape[1]) + varint_length(image.shape[0]) if downscaled else 0
    assert found.num_bytes == len(found.data) + expected_side
    with Image.open(io.BytesIO(found.data)) as decoded:  # the bytes are a file any decoder reads
        assert decoded.format == CODECS[codec].pil_format
        assert decoded.size == found.coded_size == scaled_size(image.shape[1], image.shape[0], found.scale)
    assert found.reconstruction.shape == image.shape
    assert CODECS[codec].quality_min <= found.quality <= CODECS[codec].quality_max


def test_more_bytes_buy_at_least_as_much_quality(small_images):
    image = small_images["astronaut.png"]
    low = encode_at_budget(image, "jpeg", 1500, SCALES)
    high = encode_at_budget(image, "jpeg", 12000, SCALES)
    assert metrics.psnr(image, high.reconstruction) > metrics.psnr(image, low.reconstruction)


def test_search_picks_the_highest_quality_that_fits(small_images):
    image = small_images["coffee.png"]
    found = encode_at_budget(image, "webp", 4000, (1.0,))
    assert found.scale == 1.0 and found.side_info_bytes == 0
    next_quality = CODECS["webp"].encode(Image.fromarray(image), found.quality + 1)
    assert len(next_quality) > 4000 or found.quality == CODECS["webp"].quality_max


def test_a_budget_no_setting_can_meet_is_reported_not_exceeded(small_images):
    found = encode_at_budget(small_images["astronaut.png"], "jpeg", 60, SCALES)
    assert found.status == "cannot_meet_budget"
    assert found.data == b"" and found.reconstruction is None
    assert "60 bytes" in found.message


def test_varint_length():
    assert [varint_length(v) for v in (0, 127, 128, 16383, 16384)] == [1, 1, 2, 2, 3]


def test_scales_must_be_fractions_of_the_image():
    with pytest.raises(ValueError):
        encode_at_budget(np.zeros((32, 32, 3), np.uint8), "jpeg", 1000, (2.0,))
