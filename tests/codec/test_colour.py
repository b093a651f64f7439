"""The per-image colour map: fitted by least squares, sent on a 1/128 grid, applied by the decoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sprdiff import colour
from sprdiff.evaluation import psnr


def _uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)


def _tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image.astype(np.float64) / 255).permute(2, 0, 1)


def _through(image: np.ndarray, colour_map: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(image.astype(np.float64) / 255).permute(2, 0, 1)
    return colour.apply_colour_map(x, colour_map).permute(1, 2, 0).numpy()


def test_a_known_colour_shift_is_undone_through_the_record_grid(sample_images):
    image = np.ascontiguousarray(sample_images["coffee"][:80, :120])
    greyer = np.array([[0.7, 0.2, 0.1, 0.05], [0.15, 0.6, 0.15, 0.1], [0.1, 0.1, 0.8, 0.0]])
    shifted = _uint8(_through(image, greyer))
    assert psnr(image, shifted) < 25
    fitted = colour.fit_colour_map(_tensor(shifted), _tensor(image)).numpy()
    # the same least squares as numpy's solver
    design = np.concatenate([shifted.reshape(-1, 3) / 255, np.ones((shifted[..., 0].size, 1))], axis=1)
    np.testing.assert_allclose(fitted, np.linalg.lstsq(design, image.reshape(-1, 3) / 255, rcond=None)[0].T,
                               atol=1e-9)
    sent = colour.dequantize_colour_map(colour.quantize_colour_map(fitted))
    assert np.abs(sent - fitted).max() <= 0.5 / colour.COLOUR_MAP_SCALE + 1e-12
    assert psnr(image, _uint8(_through(shifted, sent))) > 38  # what is left: 8-bit rounding of `shifted`, the grid

    # the encoder's candidate: the record's integers, and the image the decoder will see
    [values] = colour.candidate_maps(_tensor(shifted), _tensor(image))
    assert values == colour.quantize_colour_map(fitted)
    corrected = colour.apply_colour_map(_tensor(shifted), colour.dequantize_colour_map(values))
    assert psnr(image, _uint8(corrected.permute(1, 2, 0).numpy())) > 38


def test_maps_fit_in_batches_and_flat_images_get_a_finite_map(sample_images):
    images = [np.ascontiguousarray(sample_images[n][:40, :60]) for n in ("coffee", "astronaut")]
    decoded = torch.stack([_tensor(i) * 0.8 + 0.05 for i in images])
    maps = colour.fit_colour_map(decoded, torch.stack([_tensor(i) for i in images]))
    assert maps.shape == (2, 3, 4)
    for k in range(2):
        torch.testing.assert_close(maps[k], colour.fit_colour_map(decoded[k], _tensor(images[k])))
    flat = torch.full((3, 8, 8), 0.5, dtype=torch.float64)
    assert torch.isfinite(colour.fit_colour_map(flat, flat)).all()


def test_identity_is_all_zeros_and_the_integers_keep_their_order():
    identity = np.concatenate([np.eye(3), np.zeros((3, 1))], axis=1)
    assert colour.quantize_colour_map(identity) == (0,) * 12
    off = identity.copy()
    off[1, 3] = 2 / colour.COLOUR_MAP_SCALE  # green's offset
    assert colour.quantize_colour_map(off) == (0,) * 7 + (2,) + (0,) * 4
    with pytest.raises(ValueError, match="12 integers"):
        colour.dequantize_colour_map((0,) * 11)


def test_apply_works_on_batches_and_clips():
    x = torch.rand(2, 3, 5, 7)
    brighter = np.concatenate([2 * np.eye(3), np.full((3, 1), 0.1)], axis=1)
    y = colour.apply_colour_map(x, brighter)
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
    assert torch.allclose(y[1], colour.apply_colour_map(x[1], brighter))
    assert torch.allclose(y, (2 * x + 0.1).clamp(0, 1))


def test_fit_refuses_images_of_two_sizes():
    with pytest.raises(ValueError, match="one size"):
        colour.fit_colour_map(torch.zeros(3, 4, 4), torch.zeros(3, 4, 5))
