"""Side channels: one interface (fit, apply, cost), one keep-or-drop rule, applied in one loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sprdiff import bitstream, side_channels
from sprdiff.bitstream import RecordHeader
from sprdiff.side_channels import SIDE_CHANNELS, choose, net_gain_db


def test_a_channel_is_kept_only_when_its_gain_pays_for_its_bytes():
    gain = (100.0, 60.0)  # +2.2 dB
    assert net_gain_db(*gain, record_bytes=2000, extra_bytes=20) > 0
    assert net_gain_db(*gain, record_bytes=20, extra_bytes=20) < 0  # doubling the record: needs 3 dB
    assert net_gain_db(100.0, 99.9, record_bytes=2000, extra_bytes=20) < 0  # 0.004 dB
    assert net_gain_db(100.0, 100.0, record_bytes=2000, extra_bytes=20) == -math.inf
    assert net_gain_db(100.0, 0.0, record_bytes=20, extra_bytes=20) == math.inf


def test_cost_is_the_records_own_size_rule():
    header = RecordHeader(width=320, height=240, timestep=999, rate_id=0, fingerprint_tag=0)
    colour_map = (1, -2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 5)
    fp = bytes(32)
    plain = bitstream.pack(header, [b"x" * 900], fp)
    with_map = bitstream.pack(bitstream.replace(header, colour_map=colour_map), [b"x" * 900], fp)
    assert side_channels.cost(SIDE_CHANNELS[0], header, [900], colour_map) == len(with_map) - len(plain)


def test_choose_runs_the_channels_in_order_each_on_what_the_last_left(sample_images):
    image = np.ascontiguousarray(sample_images["astronaut"][:128, :192]).astype(np.float64) / 255
    original = torch.from_numpy(image).permute(2, 0, 1)
    y, x = torch.meshgrid(torch.linspace(0, 1, 128, dtype=torch.float64),
                          torch.linspace(0, 1, 192, dtype=torch.float64), indexing="ij")
    # a global colour cast (the map's job) plus a smooth blob (the grid's)
    decoded = (0.8 * original + 0.05 - 0.08 * torch.exp(-((x - 0.3) ** 2 + (y - 0.6) ** 2) / 0.02)).clamp(0, 1)
    header = RecordHeader(width=192, height=128, timestep=999, rate_id=0, fingerprint_tag=0)
    chosen, corrected = choose(decoded, original, header, [3000])
    assert chosen.colour_map is not None and chosen.offset_grid is not None
    # the decoder's side, applied to the same decoded image, gives what the encoder predicted
    torch.testing.assert_close(side_channels.apply_all(decoded, chosen), corrected, atol=1e-9, rtol=0)
    mse = float(torch.mean((corrected - original) ** 2))
    assert mse < 0.25 * float(torch.mean((decoded - original) ** 2))
    assert choose(original, original, header, [3000])[0] == header  # nothing to gain: nothing sent


def test_fits_band_by_band_match_the_whole_image_arithmetic(sample_images, monkeypatch):
    """Large photos are fitted a band of rows at a time (bounded float64 memory); the choice, the
    errors and the corrected image must not depend on the band height."""
    from sprdiff import bands

    image = np.ascontiguousarray(sample_images["astronaut"][:160, :224]).astype(np.float32) / 255
    original = torch.from_numpy(image).permute(2, 0, 1)
    y, x = torch.meshgrid(torch.linspace(0, 1, 160), torch.linspace(0, 1, 224), indexing="ij")
    decoded = (0.85 * original + 0.04 - 0.06 * torch.exp(-((x - 0.6) ** 2 + (y - 0.3) ** 2) / 0.03)).clamp(0, 1)
    header = RecordHeader(width=224, height=160, timestep=999, rate_id=0, fingerprint_tag=0)
    whole_header, whole = choose(decoded, original, header, [3000])
    assert len(bands.row_bands(160, 224)) == 1
    monkeypatch.setattr(bands, "BAND_PIXELS", 224 * 7)  # 23 bands, the last one shorter
    assert len(bands.row_bands(160, 224)) == 23
    banded_header, banded = choose(decoded, original, header, [3000])
    assert banded_header == whole_header and whole_header.colour_map is not None
    assert whole_header.offset_grid is not None
    torch.testing.assert_close(banded, whole, atol=1e-12, rtol=0)
    assert bands.mean_square_error(decoded, original) == pytest.approx(
        float(torch.mean((decoded.double() - original.double()) ** 2)), rel=1e-12)
