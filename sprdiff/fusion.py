"""Fusion of the three encoder features onto one H/16 grid (paper: Ē = M(concat(Ē_vae, Ē_p, Ē_s)))."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm, LayerNorm2d
from timm.models.inception_next import MetaNeXtBlock
from timm.models.mambaout import GatedConvBlock
from torch import nn

from sprdiff.checkpointing import Checkpointable, maybe_checkpoint


class StridedBranch(nn.Module):
    """``N_k``: 1x1 conv, GELU, k x k depth-wise conv with stride 2."""

    def __init__(self, in_channels: int, channels: int, kernel_size: int):
        super().__init__()
        self.pointwise = nn.Conv2d(in_channels, channels, 1)
        self.act = nn.GELU()
        self.depthwise = nn.Conv2d(channels, channels, kernel_size, stride=2, padding=kernel_size // 2,
                                   groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.depthwise(self.act(self.pointwise(x)))


class GatedCNN(nn.Module):
    """MambaOut's Gated-CNN block on NCHW tensors (timm's block works channels-last)."""

    def __init__(self, channels: int):
        super().__init__()
        self.block = GatedConvBlock(channels, norm_layer=LayerNorm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()


class Fusion(Checkpointable, nn.Module):
    """Ē_vae = N3(E_vae) + N5(E_vae); Ē_p = conv3x3(E_doe); Ē_s = resize(conv3x3(E_soe)); Ē = M(concat).
    With activation checkpointing on, it is one checkpointed piece (it runs on the H/8 and H/16 grids)."""

    def __init__(self, vae_channels: int, doe_channels: int, semantic_channels: int, channels: int,
                 num_blocks: int):
        super().__init__()
        self.n3 = StridedBranch(vae_channels, channels, 3)
        self.n5 = StridedBranch(vae_channels, channels, 5)
        self.pixel_conv = nn.Conv2d(doe_channels, channels, 3, padding=1)
        self.semantic_conv = nn.Conv2d(semantic_channels, channels, 3, padding=1)
        # M: a 1x1 merge of the concatenation, then (InceptionNeXt, Gated-CNN) pairs.
        blocks: list[nn.Module] = [nn.Conv2d(3 * channels, channels, 1)]
        for _ in range(num_blocks):
            # LayerNorm instead of InceptionNeXt's BatchNorm: codes must not depend on the batch.
            blocks += [MetaNeXtBlock(channels, norm_layer=LayerNorm2d), GatedCNN(channels)]
        self.mixer = nn.Sequential(*blocks)

    def forward(self, vae_latent: torch.Tensor, doe_features: torch.Tensor,
                semantic_map: torch.Tensor) -> torch.Tensor:
        return maybe_checkpoint(self.activation_checkpointing, self._fuse, vae_latent, doe_features, semantic_map)

    def _fuse(self, vae_latent: torch.Tensor, doe_features: torch.Tensor, semantic_map: torch.Tensor) -> torch.Tensor:
        # vae_latent (B, 4, H/8, W/8); doe_features (B, Nd, H/16, W/16); semantic_map (B, D, h, w)
        e_vae = self.n3(vae_latent) + self.n5(vae_latent)
        e_p = self.pixel_conv(doe_features)
        e_s = F.interpolate(self.semantic_conv(semantic_map), size=e_p.shape[-2:], mode="bilinear",
                            align_corners=False)
        return self.mixer(torch.cat([e_vae, e_p, e_s], dim=1))  # (B, C, H/16, W/16)
