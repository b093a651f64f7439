"""Fixtures for the evaluation tests: small real images on disk, randomly initialised metric weights."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch


@pytest.fixture(scope="session")
def small_images(sample_images) -> dict[str, np.ndarray]:
    """Crops of skimage.data photos: two above the MS-SSIM minimum (161 px), one below it."""
    return {
        "astronaut.png": sample_images["astronaut"][80:272, 144:336].copy(),  # 192x192
        "coffee.png": sample_images["coffee"][100:276, 200:400].copy(),  # 176x200
        "chelsea.png": sample_images["chelsea"][60:188, 150:278].copy(),  # 128x128: no MS-SSIM
    }


@pytest.fixture(scope="session")
def image_dir(small_images, tmp_path_factory) -> Path:
    """The small images as PNG files, plus a file that is not an image and a README that is ignored."""
    from sprdiff.images import encode_png

    root = tmp_path_factory.mktemp("eval-images")
    for name, pixels in small_images.items():
        (root / name).write_bytes(encode_png(pixels))
    (root / "broken.png").write_bytes(b"this is not a PNG")
    (root / "README.md").write_text("not an image, not listed")
    return root


@pytest.fixture(scope="session")
def random_lpips_weights(tmp_path_factory) -> Path:
    """A full lpips.LPIPS(net='alex') state dict with random trunk and random linear layers."""
    import lpips

    torch.manual_seed(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = lpips.LPIPS(net="alex", pretrained=False, pnet_rand=True, verbose=False)
    for lin in model.lins:  # lpips keeps these non-negative after training; random positive stand-ins
        lin.model[-1].weight.data.uniform_(0.0, 0.1)
    path = tmp_path_factory.mktemp("weights") / "lpips_alex_random.pth"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def random_dists_weights(tmp_path_factory) -> Path:
    from sprdiff.evaluation.learned import build_dists_module

    torch.manual_seed(2)
    path = tmp_path_factory.mktemp("weights") / "dists_random.pth"
    torch.save(build_dists_module().state_dict(), path)
    return path


@pytest.fixture(scope="session")
def random_inception_weights(tmp_path_factory) -> Path:
    """torch-fidelity's Inception-v3 architecture with random weights, saved as a state dict file."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class RandomInception(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):  # keep the random initialisation
            return None

    folder = tmp_path_factory.mktemp("weights")
    empty = folder / "empty.pth"
    torch.save({}, empty)
    torch.manual_seed(3)
    model = RandomInception("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
    path = folder / "inception_random.pth"
    torch.save(model.state_dict(), path)
    return path
