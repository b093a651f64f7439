"""Records -> images: verify every record, entropy-decode its latent, synthesise in batches, then
crop, apply the record's side channels and round, one image at a time.

Entropy decoding is exact (integer arithmetic), so the latent never depends on the batch, the
thread count or the device. Synthesis of same-size latents may run ``batch_size`` at a time
(faster on a GPU); batched float kernels may then move a few pixels by one level. With the
default ``batch_size=1`` each image is synthesised alone, so its pixels never depend on the other
records in the call.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from sprdiff import bitstream, side_channels, tiling
from sprdiff.bitstream import BitstreamError, RecordHeader
from sprdiff.encoder import batches
from sprdiff.images import padded_size
from sprdiff.precision import autocast, check_precision


def to_uint8_images(x: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) floats in [0, 1] (clipped if outside) -> (B, H, W, 3) uint8, rounded to nearest."""
    return (x * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def parse(model, record: bytes) -> tuple[RecordHeader, bytes]:
    """Verify one record for ``model``; raises :class:`BitstreamError` on any problem."""
    header, strings = bitstream.unpack(record, model.fingerprint_bytes, num_strings=1)
    if header.timestep != model.config.timestep:
        raise BitstreamError(f"record was coded for timestep {header.timestep}, this model uses "
                             f"{model.config.timestep}", status="model_mismatch")
    if model.config.rates > 1 and header.rate_id not in model.rate_ids:
        raise BitstreamError(f"record was coded at rate {header.rate_id}, model {model.model_id!r} has rates "
                             f"{', '.join(map(str, model.rate_ids))}", status="model_mismatch")
    return header, strings[0]


def latent_shape(header: RecordHeader, multiple: int) -> tuple[int, int]:
    """The (h, w) of Ŷ for a record: the padded image on the H/16 grid (derived from the header)."""
    height, width = padded_size(header.height, header.width, multiple)
    return height // 16, width // 16


@torch.no_grad()
def decode_latents(model, record: bytes) -> tuple[RecordHeader, torch.Tensor]:
    """The record's header and Ŷ as synthesis takes it (for several rates: unscaled by the record's
    rate's inverse gain, ``sprdiff.rates``)."""
    header, string = parse(model, record)
    coding_rate = header.rate_id if model.config.rates > 1 else None
    y_hat = model.entropy.decompress(string, latent_shape(header, model.config.pad_multiple), model.device,
                                     coding_rate)
    return header, model.unscale_latent(y_hat, header.rate_id)


def output_pixels(x_hat: torch.Tensor, header: RecordHeader) -> np.ndarray:
    """One synthesised x̂ (3, H', W') of the record with ``header`` -> what ``decompress`` returns
    for it: cropped to (H, W, 3), the record's side channels applied, rounded to uint8."""
    x_hat = side_channels.apply_all(x_hat[:, :header.height, :header.width], header)
    return np.ascontiguousarray(to_uint8_images(x_hat[None])[0])


@torch.inference_mode()
def decode(model, records: Sequence[bytes], batch_size: int = 1, precision: str = "fp32",
           tile_size: int | None = tiling.DEFAULT_TILE_SIZE) -> list[np.ndarray]:
    """Records -> (H, W, 3) uint8 arrays at their original sizes, in order. Every record is
    verified before any pixel is synthesised. ``precision``: of the synthesis (``sprdiff.precision``);
    ``tile_size``: synthesis above it runs on overlapping tiles laid out from the header's image
    size alone (``sprdiff.tiling``), so any tile size decodes any record."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    tiling.check_tile_size(tile_size)
    check_precision(precision, model.device)
    decoded = [decode_latents(model, r) for r in records]
    out: list[np.ndarray | None] = [None] * len(records)
    for chunk in batches([tuple(y_hat.shape[2:]) for _, y_hat in decoded], batch_size):
        with autocast(precision, model.device):
            x_hat = model.synthesis(torch.cat([decoded[i][1] for i in chunk]), tile_size)[0].float()
        for i, image in zip(chunk, x_hat, strict=True):
            out[i] = output_pixels(image, decoded[i][0])
    return out  # type: ignore[return-value]
