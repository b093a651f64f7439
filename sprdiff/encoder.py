"""Images -> records: the model's tensor work in batches, then one place that decides the bytes.

For each image: pad to the model's multiple, run the analysis transform, entropy-code the latent
(one image at a time, on the exact integer path) at the settings' rate -- or, with a target bpp,
at every rate of the model, keeping the one whose record is the largest within the budget (the
fewest bytes when none fits; ``sprdiff.rates``) --, and, with side information on, synthesise x̂ as
the decoder will and let ``sprdiff.side_channels`` choose what pays for its bytes (and, with a
target, fits in what the budget leaves). The record is
packed once, at the end, and returned with its header (version, sizes), so no caller has to parse
bytes it was just handed.

Batches: images of one padded size are grouped, in a deterministic order (by padded size, then
by their place in the call), and their neural stages run ``batch_size`` at a time. Records stay
decodable anywhere whatever the batch (the entropy parameters are computed exactly from the
quantised latent); their bytes are a deterministic function of the image, the model, the
settings, the batch composition and the device kind. With ``batch_size=1`` (the default) an
image's bytes never depend on the other images in the call.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from sprdiff import bitstream, rate_choice, side_channels, tiling
from sprdiff.bitstream import Record, RecordHeader
from sprdiff.images import padded_size
from sprdiff.precision import PRECISIONS, autocast, check_precision


@dataclass(frozen=True)
class EncodeSettings:
    """Everything besides the image and the model that changes a record's bytes."""

    side_information: bool = True  # fit and send the side channels (colour map, offset grid)
    batch_size: int = 1  # images of one padded size per neural call
    precision: str = "fp32"  # of the neural stages (sprdiff.precision); check it against the device first
    # px: images with a padded side above it run on overlapping tiles (sprdiff.tiling); None: never
    tile_size: int | None = tiling.DEFAULT_TILE_SIZE
    rate: int | None = None  # the rate id to code at (sprdiff.rates); None: the model's default
    # a byte budget in bits per pixel: per image, the rate whose record is the largest within it
    target_bpp: float | None = None

    def __post_init__(self) -> None:
        if self.rate is not None and self.target_bpp is not None:
            raise ValueError("give a rate or a target bpp, not both: a target bpp chooses the rate per image")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        tiling.check_tile_size(self.tile_size)


def check_image_array(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise TypeError(f"images must be (H, W, 3) uint8 arrays, got {desc}; use sprdiff.images.load_image "
                        f"to convert files")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image has no pixels: {image.shape}")


def image_tensor(image: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [0, 1] on ``device``."""
    # copies only a read-only or strided array (torch cannot wrap a read-only one without a warning)
    return torch.from_numpy(np.require(image, requirements=["C", "W"])).to(device).permute(2, 0, 1).float() / 255.0


def pad(image: np.ndarray, multiple: int, device: torch.device | str) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, H', W') in [0, 1], sides multiples of ``multiple``, replicate-padded
    (the record's padding mode; the decoder crops it away)."""
    check_image_array(image)
    x = image_tensor(image, device)[None]
    h, w = image.shape[:2]
    ph, pw = -h % multiple, -w % multiple
    return F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x


def batches(sizes: Sequence[tuple[int, int]], batch_size: int) -> Iterator[list[int]]:
    """Indexes into ``sizes`` in groups of one size, at most ``batch_size`` each, in a fixed order."""
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, size in enumerate(sizes):
        by_size.setdefault(size, []).append(i)
    for size in sorted(by_size):
        indexes = by_size[size]
        for start in range(0, len(indexes), batch_size):
            yield indexes[start:start + batch_size]


def code_latent(model, y: torch.Tensor, rate: int) -> tuple[bytes, torch.Tensor]:
    """One analysed latent Y (1, M, h, w) at ``rate`` -> (its rANS string, Ŷ as synthesis takes it)."""
    string, y_hat = model.entropy.compress(model.scale_latent(y, rate), model.coding_rate(rate))
    return string, model.unscale_latent(y_hat, rate)


def fit_budget(model, y: torch.Tensor, header: RecordHeader, max_bytes: int) -> tuple[int, bytes, torch.Tensor]:
    """The rate whose record without side channels is the largest within ``max_bytes`` -- or, when
    none fits, the one with the fewest bytes -- as (rate, string, Ŷ). Every rate is coded: which
    one fits is measured, not assumed from the rate ids' order."""
    coded = [(rate, *code_latent(model, y, rate)) for rate in model.rate_ids]
    sizes = [bitstream.record_length(replace(header, rate_id=rate), [len(string)]) for rate, string, _ in coded]
    fitting = [i for i, size in enumerate(sizes) if size <= max_bytes]
    best = max(fitting, key=sizes.__getitem__) if fitting else min(range(len(coded)), key=sizes.__getitem__)
    return coded[best]


@torch.inference_mode()
def encode(model, images: Sequence[np.ndarray], settings: EncodeSettings | None = None) -> list[Record]:
    """(H, W, 3) uint8 arrays of any sizes -> one :class:`~sprdiff.bitstream.Record` each, in order."""
    settings = settings or EncodeSettings()
    check_precision(settings.precision, model.device)
    rate = rate_choice.check_rate(model.config, settings.rate)
    target_bpp = rate_choice.check_target_bpp(model.config, settings.target_bpp)
    for image in images:
        check_image_array(image)
    multiple = model.config.pad_multiple
    records: list[Record | None] = [None] * len(images)
    sizes = [padded_size(*image.shape[:2], multiple) for image in images]
    for chunk in batches(sizes, settings.batch_size):
        x = torch.cat([pad(images[i], multiple, model.device) for i in chunk])
        with autocast(settings.precision, model.device):
            y = model.analysis(x, settings.tile_size).float()  # the entropy coder takes float32 (exact parameters)
        del x  # a whole-image float buffer: not held through synthesis and the fits (peak memory of large photos)
        headers = [RecordHeader(width=images[i].shape[1], height=images[i].shape[0], timestep=model.config.timestep,
                                rate_id=rate, fingerprint_tag=0) for i in chunk]
        budgets = [None if target_bpp is None else rate_choice.budget_bytes(target_bpp, h.width, h.height)
                   for h in headers]
        coded: list[tuple[bytes, torch.Tensor]] = []  # (string, y_hat) each
        for j, budget in enumerate(budgets):
            if budget is None:
                coded.append(code_latent(model, y[j:j + 1], rate))
            else:
                chosen, string, y_hat = fit_budget(model, y[j:j + 1], headers[j], budget)
                headers[j] = replace(headers[j], rate_id=chosen)
                coded.append((string, y_hat))
        if settings.side_information:
            with autocast(settings.precision, model.device):
                x_hat = model.synthesis(torch.cat([y_hat for _, y_hat in coded]), settings.tile_size)[0].float()
            for j, i in enumerate(chunk):
                h, w = images[i].shape[:2]
                headers[j], _ = side_channels.choose(x_hat[j, :, :h, :w], image_tensor(images[i], model.device),
                                                     headers[j], [len(coded[j][0])], max_bytes=budgets[j])
        for j, i in enumerate(chunk):
            records[i] = bitstream.pack_record(headers[j], [coded[j][0]], model.fingerprint_bytes)
    return records  # type: ignore[return-value]
