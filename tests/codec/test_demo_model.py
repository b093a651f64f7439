"""The shipped ``demo`` model (sprdiff/pretrained/demo): it loads by name, fits the size budget,
and really compresses a photo it never saw below 0.03 bpp into something recognisable."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from sprdiff import SPRDiff
from sprdiff.config import WEIGHTS_NAME
from sprdiff.evaluation import ms_ssim, psnr
from sprdiff.presets import SHIPPED_MODELS, demo_init_config

MAX_WEIGHTS_BYTES = 20 * 10**6


@pytest.fixture(scope="module")
def demo_model() -> Iterator[SPRDiff]:
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield SPRDiff.from_pretrained("demo")
    torch.set_num_threads(before)  # later tests compare pixels with subprocesses at the default count


def test_weights_fit_the_budget_and_match_the_preset_architecture(demo_model):
    assert (SHIPPED_MODELS["demo"] / WEIGHTS_NAME).stat().st_size <= MAX_WEIGHTS_BYTES
    untrained = SPRDiff.from_config(demo_init_config().replace(rates=3, rate_id=1))
    shapes = {k: v.shape for k, v in untrained.state_dict().items() if "_quantized_cdf" not in k}
    assert {k: v.shape for k, v in demo_model.state_dict().items() if "_quantized_cdf" not in k} == shapes
    assert demo_model.fingerprint != untrained.fingerprint


def test_it_has_three_rate_points_with_the_middle_one_by_default(demo_model):
    assert (demo_model.rate_ids, demo_model.config.rate_id) == ((0, 1, 2), 1)
    gains = demo_model.rate_gains.log_gain.detach().exp().mean(1)
    assert gains[0] < gains[1] < gains[2]


def test_a_photo_it_never_saw_is_recognisable_below_003_bpp(demo_model):
    from skimage import data

    image = data.astronaut()  # not in the training photos
    record = demo_model.compress([image])[0]
    bpp = 8 * len(record) / (image.shape[0] * image.shape[1])
    restored = demo_model.decompress([record])[0]
    assert restored.shape == image.shape
    assert bpp <= 0.03
    # A zero-bit codec can only send the mean colour: the model must do far better than that.
    flat = np.broadcast_to(image.reshape(-1, 3).mean(0).round().astype(np.uint8), image.shape)
    assert psnr(image, restored) > psnr(image, flat) + 5
    assert ms_ssim(image, restored) > ms_ssim(image, flat) + 0.3
