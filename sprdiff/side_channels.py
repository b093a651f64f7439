"""Side channels: what the encoder fits against the original and sends beside the latent code.

Each side channel fills one optional field of the record (``sprdiff.bitstream.FIELDS``) and has
the same three parts: ``fit`` (candidates, each with the image the decoder will then have),
``apply`` (the decoder's step) and ``cost`` (the exact bytes it adds to the record, from the
format's own size rule). One keep-or-drop rule, :func:`net_gain_db`, applied in one loop,
:func:`choose`, decides what goes into a record: the channels in order, each keeping its best
candidate if its PSNR gain pays for its bytes, each fitted to what the previous ones left.

Fits run in torch on the device of the images they get (the codec actor's GPU when there is
one), in float64 a band of rows at a time (``sprdiff.bands``: a 16 MP photo holds no whole-image
float64 temporaries); the decoder's ``apply`` runs on x̂ in its own dtype.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import torch

from sprdiff import bands, bitstream, colour, offset_grid
from sprdiff.bitstream import RecordHeader

# A side channel is sent only if its PSNR gain is worth its bytes: at least this many dB per
# doubling of the record, a conservative stand-in for the rate-distortion slope at these rates.
# On a photo (~2 KB) a colour map is sent from ~0.04 dB of gain; on a crop of a few hundred
# bytes from ~0.3 dB.
MIN_DB_PER_RATE_DOUBLING = 3.0


def net_gain_db(mse_before: float, mse_after: float, record_bytes: int, extra_bytes: int) -> float:
    """The PSNR gain of lowering the MSE from ``mse_before`` to ``mse_after``, less what its
    ``extra_bytes`` on a record of ``record_bytes`` must buy (``MIN_DB_PER_RATE_DOUBLING`` per
    doubling): positive when it pays for its bytes."""
    if mse_after >= mse_before:
        return -math.inf
    if mse_after <= 0:
        return math.inf
    gain_db = 10 * math.log10(mse_before / mse_after)
    return gain_db - MIN_DB_PER_RATE_DOUBLING * math.log2((record_bytes + extra_bytes) / record_bytes)


@dataclass(frozen=True)
class Candidate:
    value: Any  # what the record's field would hold
    mse: float  # the mean square error against the original that is left with it
    corrected: Callable[[], torch.Tensor]  # (3, H, W) float64: the decoder's image with it, before rounding
    # (made only for the chosen candidate)


class SideChannel(Protocol):
    field: str  # the RecordHeader field (bitstream.FIELDS) it fills

    def fit(self, decoded: torch.Tensor, original: torch.Tensor) -> list[Candidate]:
        """Candidates for ``decoded`` (3, H, W) against ``original``, both in [0, 1] (any float dtype,
        fitted in float64); each says the error it leaves, and makes its corrected image only when
        asked (the chosen one)."""

    def apply(self, x: torch.Tensor, value: Any) -> torch.Tensor:
        """The decoder's step: x (3, H, W) in [0, 1] -> corrected, clipped to [0, 1]."""


def cost(channel: SideChannel, header: RecordHeader, string_lengths: Sequence[int], value: Any) -> int:
    """The bytes ``value`` adds to the record ``header`` describes (container fields included)."""
    return (bitstream.record_length(replace(header, **{channel.field: value}), string_lengths)
            - bitstream.record_length(header, string_lengths))


class ColourMap:
    """The affine colour map (``sprdiff.colour``)."""

    field = "colour_map"

    def fit(self, decoded: torch.Tensor, original: torch.Tensor) -> list[Candidate]:
        out = []
        for values in colour.candidate_maps(decoded, original):
            through = functools.partial(colour.apply_colour_map, colour_map=colour.dequantize_colour_map(values))
            out.append(Candidate(values, bands.mean_square_error(decoded, original, through),
                                 functools.partial(bands.mapped, decoded, through)))
        return out

    def apply(self, x: torch.Tensor, value: tuple[int, ...]) -> torch.Tensor:
        return colour.apply_colour_map(x, colour.dequantize_colour_map(value))


class OffsetGrid:
    """The coarse grid of RGB offsets (``sprdiff.offset_grid``)."""

    field = "offset_grid"

    def fit(self, decoded: torch.Tensor, original: torch.Tensor) -> list[Candidate]:
        return [Candidate(g, mse, c) for g, mse, c in offset_grid.candidate_grids(decoded, original)]

    def apply(self, x: torch.Tensor, value: bitstream.CodedOffsetGrid) -> torch.Tensor:
        return offset_grid.apply_offsets(x, value)


SIDE_CHANNELS: tuple[SideChannel, ...] = (ColourMap(), OffsetGrid())  # the order the decoder applies them in


def choose(decoded: torch.Tensor, original: torch.Tensor, header: RecordHeader, string_lengths: Sequence[int],
           channels: Sequence[SideChannel] = SIDE_CHANNELS, max_bytes: int | None = None
           ) -> tuple[RecordHeader, torch.Tensor]:
    """The header with every side channel that pays for its bytes, and the image the decoder will
    then have (float64, or ``decoded`` itself when nothing is sent). ``decoded``, ``original``: (3, H, W)
    in [0, 1] on one device, any float dtype (fitted in float64).
    ``max_bytes``: a byte budget; candidates that would take the record above it are passed over."""
    current = decoded
    for channel in channels:
        before = bands.mean_square_error(current, original)
        record_bytes = bitstream.record_length(header, string_lengths)
        best: tuple[float, Candidate] | None = None
        for candidate in channel.fit(current, original):
            extra = cost(channel, header, string_lengths, candidate.value)
            if max_bytes is not None and record_bytes + extra > max_bytes:
                continue
            gain = net_gain_db(before, candidate.mse, record_bytes, extra)
            if gain > 0 and (best is None or gain > best[0]):
                best = (gain, candidate)
        if best is not None:
            header, current = replace(header, **{channel.field: best[1].value}), best[1].corrected()
    return header, current


def apply_all(x: torch.Tensor, header: RecordHeader, channels: Sequence[SideChannel] = SIDE_CHANNELS
              ) -> torch.Tensor:
    """The decoder's side: every side channel the record carries, in order, on x (3, H, W)."""
    for channel in channels:
        value = getattr(header, channel.field)
        if value is not None:
            x = channel.apply(x, value)
    return x
