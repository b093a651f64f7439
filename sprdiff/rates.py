"""Rate points: one model that codes at several rates, chosen per record by its rate id.

As variable-rate learned codecs do (Cui et al., "Asymmetric gained deep image compression", CVPR
2021), each rate r has a learned gain vector g_r over the latent's channels and an inverse gain
ĝ_r: the encoder codes ``y · g_r``, the decoder synthesises from ``ŷ · ĝ_r``. A gain below 1 is a
coarser quantisation step, so fewer bits. The entropy model sees the scaled latent; besides its
contexts (which carry the scale of the groups coded before), a learned per-rate offset of its side
parameters (``SpaceChannelEntropyModel.rate_side``) tells the first group's anchors the rate.

Models with one rate (``config.rates == 1``, every model saved before rate points existed) have
no gains: their rate is ``config.rate_id`` and their weights, fingerprints and records are as
they were. Choosing a rate for a model (``--rate``, ``--target-bpp``) needs only its config:
``sprdiff.rate_choice``, which imports no torch.
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
