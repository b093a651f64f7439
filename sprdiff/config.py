"""Model configuration: one frozen dataclass, saved as ``config.json`` beside the weights.

A config says what every component is. Pretrained components (VAE, UNet, DINOv2,
distortion codec) carry either their full architecture config (``*_config``; the saved
model directory holds their weights) or a *source* to load them from (``*_source``:
local directory, object-store URI or hub id) the first time a model is assembled.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


# Fields newer than saved models, with the default that old models implicitly have.
OMITTED_AT_DEFAULT = {"rates": 1}


@dataclass(frozen=True)
class SPRDiffConfig:
    model_id: str
    # -- pretrained components: architecture config and/or where the weights come from
    vae_config: dict[str, Any] = field(default_factory=dict)  # diffusers AutoencoderKL
    unet_config: dict[str, Any] = field(default_factory=dict)  # diffusers UNet2DConditionModel
    dino_config: dict[str, Any] = field(default_factory=dict)  # transformers Dinov2Config
    distortion_config: dict[str, Any] = field(default_factory=dict)  # {"arch": ..., "N": ..., "M": ...}
    vae_source: str | None = None  # dir / s3://... / hub id (+ "#subfolder")
    unet_source: str | None = None
    dino_source: str | None = None
    distortion_source: str | None = None  # state-dict file, or "compressai-zoo:<arch>/<quality>"
    scheduler_config: dict[str, Any] = field(default_factory=lambda: {
        "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"})
    # -- our modules
    fusion_channels: int = 192
    fusion_blocks: int = 2  # pairs of (InceptionNeXt, Gated-CNN) blocks in M
    latent_channels: int = 320  # channels of Y
    entropy_groups: tuple[int, ...] = (16, 16, 32, 64, 192)  # uneven ELIC groups, sum = latent_channels
    hyper_channels: int = 192
    exact_entropy: bool = True  # entropy parameters in exact integer arithmetic (decodable on any device)
    transform_channels: int = 192  # width of T and D_l
    projector_channels: int = 64  # width of P
    semantic_resolution: int = 448  # long side (px) of the DINOv2 input
    lora_vae_rank: int = 16
    lora_unet_rank: int = 32
    latent_init_gain: float = 1.0  # toy models: scale the random E_l output so the code carries information
    lora_init: str = "zero"  # "zero": adapters start as identity (pretrained base); "random": toy models
    # -- coding
    timestep: int = 999  # fixed timestep of the one-step diffusion (ours: configurable)
    rate_id: int = 0  # one-rate models: the rate id of every record; several rates: the default one
    rates: int = 1  # rate points (sprdiff.rates): above 1, per-rate gain vectors choose them by the record's rate id
    init_seed: int | None = None  # set for presets random-initialised from a fixed seed
    pad_multiple: int = 64  # image sides are padded to this: fusion grid H/16, hyper-latent H/64

    def __post_init__(self):
        if sum(self.entropy_groups) != self.latent_channels:
            raise ValueError(f"entropy_groups {self.entropy_groups} must sum to latent_channels "
                             f"{self.latent_channels}")
        if not 0 <= self.timestep < self.scheduler_config["num_train_timesteps"]:
            raise ValueError(f"timestep {self.timestep} is outside the scheduler's "
                             f"0..{self.scheduler_config['num_train_timesteps'] - 1}")
        if self.lora_init not in ("zero", "random"):
            raise ValueError(f"lora_init must be 'zero' or 'random', got {self.lora_init!r}")
        if not 0 <= self.rate_id <= 15:
            raise ValueError(f"rate_id must be in 0..15, got {self.rate_id}")
        if not 1 <= self.rates <= 16:
            raise ValueError(f"rates must be in 1..16 (a record's rate id has 4 bits), got {self.rates}")
        if self.rates > 1 and self.rate_id >= self.rates:
            raise ValueError(f"rate_id (the default rate) must be one of the model's rates 0..{self.rates - 1}, "
                             f"got {self.rate_id}")

    def to_json(self) -> str:
        """The config as saved and fingerprinted. Fields added after models were saved are left out
        at their defaults, so a model saved before them keeps its config text and fingerprint."""
        data = asdict(self)
        for name, default in OMITTED_AT_DEFAULT.items():
            if data[name] == default:
                del data[name]
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SPRDiffConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown config keys {sorted(unknown)}: this config was written by a newer "
                             f"sprdiff, or by hand with a typo")
        data = dict(data)
        if "entropy_groups" in data:
            data["entropy_groups"] = tuple(data["entropy_groups"])
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> SPRDiffConfig:
        return cls.from_dict(json.loads(text))

    def replace(self, **changes: Any) -> SPRDiffConfig:
        return replace(self, **changes)
