"""Rate points (sprdiff.rates): one model, several rates chosen per record; a byte budget per image."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from sprdiff import SPRDiff, bitstream
from sprdiff.bitstream import BitstreamError
from sprdiff.config import SPRDiffConfig
from sprdiff.encoder import EncodeSettings, code_latent
from sprdiff.rate_choice import budget_bytes
from sprdiff.rates import add_rate_points


@pytest.fixture(scope="module")
def model(rate_points_model_dir) -> SPRDiff:
    return SPRDiff.from_pretrained(str(rate_points_model_dir))


@pytest.fixture(scope="module")
def image(sample_images) -> np.ndarray:
    return np.ascontiguousarray(sample_images["coffee"][100:196, 200:328])  # 96 x 128


def test_saved_model_keeps_its_rates_and_fingerprint(model, rate_points_model_dir):
    saved = json.loads((rate_points_model_dir / "config.json").read_text())
    assert (saved["rates"], saved["rate_id"]) == (3, 1)
    assert model.rate_ids == (0, 1, 2)
    again = SPRDiff.from_pretrained(str(rate_points_model_dir))
    assert again.fingerprint == model.fingerprint
    assert torch.equal(again.rate_gains.log_gain, model.rate_gains.log_gain)


def test_one_rate_configs_are_saved_as_before():
    """Old models' config text (and so their fingerprints) must not change: ``rates`` is left out at 1."""
    config = SPRDiffConfig(model_id="m", latent_channels=8, entropy_groups=(4, 4))
    assert "rates" not in json.loads(config.to_json())
    assert SPRDiffConfig.from_json(config.to_json()) == config
    several = config.replace(rates=3, rate_id=2)
    assert json.loads(several.to_json())["rates"] == 3
    assert SPRDiffConfig.from_json(several.to_json()) == several
    with pytest.raises(ValueError, match="default rate"):
        config.replace(rates=3, rate_id=3)


def test_every_rate_round_trips_and_more_gain_means_more_bytes(model, image):
    records = [model.encode([image], EncodeSettings(rate=rate, side_information=False))[0] for rate in model.rate_ids]
    assert [r.header.rate_id for r in records] == [0, 1, 2]
    assert [bitstream.read_header(r.data)[0].rate_id for r in records] == [0, 1, 2]
    sizes = [r.num_bytes for r in records]
    assert sizes[0] < sizes[1] < sizes[2], sizes
    decoded = model.decompress([r.data for r in records])
    for rate, record, pixels in zip(model.rate_ids, records, decoded, strict=True):
        # what the decoder makes is what the encoder synthesised from its own Ŷ at that rate
        _, y_hat = code_latent(model, model.analysis(model.pad(image)), rate)
        with torch.no_grad():
            x_hat = model.synthesis(y_hat)[0][0]
        assert np.array_equal(pixels, model.output_pixels(x_hat, record.header))
    # the rate changes the picture: the inverse gains are applied by the record's rate id
    assert not np.array_equal(decoded[0], decoded[2])


def test_default_rate_is_the_configs(model, image):
    assert model.encode([image])[0].header.rate_id == model.config.rate_id == 1


def test_a_record_of_a_rate_the_model_lacks_is_refused(model, image):
    record = model.encode([image], EncodeSettings(rate=2, side_information=False))[0]
    header, strings = bitstream.unpack(record.data, model.fingerprint_bytes, num_strings=1)
    forged = bitstream.pack(replace(header, rate_id=5), strings, model.fingerprint_bytes)
    with pytest.raises(BitstreamError, match="rate 5") as caught:
        model.decompress([forged])
    assert caught.value.status == "model_mismatch"


@pytest.mark.parametrize("rate", [3, -1, "1", True])
def test_a_rate_the_model_lacks_is_refused_naming_its_rates(model, image, rate):
    with pytest.raises(ValueError, match="rates 0, 1, 2"):
        model.compress([image], rate=rate)


@pytest.mark.parametrize("target", [0, -0.01, math.nan, math.inf, "x"])
def test_a_target_that_is_not_a_positive_number_is_refused_naming_the_rates(model, image, target):
    with pytest.raises(ValueError, match="positive number.*rates 0, 1, 2"):
        model.compress([image], target_bpp=target)


def test_rate_and_target_together_are_refused():
    with pytest.raises(ValueError, match="not both"):
        EncodeSettings(rate=1, target_bpp=0.1)


def test_one_rate_models_code_at_their_one_rate(tiny_model, image):
    assert tiny_model.rate_ids == (tiny_model.config.rate_id,)
    assert tiny_model.compress([image], rate=tiny_model.config.rate_id) == tiny_model.compress([image])
    with pytest.raises(ValueError, match="rate 0"):
        tiny_model.compress([image], rate=1)


@pytest.mark.parametrize("side_information", [False, True])
def test_target_bpp_picks_the_largest_record_within_budget(model, image, side_information):
    h, w = image.shape[:2]
    bare = [model.encode([image], EncodeSettings(rate=r, side_information=False))[0].num_bytes
            for r in model.rate_ids]
    # budgets just below, at and above each rate's record, and between them
    budgets = sorted({b + d for b in bare for d in (-1, 0, 3)} | {(bare[0] + bare[1]) // 2})
    for budget in budgets:
        target = 8 * (budget + 0.5) / (w * h)  # budget_bytes(target) == budget
        assert budget_bytes(target, w, h) == budget
        record = model.encode([image], EncodeSettings(target_bpp=target, side_information=side_information))[0]
        fitting = [r for r, size in zip(model.rate_ids, bare, strict=True) if size <= budget]
        if fitting:
            assert record.num_bytes <= budget, (budget, record.num_bytes)
            assert record.header.rate_id == max(fitting, key=lambda r: bare[r])
        else:  # nothing fits: the rate with the fewest bytes, no side channels
            assert record.header.rate_id == min(model.rate_ids, key=lambda r: bare[r])
            assert record.num_bytes == min(bare) > budget
        assert model.decompress([record.data])[0].shape == image.shape


def test_add_rate_points_keeps_the_one_rate_operating_point(tiny_model, image):
    """Gain 1 at the default rate codes exactly as the one-rate model did (before training moves it)."""
    model = SPRDiff.from_pretrained("tiny")
    before = model.compress([image], colour_correction=False)[0]
    add_rate_points(model, [0.5, 1.0], default_rate=1)
    after = model.compress([image], colour_correction=False)[0]
    assert model.fingerprint != tiny_model.fingerprint  # a new model, whose records the old one refuses
    _, old_strings = bitstream.unpack(before, tiny_model.fingerprint_bytes, num_strings=1)
    _, new_strings = bitstream.unpack(after, model.fingerprint_bytes, num_strings=1)
    assert new_strings == old_strings
    assert len(model.compress([image], rate=0, colour_correction=False)[0]) < len(after)
    with pytest.raises(ValueError, match="already has"):
        add_rate_points(model, [0.5, 1.0], default_rate=0)
