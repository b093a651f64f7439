"""The stage-2 discriminator (our design; the paper only says "non-saturating GAN").

A PatchGAN (Isola et al., pix2pix): strided 4x4 convolutions with LeakyReLU that end in a
map of logits, one per overlapping patch (70x70 receptive field with 3 layers), so it judges
local texture, which is what a one-step decoder at 0.03 bpp gets wrong. Every convolution
carries spectral normalisation (Miyato et al.) instead of batch norm: it keeps the
discriminator Lipschitz-bounded, which steadies a GAN trained at batch size 1.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


class PatchDiscriminator(nn.Module):
    def __init__(self, channels: int = 64, layers: int = 3):
        super().__init__()
        if channels < 1 or layers < 1:
            raise ValueError(f"discriminator channels and layers must be >= 1, got {channels}, {layers}")
        blocks: list[nn.Module] = [spectral_norm(nn.Conv2d(3, channels, 4, stride=2, padding=1)),
                                   nn.LeakyReLU(0.2)]
        width = channels
        for i in range(1, layers + 1):
            out = channels * min(2 ** i, 8)
            stride = 2 if i < layers else 1
            blocks += [spectral_norm(nn.Conv2d(width, out, 4, stride=stride, padding=1)), nn.LeakyReLU(0.2)]
            width = out
        blocks.append(spectral_norm(nn.Conv2d(width, 1, 4, stride=1, padding=1)))
        self.net = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, H, W) in [0, 1] -> patch logits (B, 1, h, w)."""
        return self.net(x * 2 - 1)
