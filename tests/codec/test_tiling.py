"""Tiling (sprdiff.tiling): exact crops for the convolution stacks, close blends for the VAE and
UNet, records that decode whatever tile size either side used, and the untiled path untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sprdiff import tiling
from sprdiff.evaluation import psnr

TILE = 128  # px: the smallest allowed, so a 256x192 image is cut into several tiles on every grid


@pytest.fixture(scope="module")
def photo(sample_images) -> np.ndarray:
    return np.ascontiguousarray(sample_images["astronaut"][100:292, 120:376])  # 192x256, no padding


def test_crop_tiling_of_the_convolution_stacks_is_exact(tiny_model, photo):
    """Margins cover the receptive fields of g_a, g_s and P: the kept cores equal the whole-image
    output up to float rounding (a margin too small would differ by ~1e-2 here)."""
    m = tiny_model
    x = m.pad(photo)
    y = torch.randn(1, m.config.latent_channels, x.shape[2] // 16, x.shape[3] // 16, generator=torch.Generator()
                    .manual_seed(0))
    with torch.inference_mode():
        cases = [(m.distortion.g_a, x, TILE, tiling.G_A_MARGIN, (1, 16)),
                 (m.distortion.g_s, m.transform(y), TILE // 16, tiling.G_S_MARGIN, (16, 1)),
                 (m.projector, x * 2 - 1, TILE, tiling.PROJECTOR_MARGIN, (1, 8))]
        for fn, inp, core, margin, scale in cases:
            whole, tiled = fn(inp), tiling.crop_tiled(fn, inp, core, margin, scale)
            assert tiled.shape == whole.shape
            assert (tiled - whole).abs().max() < 1e-5 * max(1.0, whole.abs().max().item())


def test_blend_weights_reproduce_a_pointwise_function_exactly():
    x = torch.randn(2, 4, 40, 24)
    out = tiling.blend_tiled(lambda t: t * 3 - 1, x, tile=16, overlap=8)
    assert torch.allclose(out, x * 3 - 1, atol=1e-6)


def test_images_within_one_tile_take_the_untiled_path_bit_for_bit(tiny_model, photo):
    m = tiny_model
    fingerprint = m.fingerprint
    image = np.ascontiguousarray(photo[:128, :128])
    assert m.compress([image], tile_size=TILE) == m.compress([image], tile_size=None)
    [record] = m.compress([image], colour_correction=False)
    assert np.array_equal(m.decompress([record], tile_size=TILE)[0], m.decompress([record], tile_size=None)[0])
    m.invalidate_fingerprint()
    assert m.fingerprint == fingerprint  # tiling settings live outside the config and the weights
    assert not m.vae.use_tiling  # diffusers' switch is restored after each call


@pytest.fixture(scope="module")
def demo_model():
    from sprdiff import SPRDiff

    return SPRDiff.from_pretrained("demo")  # shipped in the package: trained weights, nothing downloaded


@pytest.mark.parametrize("model_name,min_agreement_db", [("tiny", 17), ("demo", 30)])
def test_tiled_and_untiled_agree_and_records_decode_either_way(request, photo, model_name, min_agreement_db):
    """PSNR of the tiled against the untiled decode of one record, at 128 px tiles on 256x192:
    measured 20.0 dB with the random-weight ``tiny`` (its GroupNorm statistics swing from tile to
    tile) and 31.7 dB with the trained ``demo``; a misplaced or unblended tile gives far less.
    Records encoded tiled and untiled both decode with either setting, to the same quality."""
    m = request.getfixturevalue(f"{model_name}_model")
    records = {tile: m.compress([photo], colour_correction=False, tile_size=tile)[0] for tile in (None, TILE)}
    decoded = {(enc, dec): m.decompress([records[enc]], tile_size=dec)[0]
               for enc in (None, TILE) for dec in (None, TILE)}
    for image in decoded.values():
        assert image.shape == photo.shape and image.dtype == np.uint8
    for enc in (None, TILE):
        assert psnr(decoded[(enc, None)], decoded[(enc, TILE)]) >= min_agreement_db
    quality = {key: psnr(photo, image) for key, image in decoded.items()}
    assert max(quality.values()) - min(quality.values()) < 1.0, quality


def test_tile_size_is_checked_before_any_work(tiny_model, photo):
    with pytest.raises(ValueError, match="multiple of 64"):
        tiny_model.compress([photo], tile_size=100)
    with pytest.raises(ValueError, match="multiple of 64"):
        tiny_model.decompress([b"not read"], tile_size=64)
