"""Where an image's quality goes on its way through the codec: PSNR after each stage of decoding.

A diagnosis for training, not part of the codec: if x̂ is far below the VAE round trip through
a colour map (its ceiling: x̂ passes through the VAE decoder, then the record's colour map),
the latent code (rate, T, UNet) is the limit; if that ceiling itself is low, the VAE is. The
gap between x_hat_uncorrected and x_hat is what the record's colour map and offset grid recover.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from sprdiff import colour
from sprdiff.decoder import to_uint8_images
from sprdiff.encoder import image_tensor
from sprdiff.evaluation.metrics import psnr
from sprdiff.model import SPRDiff

STAGES = {
    "vae_round_trip": "VAE decoder of the (LoRA-tuned) VAE encoder's latent, nothing coded",
    "vae_round_trip_mapped": "the VAE round trip through its own colour map on the record's grid: x̂'s ceiling",
    "distortion_round_trip": "g_s(g_a(x)), nothing coded: x̄'s ceiling",
    "x_bar": "x̄ = g_s(T(Ŷ)) from the decoded record: the distortion-aware branch",
    "x_hat_uncorrected": "x̂ before the record's colour map and offset grid (sprdiff.colour, sprdiff.offset_grid)",
    "x_hat": "x̂, the decoder's output (what decompress returns)",
}


@torch.no_grad()
def reconstruction_breakdown(model: SPRDiff, image: np.ndarray) -> dict[str, float]:
    """PSNR (dB) of ``image`` after each entry of :data:`STAGES`, plus its ``bpp`` from the record's bytes.

    The coded stages decode the real record (``model.compress``), so ``x_hat`` is the PSNR of
    what ``model.decompress`` gives back for this image.
    """
    height, width = image.shape[:2]
    record = model.compress([image])[0]
    header, y_hat = model.decode_latents(record)
    x_hat, x_bar = model.synthesis(y_hat)
    x = model.pad(image)
    vae_round_trip = (model.vae.decode(model.vae.encode(x * 2 - 1).latent_dist.mean).sample + 1) / 2
    distortion_round_trip = model.distortion.g_s(model.distortion.g_a(x))
    outputs = {"vae_round_trip": vae_round_trip, "distortion_round_trip": distortion_round_trip,
               "x_bar": x_bar, "x_hat_uncorrected": x_hat}
    # the padded outputs cropped back to the image, rounded as decompress rounds
    pixels = {name: np.ascontiguousarray(to_uint8_images(out)[0, :height, :width]) for name, out in outputs.items()}
    pixels["x_hat"] = model.output_pixels(x_hat[0], header)  # decompress's pixels, without decoding again
    round_trip = vae_round_trip[0, :, :height, :width].double()
    mapped = colour.quantize_colour_map(colour.fit_colour_map(round_trip, image_tensor(image, x.device).double()))
    # the round trip as decompress would give it back from a record carrying that map (and no grid)
    pixels["vae_round_trip_mapped"] = model.output_pixels(vae_round_trip[0],
                                                          replace(header, colour_map=mapped, offset_grid=None))
    result = {name: psnr(image, p) for name, p in pixels.items()}
    result["bpp"] = 8 * len(record) / (height * width)
    return result
