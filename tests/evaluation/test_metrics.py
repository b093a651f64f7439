"""Metrics against independent reference computations."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image
from scipy.signal import correlate
from skimage.metrics import peak_signal_noise_ratio

from sprdiff.evaluation import metrics


def jpeg_roundtrip(pixels: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
    return np.array(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


@pytest.fixture(scope="module")
def pair(small_images) -> tuple[np.ndarray, np.ndarray]:
    ref = small_images["astronaut.png"]
    return ref, jpeg_roundtrip(ref, 20)


# --- an independent MS-SSIM: Wang, Simoncelli & Bovik 2003, written from the paper's definition ---
MS_SSIM_WEIGHTS = np.array([0.0448, 0.2856, 0.3001, 0.2363, 0.1333])


def _gaussian(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size) - size // 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def _blur(img: np.ndarray) -> np.ndarray:  # 'valid' separable Gaussian filtering
    g = _gaussian()
    return correlate(correlate(img, g[None, :], mode="valid"), g[:, None], mode="valid")


def _luminance_and_cs(x: np.ndarray, y: np.ndarray, peak: float = 255.0) -> tuple[float, float]:
    c1, c2 = (0.01 * peak) ** 2, (0.03 * peak) ** 2
    mx, my = _blur(x), _blur(y)
    sxx, syy, sxy = _blur(x * x) - mx * mx, _blur(y * y) - my * my, _blur(x * y) - mx * my
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    lum = (2 * mx * my + c1) / (mx * mx + my * my + c1)
    return float(np.mean(lum * cs)), float(np.mean(cs))


def reference_ms_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over RGB of prod_j cs_j^w_j (j < 5) * ssim_5^w_5, halving by 2x2 means between scales."""
    per_channel = []
    for c in range(3):
        x, y = a[..., c].astype(np.float64), b[..., c].astype(np.float64)
        factors = []
        for level in range(5):
            ssim, cs = _luminance_and_cs(x, y)
            if level < 4:
                factors.append(max(cs, 0.0) ** MS_SSIM_WEIGHTS[level])
                h, w = x.shape[0] // 2 * 2, x.shape[1] // 2 * 2
                x = x[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
                y = y[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
        factors.append(max(ssim, 0.0) ** MS_SSIM_WEIGHTS[4])
        per_channel.append(np.prod(factors))
    return float(np.mean(per_channel))


def test_bits_per_pixel_is_eight_bits_per_byte_over_pixels():
    assert metrics.bits_per_pixel(1234, 512, 768) == 8 * 1234 / (512 * 768)
    assert metrics.bits_per_pixel(0, 3, 3) == 0.0
    with pytest.raises(ValueError):
        metrics.bits_per_pixel(10, 0, 5)


def test_psnr_matches_skimage(pair):
    ref, test = pair
    expected = peak_signal_noise_ratio(ref, test, data_range=255)
    assert metrics.psnr(ref, test) == pytest.approx(expected, abs=1e-10)
    assert 20 < metrics.psnr(ref, test) < 40


def test_psnr_is_over_all_pixels_and_channels():
    ref = np.zeros((4, 4, 3), dtype=np.uint8)
    test = ref.copy()
    test[0, 0, 0] = 10  # one channel of one pixel off by 10: MSE = 100 / 48
    assert metrics.psnr(ref, test) == pytest.approx(10 * math.log10(255**2 * 48 / 100))


def test_psnr_of_identical_images_is_inf(pair):
    ref, _ = pair
    assert metrics.psnr(ref, ref.copy()) == math.inf


def test_ms_ssim_matches_an_independent_implementation(pair):
    ref, test = pair
    ours = metrics.ms_ssim(ref, test)
    assert ours == pytest.approx(reference_ms_ssim(ref, test), abs=1e-6)
    assert 0.8 < ours < 1.0
    assert metrics.ms_ssim(ref, ref) == pytest.approx(1.0, abs=1e-9)


def test_ms_ssim_agrees_with_piq(pair):
    import piq
    import torch

    ref, test = pair
    x = torch.from_numpy(ref).permute(2, 0, 1)[None].double()
    y = torch.from_numpy(test).permute(2, 0, 1)[None].double()
    expected = float(piq.multi_scale_ssim(y, x, data_range=255.0))
    assert metrics.ms_ssim(ref, test) == pytest.approx(expected, abs=1e-4)


def test_ms_ssim_below_the_minimum_size_is_nan_with_a_reason(small_images):
    ref = small_images["chelsea.png"]  # 128x128
    assert math.isnan(metrics.ms_ssim(ref, jpeg_roundtrip(ref, 30)))
    reason = metrics.ms_ssim_unavailable(*ref.shape[:2])
    assert "161" in reason and "128x128" in reason
    assert metrics.ms_ssim_unavailable(161, 400) is None
    assert not math.isnan(metrics.ms_ssim(np.zeros((161, 170, 3), np.uint8), np.ones((161, 170, 3), np.uint8)))


def test_weight_free_perceptual_metrics_rank_degradations(pair):
    ref, _ = pair
    mild, strong = jpeg_roundtrip(ref, 60), jpeg_roundtrip(ref, 5)
    assert metrics.haarpsi(ref, ref) == pytest.approx(1.0, abs=1e-6)
    assert metrics.haarpsi(ref, mild) > metrics.haarpsi(ref, strong)
    assert metrics.gmsd(ref, ref) == pytest.approx(0.0, abs=1e-6)
    assert metrics.gmsd(ref, mild) < metrics.gmsd(ref, strong)
    tiny = np.zeros((8, 8, 3), np.uint8)
    assert math.isnan(metrics.haarpsi(tiny, tiny)) and metrics.haarpsi_unavailable(8, 8)


def test_pairs_must_be_same_shape_uint8_rgb():
    a = np.zeros((20, 20, 3), np.uint8)
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.psnr(a, np.zeros((20, 21, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        metrics.psnr(a, a.astype(np.float32))
