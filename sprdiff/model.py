"""SPRDiff: triple encoder, fusion, latent compressor, reconstruction, one-step diffusion decoder.

Names follow the paper: E_vae, E_doe, E_soe (encoders), Ē (fused), E_l/D_l (latent
compressor), T (transform block), D_doe (distortion decoder), x̄ (coarse image), P
(projector), F_p/F_s (pixel/semantic conditions), ε_θ (UNet), D_vae (frozen VAE decoder).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from compressai.layers import ResidualBlock, subpel_conv3x3
from diffusers import DDPMScheduler
from torch import nn

from sprdiff import checkpointing, decoder, encoder, loading, rate_choice, rates, tiling
from sprdiff.bitstream import Record, RecordHeader
from sprdiff.checkpointing import Checkpointable, CheckpointedSequential, maybe_checkpoint
from sprdiff.config import SPRDiffConfig
from sprdiff.decoder import to_uint8_images  # noqa: F401 - part of this module's interface
from sprdiff.encoder import EncodeSettings, check_image_array  # noqa: F401
from sprdiff.entropy import SpaceChannelEntropyModel
from sprdiff.fusion import Fusion
from sprdiff.model_store import fingerprint_digest  # one definition of a fingerprint, also used on saved files

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1)


@dataclass
class EncodedImage:
    """What the latent compressor produced for one image (before it became bytes)."""

    string: bytes
    y_hat: torch.Tensor  # (1, M, h, w)
    width: int
    height: int


class SPRDiff(Checkpointable, nn.Module):
    """The codec. Build it with :meth:`from_pretrained` (see ``sprdiff.loading``)."""

    def __init__(self, config: SPRDiffConfig, *, vae: nn.Module, unet: nn.Module, dino: nn.Module,
                 distortion: nn.Module):
        super().__init__()
        self.config = config
        c = config
        latent_ch = vae.config.latent_channels
        dino_dim = dino.config.hidden_size
        # -- encoder side
        self.vae = vae  # E_vae (LoRA on vae.encoder) and D_vae (vae.decoder, frozen)
        self.distortion = distortion  # E_doe = g_a, D_doe = g_s of a pretrained MSE codec (frozen)
        self.dino = dino  # E_soe, used on x at the encoder and on x̄ at the decoder (frozen)
        self.fusion = Fusion(latent_ch, distortion.channels, dino_dim, c.fusion_channels, c.fusion_blocks)
        self.latent_encoder = CheckpointedSequential(  # E_l: Ē -> Y, on the H/16 grid
            conv3x3(c.fusion_channels, c.transform_channels), ResidualBlock(c.transform_channels, c.transform_channels),
            conv3x3(c.transform_channels, c.latent_channels))
        self.entropy = SpaceChannelEntropyModel(c.latent_channels, c.entropy_groups, c.hyper_channels,
                                                exact=c.exact_entropy, rates=c.rates)
        if c.rates > 1:  # gain vectors of the rate points (sprdiff.rates); one-rate models have none
            self.rate_gains = rates.RateGains(c.rates, c.latent_channels)
        # -- decoder side
        self.latent_decoder = CheckpointedSequential(  # D_l: Ŷ -> Ê in the SD latent space (H/8, 4 ch)
            conv3x3(c.latent_channels, c.transform_channels), ResidualBlock(c.transform_channels, c.transform_channels),
            subpel_conv3x3(c.transform_channels, latent_ch, 2))
        self.transform = CheckpointedSequential(  # T: Ŷ -> input space of D_doe
            conv3x3(c.latent_channels, c.transform_channels), ResidualBlock(c.transform_channels, c.transform_channels),
            conv3x3(c.transform_channels, distortion.channels))
        self.projector = CheckpointedSequential(  # P: x̄ -> F_p on the latent grid
            conv3x3(3, c.projector_channels, 2), nn.GELU(), conv3x3(c.projector_channels, c.projector_channels, 2),
            nn.GELU(), conv3x3(c.projector_channels, latent_ch, 2))
        self.semantic_projection = nn.Linear(dino_dim, unet.config.cross_attention_dim)  # F_s -> cross-attn width
        self.unet = unet  # ε_θ with LoRA
        alphas = DDPMScheduler(**c.scheduler_config).alphas_cumprod
        self.register_buffer("alpha_bar", alphas[c.timestep].clone().float(), persistent=False)
        self.register_buffer("image_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self._fingerprint: bytes | None = None

    # ---- loading and saving (sprdiff.loading)

    @classmethod
    def from_pretrained(cls, name_or_uri: str, **kwargs) -> SPRDiff:
        """A preset name (``tiny``, ``sd-turbo``), a local directory or a URI; see ``sprdiff.loading``."""
        return loading.from_pretrained(cls, name_or_uri, **kwargs)

    @classmethod
    def from_config(cls, config: SPRDiffConfig, *, use_sources: bool = False, **kwargs) -> SPRDiff:
        """A model assembled from ``config``: pretrained parts from their sources (``use_sources``) or
        built from their architecture configs, our modules initialised (``sprdiff.loading.build``)."""
        return loading.build(cls, config, use_sources=use_sources, **kwargs)

    def save_pretrained(self, destination: str) -> None:
        loading.save_pretrained(self, destination)

    # ---- identity

    @property
    def model_id(self) -> str:
        return self.config.model_id

    @property
    def fingerprint_bytes(self) -> bytes:
        """SHA-256 of the config and every weight; records carry it (1-byte tag + keyed CRC)."""
        if self._fingerprint is None:
            self._fingerprint = fingerprint_digest(self.config.to_json(), self.state_dict().items())
        return self._fingerprint

    @property
    def fingerprint(self) -> str:
        return self.fingerprint_bytes.hex()

    def invalidate_fingerprint(self) -> None:
        """Call after changing weights (training, export) so the next record uses the new one."""
        self._fingerprint = None

    @property
    def device(self) -> torch.device:
        return self.alpha_bar.device

    # ---- the two halves of the model, on padded float images in [0, 1]

    def semantic_input(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """x (B, 3, H, W) in [0, 1] resized so its long side is ``semantic_resolution`` (sides
        multiples of the patch size) and ImageNet-normalised, and its token grid (h, w)."""
        patch = self.dino.config.patch_size
        scale = self.config.semantic_resolution / max(x.shape[-2:])
        grid = tuple(max(1, round(s * scale / patch)) for s in x.shape[-2:])
        x = F.interpolate(x.float(), size=(grid[0] * patch, grid[1] * patch), mode="bilinear", align_corners=False,
                          antialias=True)
        return (x - self.image_mean) / self.image_std, grid

    def semantic_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """DINOv2 tokens (B, 1 + h*w, D) of x (B, 3, H, W) and the token grid (h, w)."""
        pixels, grid = self.semantic_input(x)
        # transformers checkpoints DINOv2's layers in training mode only; a frozen DINOv2 runs in eval
        # mode yet is in the gradient path on x̄, so with checkpointing on it is one piece here
        one_piece = self.activation_checkpointing and not self.dino.training
        return maybe_checkpoint(one_piece, self._dino_tokens, pixels), grid

    def _dino_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.dino(pixel_values=pixels).last_hidden_state

    def semantic_map(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens of x reshaped to a map (B, D, h, w) (the CLS token is dropped)."""
        tokens, (h, w) = self.semantic_tokens(x)
        return tokens[:, 1:].transpose(1, 2).reshape(x.shape[0], -1, h, w)

    def analysis(self, x: torch.Tensor, tile_size: int | None = None) -> torch.Tensor:
        """x (B, 3, H, W) in [0, 1], sides multiples of ``pad_multiple`` -> Y (B, M, H/16, W/16).
        ``tile_size``: run the full-resolution networks on overlapping tiles (``sprdiff.tiling``)."""
        with tiling.vae_tiles(self.vae, tile_size):
            e_vae = self.vae.encode(x * 2 - 1).latent_dist.mean * self.vae.config.scaling_factor
        if tiling.needs_tiling(x, tile_size):
            e_doe = tiling.crop_tiled(self.distortion.g_a, x, tile_size, tiling.G_A_MARGIN, (1, 16))
        else:
            e_doe = self.distortion.g_a(x)
        e_soe = self.semantic_map(x)  # global: DINOv2 sees the whole image, resized
        return self.latent_encoder(self.fusion(e_vae, e_doe, e_soe))

    def synthesis(self, y_hat: torch.Tensor, tile_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Ŷ (B, M, H/16, W/16) -> (x̂, x̄), both (B, 3, H, W) in [0, 1]. ``tile_size``: as for
        :meth:`analysis`; every UNet tile attends to the same F_s, taken from the whole x̄."""
        tiled = bool(tile_size) and max(y_hat.shape[-2:]) * 16 > tile_size
        e_hat = self.latent_decoder(y_hat)  # Ê
        if tiled:
            x_bar = tiling.crop_tiled(self.distortion.g_s, self.transform(y_hat), tile_size // 16, tiling.G_S_MARGIN,
                                      (16, 1)).clamp(0, 1)
            f_p = tiling.crop_tiled(self.projector, x_bar * 2 - 1, tile_size, tiling.PROJECTOR_MARGIN, (1, 8))
        else:
            x_bar = self.distortion.g_s(self.transform(y_hat)).clamp(0, 1)  # x̄ = D_doe(T(Ŷ))
            f_p = self.projector(x_bar * 2 - 1)
        f_s = self.semantic_projection(self.semantic_tokens(x_bar)[0])
        z_t = e_hat + f_p
        t = torch.full((z_t.shape[0],), self.config.timestep, device=z_t.device, dtype=torch.long)

        def epsilon(z: torch.Tensor) -> torch.Tensor:
            return self.unet(z, t, encoder_hidden_states=f_s).sample

        if tiled:
            latent_tile = tile_size // 8
            eps = tiling.blend_tiled(epsilon, z_t, latent_tile, tiling.latent_overlap(latent_tile))
        else:
            eps = epsilon(z_t)
        z_0 = (z_t - (1 - self.alpha_bar).sqrt() * eps) / self.alpha_bar.sqrt()
        with tiling.vae_tiles(self.vae, tile_size):
            x_hat = self.vae.decode(z_0 / self.vae.config.scaling_factor).sample
        return ((x_hat + 1) / 2).clamp(0, 1), x_bar

    # ---- rate points (sprdiff.rates): identity for one-rate models

    @property
    def rate_ids(self) -> tuple[int, ...]:
        """The rate ids this model codes at (records of every one decode with it)."""
        return rate_choice.rate_ids(self.config)

    def scale_latent(self, y: torch.Tensor, rate: int | torch.Tensor) -> torch.Tensor:
        """Y -> what the entropy model codes at ``rate`` (an int, or one per sample)."""
        return self.rate_gains.scale(y, rate) if self.config.rates > 1 else y

    def unscale_latent(self, y_hat: torch.Tensor, rate: int | torch.Tensor) -> torch.Tensor:
        """The entropy model's Ŷ at ``rate`` -> what synthesis takes."""
        return self.rate_gains.unscale(y_hat, rate) if self.config.rates > 1 else y_hat

    def coding_rate(self, rate: int | None) -> int | None:
        """The rate the entropy model is told: None for one-rate models (they have no side offsets)."""
        return rate_choice.check_rate(self.config, rate) if self.config.rates > 1 else None

    def forward(self, x: torch.Tensor, rate: int | torch.Tensor | None = None) -> dict:
        """Training pass: ``{"x_hat", "x_bar", "likelihoods": {"y", "z"}, "y_hat"}``. ``rate``: the
        rate id of the whole batch or of each sample (B,); None: the model's default."""
        if rate is None:
            rate = self.config.rate_id
        multi = self.config.rates > 1
        y = self.scale_latent(self.analysis(x), rate)
        coded = self.entropy(y, rate if multi else None)
        y_hat = self.unscale_latent(coded["y_hat"], rate)
        x_hat, x_bar = self.synthesis(y_hat)
        return {"x_hat": x_hat, "x_bar": x_bar, "likelihoods": coded["likelihoods"], "y_hat": y_hat}

    # ---- images <-> records (sprdiff.encoder decides the bytes, sprdiff.decoder reads them)

    def pad(self, image: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 -> (1, 3, H', W') in [0, 1], replicate-padded to ``pad_multiple``."""
        return encoder.pad(image, self.config.pad_multiple, self.device)

    @torch.no_grad()
    def encode_image(self, image: np.ndarray, rate: int | None = None) -> EncodedImage:
        """One image's latent code at ``rate`` (default: the model's), before it becomes a record;
        ``y_hat`` is what synthesis takes."""
        rate = rate_choice.check_rate(self.config, rate)
        y = self.scale_latent(self.analysis(self.pad(image)), rate)
        string, y_hat = self.entropy.compress(y, self.coding_rate(rate))
        return EncodedImage(string=string, y_hat=self.unscale_latent(y_hat, rate), width=image.shape[1],
                            height=image.shape[0])

    def encode(self, images: list[np.ndarray], settings: EncodeSettings | None = None) -> list[Record]:
        """(H, W, 3) uint8 arrays of any sizes -> one record each, with its header (``sprdiff.encoder``)."""
        return encoder.encode(self, images, settings or EncodeSettings())

    def compress(self, images: list[np.ndarray], *, colour_correction: bool = True, batch_size: int = 1,
                 precision: str = "fp32", tile_size: int | None = tiling.DEFAULT_TILE_SIZE, rate: int | None = None,
                 target_bpp: float | None = None) -> list[bytes]:
        """(H, W, 3) uint8 arrays of any sizes -> one record's bytes each.

        With ``colour_correction`` (the default) the encoder also decodes each image and sends
        the side channels that bring its colours closest to the original's, each when its gain is
        worth its bytes: the affine colour map (``sprdiff.colour``), then a coarse grid of RGB
        offsets (``sprdiff.offset_grid``). That decode about doubles the encoding time;
        ``False`` skips it. ``batch_size``: see ``sprdiff.encoder`` (1: bytes independent of the
        other images in the call); ``precision``: ``fp32`` or ``bf16`` (``sprdiff.precision``);
        ``tile_size``: images with a padded side above it run on overlapping tiles (``sprdiff.tiling``);
        ``rate``: one of :attr:`rate_ids` (default: ``config.rate_id``); ``target_bpp``: instead of a rate,
        a budget in bits per pixel: each image gets the rate whose record is the largest within it.
        """
        settings = EncodeSettings(side_information=colour_correction, batch_size=batch_size, precision=precision,
                                  tile_size=tile_size, rate=rate, target_bpp=target_bpp)
        return [record.data for record in self.encode(images, settings)]

    def parse(self, record: bytes) -> tuple[RecordHeader, bytes]:
        """Verify one record for this model; raises :class:`BitstreamError` on any problem."""
        return decoder.parse(self, record)

    def decode_latents(self, record: bytes) -> tuple[RecordHeader, torch.Tensor]:
        return decoder.decode_latents(self, record)

    def decompress(self, records: list[bytes], batch_size: int = 1, precision: str = "fp32",
                   tile_size: int | None = tiling.DEFAULT_TILE_SIZE) -> list[np.ndarray]:
        """Records -> (H, W, 3) uint8 arrays at their original sizes (``sprdiff.decoder``).

        Every record is verified before any decoding. With the default ``batch_size=1`` each
        image is synthesised alone, so its pixels never depend on the other records in the call.
        ``tile_size``: synthesis of images with a padded side above it runs on overlapping tiles
        (``sprdiff.tiling``); any tile size decodes any record.
        """
        return decoder.decode(self, records, batch_size, precision, tile_size)

    def output_pixels(self, x_hat: torch.Tensor, header: RecordHeader) -> np.ndarray:
        return decoder.output_pixels(x_hat, header)

    # ---- training helpers

    def enable_activation_checkpointing(self) -> None:
        """Recompute activations in the backward pass instead of keeping them (``sprdiff.checkpointing``):
        VAE and UNet blocks, DINOv2, g_a/g_s blocks, fusion, E_l, D_l, T and P. Same results, about
        one more forward's compute; the entropy model (small, on the H/16 grid) keeps its activations."""
        checkpointing.enable(self)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def freeze_pretrained(self) -> None:
        """Freeze what the paper freezes: VAE (but its encoder LoRA), UNet base, DINOv2, g_a/g_s."""
        for name, p in self.named_parameters():
            pretrained = name.startswith(("vae.", "unet.", "dino.", "distortion."))
            p.requires_grad_(not pretrained or "lora_" in name)
