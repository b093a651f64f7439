"""Where an image's quality goes on its way through the codec: PSNR after each stage of decoding.

A diagnosis for training, not part of the codec: if x̂ is far below the VAE round trip, the
latent code (rate, T, UNet) is the limit; if the VAE round trip itself is low, the VAE is. The
oracle colour map says how much of x̂'s error is a global colour shift.
"""

from __future__ import annotations

import numpy as np
import torch

from sprdiff.evaluation.metrics import psnr
from sprdiff.model import SPRDiff, to_uint8_images

STAGES = {
    "vae_round_trip": "VAE decoder of the (LoRA-tuned) VAE encoder's latent, nothing coded: x̂'s ceiling",
    "distortion_round_trip": "g_s(g_a(x)), nothing coded: x̄'s ceiling",
    "x_bar": "x̄ = g_s(T(Ŷ)) from the decoded record: the distortion-aware branch",
    "x_hat": "x̂, the decoder's output (what decompress returns)",
    "x_hat_colour_map": "x̂ through its best per-image colour map (3x3 + offset, fitted to the original): an oracle",
}


def fit_colour_map(output: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The affine colour map (4, 3) that takes ``output``'s RGB closest to ``target``'s (least squares)."""
    design = np.concatenate([output.reshape(-1, 3).astype(np.float64), np.ones((output.size // 3, 1))], axis=1)
    colour_map, *_ = np.linalg.lstsq(design, target.reshape(-1, 3).astype(np.float64), rcond=None)
    return colour_map


def apply_colour_map(image: np.ndarray, colour_map: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 through a (4, 3) affine colour map, rounded and clipped back to uint8."""
    mapped = image.reshape(-1, 3).astype(np.float64) @ colour_map[:3] + colour_map[3]
    return np.clip(np.rint(mapped), 0, 255).astype(np.uint8).reshape(image.shape)


@torch.no_grad()
def reconstruction_breakdown(model: SPRDiff, image: np.ndarray) -> dict[str, float]:
    """PSNR (dB) of ``image`` after each entry of :data:`STAGES`, plus its ``bpp`` from the record's bytes.

    The coded stages decode the real record (``model.compress``), so ``x_hat`` is the PSNR of
    what ``model.decompress`` gives back for this image.
    """
    height, width = image.shape[:2]
    record = model.compress([image])[0]
    _, y_hat = model.decode_latents(record)
    x_hat, x_bar = model.synthesis(y_hat)
    x = model._pad(image)
    vae_round_trip = (model.vae.decode(model.vae.encode(x * 2 - 1).latent_dist.mean).sample + 1) / 2
    distortion_round_trip = model.distortion.g_s(model.distortion.g_a(x))
    outputs = {"vae_round_trip": vae_round_trip, "distortion_round_trip": distortion_round_trip,
               "x_bar": x_bar, "x_hat": x_hat}
    # the padded outputs cropped back to the image, rounded as decompress rounds
    pixels = {name: np.ascontiguousarray(to_uint8_images(out)[0, :height, :width]) for name, out in outputs.items()}
    result = {name: psnr(image, p) for name, p in pixels.items()}
    x_hat = pixels["x_hat"]
    result["x_hat_colour_map"] = psnr(image, apply_colour_map(x_hat, fit_colour_map(x_hat, image)))
    result["bpp"] = 8 * len(record) / (height * width)
    return result
