"""The per-image offset grid: fitted by least squares, entropy-coded losslessly, added by the decoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from compressai.entropy_models import GaussianConditional
from compressai.models.google import get_scale_table

from sprdiff import offset_grid, side_channels
from sprdiff.bitstream import MAX_GRID_SIDE, RecordHeader
from sprdiff.evaluation import psnr


def _uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)


def _smooth_field(height: int, width: int) -> np.ndarray:
    """(H, W, 3) low-frequency offsets of up to ~0.1: a blob and a colour ramp."""
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    blob = 0.1 * np.exp(-((x - 0.4) ** 2 + (y - 0.3) ** 2) / 0.05)
    return np.stack([blob, -0.05 * x, blob - 0.04 * y], axis=-1)


def test_the_fit_and_the_decoder_share_one_interpolation():
    grid = torch.randn(3, 5, 7, dtype=torch.float64)
    rows, cols = offset_grid.interpolation_matrix(37, 5).numpy(), offset_grid.interpolation_matrix(53, 7).numpy()
    by_matrices = np.stack([rows @ g @ cols.T for g in grid.numpy()])
    np.testing.assert_allclose(offset_grid.upsample(grid, 37, 53).numpy(), by_matrices, atol=1e-12)
    np.testing.assert_allclose(rows.sum(axis=1), 1.0)  # each pixel: a weighted mean of nodes


@pytest.mark.parametrize("values", [
    np.zeros((3, 2, 3), dtype=np.int64),
    np.array([[[0, 1, -1], [2, -3, 0]], [[7, 0, 0], [0, 0, -7]], [[0, 0, 0], [0, 0, 1]]]),
    np.random.default_rng(0).integers(-400, 400, size=(3, 8, 12)),  # far past the Gaussian's range: escape codes
])
def test_values_survive_the_entropy_coder_exactly(values):
    coded = offset_grid.encode_values(values)
    assert (coded.rows, coded.cols) == values.shape[1:]
    np.testing.assert_array_equal(offset_grid.decode_values(coded), values)


def test_small_values_cost_few_bytes():
    values = np.random.default_rng(1).integers(-2, 3, size=(3, 8, 12))
    coded = offset_grid.encode_values(values)
    print(f"288 values in -2..2: {len(coded.string)} bytes")
    assert len(coded.string) < 288 * 3 / 8  # under 3 bits a value; log2(5) = 2.3


def test_grid_shapes_follow_the_image():
    assert offset_grid.grid_shape(600, 900, 4) == (4, 6)
    assert offset_grid.grid_shape(900, 600, 4) == (6, 4)
    assert offset_grid.grid_shape(63, 900, 4) is None  # cells under MIN_CELL_PIXELS
    assert offset_grid.grid_shape(64, 100_000, 4)[1] == MAX_GRID_SIDE


def _tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float64)).permute(2, 0, 1)


def _choose(decoded: np.ndarray, original: np.ndarray, latent_bytes: int) -> RecordHeader:
    header = RecordHeader(width=decoded.shape[1], height=decoded.shape[0], timestep=999, rate_id=0,
                          fingerprint_tag=0)
    chosen, _ = side_channels.choose(_tensor(decoded), _tensor(original), header, [latent_bytes],
                                     channels=[side_channels.OffsetGrid()])
    return chosen


def test_the_stored_cdf_tables_are_what_compressai_computes_for_its_scale_table():
    """Provenance of the stored tables: CompressAI 1.2.8's own, which every version-3 record used.
    Decoding reads the stored copy; a future CompressAI computing others would not change it."""
    coder = GaussianConditional(None)
    coder.update_scale_table(get_scale_table())
    assert offset_grid.tables_digest(coder._quantized_cdf.numpy(), coder._cdf_length.numpy(),
                                     coder._offset.numpy()) == offset_grid.TABLES_SHA256


def test_a_smooth_colour_error_is_undone_and_worth_its_bytes(sample_images):
    image = np.ascontiguousarray(sample_images["coffee"][:240, :320])
    original = image.astype(np.float64) / 255
    decoded = _uint8(original - _smooth_field(240, 320)).astype(np.float64) / 255
    before = psnr(image, _uint8(decoded))
    header, corrected = side_channels.choose(_tensor(decoded), _tensor(original),
                                             RecordHeader(320, 240, 999, 0, 0), [2000], [side_channels.OffsetGrid()])
    assert header.offset_grid is not None
    after = psnr(image, _uint8(corrected.permute(1, 2, 0).numpy()))
    assert after > before + 8, (before, after)

    # the decoder's own path gives what the encoder predicted
    decoder_side = offset_grid.apply_offsets(_tensor(decoded), header.offset_grid)
    torch.testing.assert_close(decoder_side, corrected, atol=1e-9, rtol=0)


def test_no_grid_when_nothing_is_gained_or_the_record_cannot_afford_it(sample_images):
    original = np.ascontiguousarray(sample_images["coffee"][:240, :320]).astype(np.float64) / 255
    assert _choose(original, original, 2000).offset_grid is None
    noisy = np.clip(original + np.random.default_rng(2).normal(0, 0.05, original.shape), 0, 1)  # white noise only
    assert _choose(noisy, original, 2000).offset_grid is None
    # noise and a 2.5-level shift: removing the shift gains ~0.2 dB, worth ~10 bytes on a photo's record,
    # not on a 20-byte one
    shifted = np.clip(noisy - 0.01, 0, 1)
    assert _choose(shifted, original, 2000).offset_grid is not None
    assert _choose(shifted, original, 20).offset_grid is None


def test_grids_fit_in_batches_on_the_residual_device():
    residual = torch.randn(2, 3, 48, 80, dtype=torch.float64)
    grids = offset_grid.fit_offsets(residual, 3, 5)
    assert grids.shape == (2, 3, 3, 5)
    torch.testing.assert_close(grids[1], offset_grid.fit_offsets(residual[1], 3, 5))


def test_the_error_left_by_a_grid_is_computed_on_the_grid_exactly():
    rng = np.random.default_rng(3)
    residual = torch.from_numpy(rng.normal(0, 0.05, (3, 70, 90)))
    values = torch.from_numpy(rng.integers(-5, 6, (3, 4, 6)))
    upsampled = offset_grid.offset_image(values, 70, 90)
    assert offset_grid.residual_after(residual, values) == pytest.approx(float(((residual - upsampled) ** 2).mean()),
                                                                         rel=1e-10)
