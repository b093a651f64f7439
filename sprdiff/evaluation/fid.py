"""FID and KID on image patches (the paper's protocol), with torch-fidelity and local Inception weights.

Patches: each image is cut into non-overlapping ``patch x patch`` tiles on a grid starting at (0, 0),
plus a second grid shifted by ``patch // 2`` in both directions (the HiFiC protocol that later
ultra-low-bitrate papers follow); incomplete tiles at the borders are dropped, so an image smaller
than one patch contributes none. The same positions are cut from the original and from each
reconstruction.

Features: torch-fidelity's ``FeatureExtractorInceptionV3`` (the TF-Inception port every FID paper
uses; it resizes each patch to 299x299 itself), 2048-d pool features, built from the local weights
file given with ``--fid-weights`` (torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth``).
The file is first checked with ``torch.load(weights_only=True)``; nothing is downloaded.
FID and KID themselves are torch-fidelity's ``fid_statistics_to_metric`` and ``kid_features_to_metric``.
Features are accumulated image by image, so memory holds 8 KB per patch, not the images.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from pathlib import Path

import numpy as np
import torch

from sprdiff.evaluation.learned import WeightsError, load_state_dict_file

FEATURE_LAYER = "2048"
KID_SUBSET_SIZE = 1000  # torch-fidelity's default; lowered to the number of patches when fewer
KID_SUBSETS = 100


def patch_origins(height: int, width: int, patch: int) -> list[tuple[int, int]]:
    """Top-left corners of the full patches: the aligned grid, then the grid shifted by half a patch."""
    if patch < 1:
        raise ValueError(f"patch size must be positive, got {patch}")
    origins = []
    for offset in (0, patch // 2):
        for top in range(offset, height - patch + 1, patch):
            for left in range(offset, width - patch + 1, patch):
                origins.append((top, left))
    return origins


def extract_patches(image: np.ndarray, patch: int) -> np.ndarray:
    """``(N, patch, patch, 3) uint8`` patches of an ``(H, W, 3)`` image at :func:`patch_origins`."""
    origins = patch_origins(image.shape[0], image.shape[1], patch)
    if not origins:
        return np.zeros((0, patch, patch, 3), dtype=np.uint8)
    return np.stack([image[t:t + patch, s:s + patch] for t, s in origins])


class InceptionFeatures:
    """2048-d Inception-v3 pool features of uint8 patches, from a local torch-fidelity weights file."""

    def __init__(self, weights_path: str | Path, device: str | torch.device = "cpu", batch_size: int = 32):
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        path = Path(weights_path).expanduser()
        load_state_dict_file(path)  # refuses anything that is not a plain tensor state dict
        try:
            self.model = FeatureExtractorInceptionV3("inception-v3-compat", [FEATURE_LAYER],
                                                     feature_extractor_weights_path=str(path))
        except RuntimeError as e:  # load_state_dict: missing/unexpected keys, shape mismatch
            raise WeightsError(f"{path} is not torch-fidelity's Inception-v3 state dict: {e}") from None
        self.device = torch.device(device)
        self.model.to(self.device)
        self.batch_size = batch_size
        self.weights_path = str(path)

    @torch.no_grad()
    def __call__(self, patches: np.ndarray) -> torch.Tensor:
        """``(N, h, w, 3) uint8`` -> ``(N, 2048) float32`` on the CPU."""
        out = [torch.zeros((0, 2048))]
        for start in range(0, len(patches), self.batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(patches[start:start + self.batch_size]))
            batch = batch.permute(0, 3, 1, 2).to(self.device)
            (features,) = self.model(batch)
            out.append(features.float().cpu())
        return torch.cat(out)


class PatchFID:
    """Accumulates patch features of the originals and of each method, then gives FID/KID per method."""

    def __init__(self, features: Callable[[np.ndarray], torch.Tensor], patch: int):
        """``features``: (N, h, w, 3) uint8 patches -> (N, D) features, normally :class:`InceptionFeatures`."""
        self.features = features
        self.patch = patch
        self._reference: dict[str, torch.Tensor] = {}  # image key -> features of the original's patches
        # method (any hashable label, e.g. (rate id, method name)) -> features, one tensor per image
        self._features: dict[Hashable, list[torch.Tensor]] = {}
        self._keys: dict[Hashable, list[str]] = {}  # method -> the image keys it reconstructed

    def add_reference(self, key: str, image: np.ndarray) -> None:
        self._reference[key] = self.features(extract_patches(image, self.patch))

    def add(self, method: Hashable, key: str, image: np.ndarray) -> None:
        """Features of a reconstruction; the original of the same image must be added first."""
        if key not in self._reference:
            raise ValueError(f"add_reference({key!r}, ...) must come before add({method!r}, {key!r}, ...)")
        self._features.setdefault(method, []).append(self.features(extract_patches(image, self.patch)))
        self._keys.setdefault(method, []).append(key)

    def results(self) -> dict[Hashable, dict]:
        """Per method: FID, KID (mean, std), and how many images and patches went in.

        Each method is compared with the originals of the images it reconstructed (a baseline that
        could not meet the byte budget for an image is compared without that image).
        """
        from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
        from torch_fidelity.metric_kid import kid_features_to_metric

        out = {}
        for method, keys in self._keys.items():
            fake = torch.cat(self._features[method])
            real = torch.cat([self._reference[k] for k in keys])
            entry = {"n_images": len(keys), "n_patches": int(len(fake)), "patch": self.patch}
            if len(fake) < 2:
                entry.update(fid=math.nan, kid_mean=math.nan, kid_std=math.nan,
                             note=f"{len(fake)} patch(es) of {self.patch}x{self.patch}: FID/KID need at least 2")
                out[method] = entry
                continue
            fid = fid_statistics_to_metric(fid_features_to_statistics(real.double()),
                                           fid_features_to_statistics(fake.double()), verbose=False)
            subset = min(KID_SUBSET_SIZE, len(fake))
            kid = kid_features_to_metric(real, fake, kid_subsets=KID_SUBSETS, kid_subset_size=subset,
                                         verbose=False, rng_seed=2020)
            entry.update(fid=fid["frechet_inception_distance"], kid_mean=kid["kernel_inception_distance_mean"],
                         kid_std=kid["kernel_inception_distance_std"], kid_subset_size=subset)
            if len(fake) < 2048:
                entry["note"] = (f"only {len(fake)} patches (< 2048 feature dimensions): FID is biased upwards; "
                                 f"compare runs with the same images only")
            out[method] = entry
        return out
