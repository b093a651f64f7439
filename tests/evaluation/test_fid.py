"""FID/KID on patches: the patch protocol and the local-weights loading path (random Inception weights)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sprdiff.evaluation.fid import InceptionFeatures, PatchFID, extract_patches, patch_origins
from sprdiff.evaluation.learned import WeightsError


def test_patch_grid_and_half_shifted_grid():
    assert patch_origins(512, 512, 256) == [(0, 0), (0, 256), (256, 0), (256, 256), (128, 128)]
    assert patch_origins(300, 700, 256) == [(0, 0), (0, 256)]  # the shifted grid needs 384 px
    assert patch_origins(200, 900, 256) == []


def test_extract_patches_cuts_the_pixels_at_the_origins():
    image = np.arange(192 * 160 * 3, dtype=np.uint32).reshape(192, 160, 3).astype(np.uint8)
    patches = extract_patches(image, 64)
    origins = patch_origins(192, 160, 64)
    assert patches.shape == (len(origins), 64, 64, 3)
    for patch, (top, left) in zip(patches, origins):
        assert np.array_equal(patch, image[top:top + 64, left:left + 64])
    assert extract_patches(image, 256).shape == (0, 256, 256, 3)


@pytest.fixture(scope="module")
def inception(random_inception_weights):
    return InceptionFeatures(random_inception_weights)


def pixel_features(patches: np.ndarray) -> torch.Tensor:
    """A cheap stand-in for Inception (every 97th pixel value), to test the FID/KID bookkeeping fast."""
    return torch.from_numpy(patches.reshape(len(patches), -1)[:, ::97].astype(np.float32))


def test_fid_kid_per_method_over_the_images_it_reconstructed(small_images):
    rng = np.random.default_rng(0)
    originals = {"a": small_images["chelsea.png"], "b": small_images["astronaut.png"][:128, :128]}  # 128x128
    fid = PatchFID(pixel_features, patch=64)
    for key, image in originals.items():
        fid.add_reference(key, image)
        fid.add("identical", key, image.copy())
        noise = rng.integers(-80, 81, image.shape)
        fid.add("noisy", key, np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8))
    fid.add("one_image", "a", originals["a"].copy())  # e.g. a baseline that met the budget for one image only
    results = fid.results()
    assert len(patch_origins(128, 128, 64)) == 5
    for method in ("identical", "noisy"):
        assert results[method]["n_images"] == 2 and results[method]["n_patches"] == 10
        assert np.isfinite(results[method]["kid_mean"])
        assert "biased" in results[method]["note"]
    assert results["noisy"]["fid"] > 1.0
    assert abs(results["identical"]["fid"]) < 1e-6 * results["noisy"]["fid"]
    assert results["one_image"]["n_images"] == 1 and abs(results["one_image"]["fid"]) < 1e-6 * results["noisy"]["fid"]


def test_inception_features_from_local_weights(inception):
    """The real loading path: torch-fidelity's Inception-v3 built from a local file (random weights here)."""
    feats = inception(np.random.default_rng(1).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8))
    assert feats.shape == (2, 2048) and feats.dtype == torch.float32
    assert torch.isfinite(feats).all()
    assert inception.weights_path.endswith("inception_random.pth")


def test_reconstruction_needs_its_original_first():
    fid = PatchFID(pixel_features, patch=64)
    with pytest.raises(ValueError, match="add_reference"):
        fid.add("ours", "missing", np.zeros((64, 64, 3), np.uint8))


def test_inception_weights_must_match(tmp_path, random_dists_weights):
    with pytest.raises(WeightsError, match="Inception"):
        InceptionFeatures(random_dists_weights)
    with pytest.raises(WeightsError, match="not found"):
        InceptionFeatures(tmp_path / "missing.pth")
