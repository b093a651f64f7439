"""Loss terms of the two training stages (ARCHITECTURE.md §1).

    stage 1:  L = w1·‖x̂ − x‖² + w2·‖φ(x̂) − φ(x)‖² + w3·‖x̄ − x‖² + λ_b·R
    stage 2:  stage 1 + w4·L_adv(x̂)

Models trained without VGG16 (``demo``) can add weight-free terms: 1 − MS-SSIM(x̂, x) and
1 − HaarPSI(x̂, x).

Images are in [0, 1]; ‖·‖² is a mean squared error; R is bits per pixel estimated from the
likelihoods of y and z; φ is torchvision's VGG16 up to a chosen ReLU, on ImageNet-normalised
input. L_adv is the non-saturating GAN loss in its softplus form.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import fsspec
import piq
import pytorch_msssim
import torch
import torch.nn.functional as F
from safetensors.torch import load as load_safetensors
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

from pipeline.training.config import MISSING_VGG_MESSAGE, RANDOM_VGG, VGG_LAYERS, LossWeights
from sprdiff.evaluation.metrics import HAARPSI_SCALES

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RANDOM_VGG_SEED = 16


def estimated_bpp(likelihoods: dict[str, torch.Tensor], num_pixels: int) -> torch.Tensor:
    """Σ −log2 p over every latent (y and z), divided by the number of image pixels."""
    bits = sum(torch.log(p.float()).sum() for p in likelihoods.values()) / -math.log(2)
    return bits / num_pixels


def estimated_bpp_per_sample(likelihoods: dict[str, torch.Tensor], pixels_per_image: int) -> torch.Tensor:
    """(B,): each sample's Σ −log2 p over every latent, divided by its pixels."""
    bits = sum(torch.log(p.float()).flatten(1).sum(1) for p in likelihoods.values()) / -math.log(2)
    return bits / pixels_per_image


def rate_term(likelihoods: dict[str, torch.Tensor], x: torch.Tensor, lambda_rate: float | torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """(λ_b·R, R): the weighted rate and the mean bpp. ``lambda_rate`` is one λ_b, or one per sample
    (B,) when the samples are coded at several rate points (``rate_points``)."""
    if isinstance(lambda_rate, torch.Tensor):
        per_sample = estimated_bpp_per_sample(likelihoods, x.shape[2] * x.shape[3])
        return (lambda_rate.to(per_sample) * per_sample).mean(), per_sample.mean()
    bpp = estimated_bpp(likelihoods, x.shape[0] * x.shape[2] * x.shape[3])
    return lambda_rate * bpp, bpp


class VGGFeatures(nn.Module):
    """φ: torchvision's VGG16 ``features`` up to ``layer`` (e.g. relu3_3), frozen, ImageNet
    normalisation inside. Only the convolutional part is built (the 120M-parameter classifier
    is never allocated)."""

    def __init__(self, weights: str | None, layer: str = "relu3_3"):
        super().__init__()
        if weights is None:
            raise ValueError(MISSING_VGG_MESSAGE)
        last = VGG_LAYERS[layer]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_VGG_SEED)  # identical random VGG in every worker
            self.features = make_layers(cfgs["D"], batch_norm=False)[: last + 1]  # cfgs["D"] is VGG16
            for module in self.features.modules():
                if isinstance(module, nn.Conv2d):  # torchvision's VGG initialisation
                    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                    nn.init.zeros_(module.bias)
        if weights != RANDOM_VGG:
            self.features.load_state_dict(_features_state(_read_state(weights), last), strict=True)
        self.features.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.eval()

    def train(self, mode: bool = True) -> VGGFeatures:
        return super().train(False)  # always in eval mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, H, W) in [0, 1] -> features (B, C, H/4, W/4) for relu3_3."""
        return self.features((x - self.mean) / self.std)


def _read_state(uri: str) -> dict[str, torch.Tensor]:
    with fsspec.open(uri, "rb") as f:
        blob = f.read()
    if Path(uri).suffix == ".safetensors":
        return load_safetensors(blob)
    return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)  # tensors only, no code


def _features_state(state: dict[str, torch.Tensor], last: int) -> dict[str, torch.Tensor]:
    """The ``features.N.*`` entries (N <= last) of a vgg16 state dict, or of a features-only one."""
    prefix = "features." if any(k.startswith("features.") for k in state) else ""
    out = {}
    for key, value in state.items():
        index = key[len(prefix):].split(".")[0]
        if key.startswith(prefix) and index.isdigit() and int(index) <= last:
            out[key[len(prefix):]] = value
    return out


def opponent_chroma(x: torch.Tensor) -> torch.Tensor:
    """The two colour-opponent channels of RGB images (B, 3, H, W): R − G and B − (R + G)/2."""
    r, g, b = x.unbind(1)
    return torch.stack([r - g, b - (r + g) / 2], 1)


def chroma_mse(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """MSE of the colour-opponent channels: the colour error, without the luminance error."""
    return F.mse_loss(opponent_chroma(x_hat), opponent_chroma(x))


def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating GAN, discriminator side: softplus(−D(x)) + softplus(D(x̂))."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating GAN, generator side: softplus(−D(x̂)) = −log σ(D(x̂))."""
    return F.softplus(-fake_logits).mean()


def ms_ssim_loss(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """1 − MS-SSIM (5 scales). Crops too small for the 11x11 window get the largest odd window
    that fits pytorch_msssim's bound: shorter side > (window − 1)·16."""
    window = min(11, (min(x.shape[-2:]) - 1) // 16 + 1)
    window -= 1 - window % 2
    if window < 3:
        raise ValueError(f"MS-SSIM needs crops of at least 33 px, got {tuple(x.shape[-2:])}")
    return 1 - pytorch_msssim.ms_ssim(x_hat, x, data_range=1.0, win_size=window)


def haarpsi_loss(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """1 − HaarPSI at the scales ``sprdiff eval`` scores (piq), on crops of at least 32 px.
    x̂ is clamped because piq rejects any value outside [0, 1]."""
    if min(x.shape[-2:]) < 32:
        raise ValueError(f"HaarPSI needs crops of at least 32 px, got {tuple(x.shape[-2:])}")
    return 1 - piq.haarpsi(x_hat.clamp(0, 1), x, data_range=1.0, scales=HAARPSI_SCALES)


def codec_loss(x: torch.Tensor, out: dict, vgg: VGGFeatures | None, weights: LossWeights,
               lambda_rate: float | torch.Tensor, fake_logits: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The codec's total loss and each term (unweighted), from the model's training output.
    Terms whose weight is 0 and that cost a network pass (VGG16, MS-SSIM, HaarPSI) are left out.
    ``lambda_rate``: λ_b, or one per sample (B,) (see :func:`rate_term`)."""
    x_hat, x_bar = out["x_hat"].float(), out["x_bar"].float()
    weighted_rate, bpp = rate_term(out["likelihoods"], x, lambda_rate)
    terms = {"mse_x_hat": F.mse_loss(x_hat, x), "mse_x_bar": F.mse_loss(x_bar, x), "bpp": bpp}
    total = weights.mse_x_hat * terms["mse_x_hat"] + weights.mse_x_bar * terms["mse_x_bar"] + weighted_rate
    if weights.perceptual > 0:
        if vgg is None:
            raise ValueError("the perceptual term has a weight but no VGG16 was built")
        terms["perceptual"] = F.mse_loss(vgg(x_hat).float(), vgg(x).float())
        total = total + weights.perceptual * terms["perceptual"]
    if weights.ms_ssim > 0:
        terms["ms_ssim"] = ms_ssim_loss(x_hat, x)
        total = total + weights.ms_ssim * terms["ms_ssim"]
    if weights.haarpsi > 0:
        terms["haarpsi"] = haarpsi_loss(x_hat, x)
        total = total + weights.haarpsi * terms["haarpsi"]
    if fake_logits is not None:
        terms["adversarial"] = generator_loss(fake_logits.float())
        total = total + weights.adversarial * terms["adversarial"]
    return total, terms
