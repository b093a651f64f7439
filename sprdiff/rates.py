"""Rate points: one model that codes at several rates, chosen per record by its rate id.

As variable-rate learned codecs do (Cui et al., "Asymmetric gained deep image compression", CVPR
2021), each rate r has a learned gain vector g_r over the latent's channels and an inverse gain
ĝ_r: the encoder codes ``y · g_r``, the decoder synthesises from ``ŷ · ĝ_r``. A gain below 1 is a
coarser quantisation step, so fewer bits. The entropy model sees the scaled latent; besides its
contexts (which carry the scale of the groups coded before), a learned per-rate offset of its side
parameters (``SpaceChannelEntropyModel.rate_side``) tells the first group's anchors the rate.

Models with one rate (``config.rates == 1``, every model saved before rate points existed) have
no gains: their rate is ``config.rate_id`` and their weights, fingerprints and records are as
they were.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class RateGains(nn.Module):
    """Per-rate gains ``g_r`` and inverse gains ``ĝ_r`` (R, M), kept as logarithms (always positive)."""

    def __init__(self, rates: int, channels: int):
        super().__init__()
        self.log_gain = nn.Parameter(torch.zeros(rates, channels))
        self.log_inverse_gain = nn.Parameter(torch.zeros(rates, channels))

    @torch.no_grad()
    def set_scalar_gains(self, gains: Sequence[float]) -> None:
        """Start rate r at one gain ``gains[r]`` on every channel, its inverse at 1 / ``gains[r]``."""
        values = torch.tensor([float(g) for g in gains], dtype=self.log_gain.dtype).log()
        if values.shape[0] != self.log_gain.shape[0] or not torch.isfinite(values).all():
            raise ValueError(f"need {self.log_gain.shape[0]} positive gains, got {list(gains)}")
        self.log_gain.copy_(values[:, None].expand_as(self.log_gain))
        self.log_inverse_gain.copy_(-values[:, None].expand_as(self.log_gain))

    def _per_sample(self, log_values: torch.Tensor, rate: int | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        index = torch.as_tensor(rate, device=log_values.device).reshape(-1)
        values = log_values[index].exp().to(like.dtype)  # (1 or B, M)
        return values[:, :, None, None]

    def scale(self, y: torch.Tensor, rate: int | torch.Tensor) -> torch.Tensor:
        """y (B, M, h, w) -> y · g_rate; ``rate`` an int or one per sample (B,)."""
        return y * self._per_sample(self.log_gain, rate, y)

    def unscale(self, y_hat: torch.Tensor, rate: int | torch.Tensor) -> torch.Tensor:
        """ŷ (B, M, h, w) -> ŷ · ĝ_rate."""
        return y_hat * self._per_sample(self.log_inverse_gain, rate, y_hat)


def rate_ids(config) -> tuple[int, ...]:
    """The rate ids a model with ``config`` codes at: its one ``rate_id``, or 0 .. rates - 1."""
    return tuple(range(config.rates)) if config.rates > 1 else (config.rate_id,)


def describe(config) -> str:
    ids = rate_ids(config)
    return f"rate {ids[0]}" if len(ids) == 1 else f"rates {', '.join(map(str, ids))}"


def check_rate(config, rate: int | None) -> int:
    """The rate id to code at: ``rate``, or the model's default when None. A rate the model does not
    have is refused with a message naming the ones it has."""
    if rate is None:
        return config.rate_id
    if isinstance(rate, bool) or not isinstance(rate, int) or rate not in rate_ids(config):
        raise ValueError(f"model {config.model_id!r} has no rate {rate!r}: it codes at "
                         f"{describe(config)} (choose one with --rate, or a byte budget with --target-bpp)")
    return rate


def check_target_bpp(config, value: float | None) -> float | None:
    """A byte budget in bits per pixel must be a positive finite number; the message of a refused one
    names the model's rates."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not number > 0 or number == float("inf"):
        raise ValueError(f"target bpp must be a positive number of bits per pixel, got {value!r} (model "
                         f"{config.model_id!r} codes at {describe(config)}; --rate chooses one directly)")
    return number


def budget_bytes(target_bpp: float, width: int, height: int) -> int:
    """The most bytes a record of a width x height image may have within ``target_bpp``."""
    return int(target_bpp * width * height // 8)


def budget_warning(num_bytes: int, width: int, height: int, rate: int, target_bpp: float | None) -> str | None:
    """What a record above its ``target_bpp`` budget (no rate fitted) is flagged with, else None."""
    if target_bpp is None or num_bytes <= budget_bytes(target_bpp, width, height):
        return None
    return f"no rate fits {target_bpp:g} bpp: coded at rate {rate}, {8 * num_bytes / (width * height):.4f} bpp"


def add_rate_points(model, gains: Sequence[float], default_rate: int) -> None:
    """Turn a one-rate model into one with ``len(gains)`` rate points, in place: rate r starts at the
    scalar gain ``gains[r]`` (1.0 keeps the model's one operating point), every side offset at 0. The
    model's weights are kept; train the new ones jointly over the rates (``pipeline.training``)."""
    if model.config.rates > 1:
        raise ValueError(f"model {model.model_id!r} already has {model.config.rates} rate points")
    if len(gains) < 2:
        raise ValueError(f"rate points need at least two gains, got {list(gains)}")
    config = model.config.replace(rates=len(gains), rate_id=default_rate)
    like = next(model.entropy.parameters())
    model.rate_gains = RateGains(len(gains), config.latent_channels).to(like.device)
    model.rate_gains.set_scalar_gains(gains)
    hyper_params = model.entropy.codec["hyper"].h_s[-1].out_channels
    model.entropy.rate_side = nn.Parameter(torch.zeros(len(gains), hyper_params, device=like.device))
    model.config = config
    model.entropy.invalidate_tables()
    model.invalidate_fingerprint()
