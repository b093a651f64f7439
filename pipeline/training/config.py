"""Training configuration: frozen dataclasses read from a JSON file (``jobs/configs/train_default.json``).

The file is the single source of the defaults (the paper's λ values, loss weights and
schedules); every key must be present and no unknown key is accepted, so a typo fails
early. A user file is merged over the default one with :func:`merge`; CLI flags then
override a few keys with :func:`TrainConfig.with_overrides`.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import fsspec

PRETRAINED_COMPONENTS = ("vae", "unet", "dino", "distortion")  # SPRDiff attributes the paper freezes
VGG_LAYERS = {"relu1_2": 3, "relu2_2": 8, "relu3_3": 15, "relu4_3": 22}  # index in torchvision's vgg16.features
RANDOM_VGG = "random"  # toy runs and tests: a seeded random VGG16 of the same architecture
MISSING_VGG_MESSAGE = (
    "the perceptual loss needs VGG16 weights: set \"vgg_weights\" in the training config (or pass --vgg-weights) "
    "to a local path or URI of torchvision's vgg16 state dict (.safetensors, or a .pth such as the "
    "vgg16-397923af.pth torchvision downloads, read with weights_only=True); \"random\" gives a random VGG16 "
    "for toy runs and tests only")


@dataclass(frozen=True)
class DataConfig:
    crop: int  # side of the random square crops; a multiple of 64 (the model's padding multiple)
    batch_size: int  # per worker
    loader_workers: int  # torch DataLoader processes per Ray worker (0: read in the training process)
    shuffle_buffer: int  # samples held for shuffling across shard members
    sample_log: bool  # write each step's sample keys per rank under OUTPUT/samples/ (audits, resume checks)

    def __post_init__(self):
        if self.crop <= 0 or self.crop % 64:
            raise ValueError(f"data.crop must be a positive multiple of 64, got {self.crop}")
        if self.batch_size < 1 or self.loader_workers < 0 or self.shuffle_buffer < 1:
            raise ValueError(f"data: batch_size >= 1, loader_workers >= 0, shuffle_buffer >= 1; got {self}")


@dataclass(frozen=True)
class OptimizerConfig:
    betas: tuple[float, float]
    weight_decay: float
    grad_clip: float  # max global norm of the main parameters' gradients (0: off)
    aux_lr: float  # CompressAI's auxiliary optimizer (EntropyBottleneck quantiles)


@dataclass(frozen=True)
class LossWeights:
    mse_x_hat: float  # ‖x̂ − x‖²
    perceptual: float  # ‖φ(x̂) − φ(x)‖², φ = VGG16 features (0: VGG16 is never built)
    mse_x_bar: float  # ‖x̄ − x‖² (coarse image)
    adversarial: float  # non-saturating generator loss (stage 2)
    ms_ssim: float  # 1 − MS-SSIM(x̂, x): a weight-free structural term (models trained without VGG16)
    haarpsi: float  # 1 − HaarPSI(x̂, x): a weight-free perceptual term on Haar edges (piq)


@dataclass(frozen=True)
class PretrainConfig:
    """Stage 0: the parts the paper takes pretrained, trained here on reconstruction, for models
    built without outside weights (``demo``). Each part has its own loss; they share the batch."""

    steps: int
    lr: float
    lr_drops: tuple[tuple[int, float], ...]
    vae_kl: float  # KL weight of the autoencoder; terms normalised per image element (SD uses 1e-6)
    vae_chroma: float  # extra weight on the autoencoder's colour error (opponent channels R−G, B−(R+G)/2)
    vae_latent: str  # what the VAE decoder reconstructs from: "sample" of the posterior (SD) or its "mean"
    distortion_lambda: float  # CompressAI's MSE codec loss: λ·255²·MSE + bpp (quality 1 uses 0.0018)
    mask_ratio: float  # semantic encoder: share of patches masked for masked-patch prediction

    def __post_init__(self):
        if self.steps < 1 or self.lr <= 0:
            raise ValueError(f"stage0 steps must be >= 1 and lr > 0, got steps={self.steps}, lr={self.lr}")
        if self.vae_chroma < 0:
            raise ValueError(f"stage0.vae_chroma must be >= 0, got {self.vae_chroma}")
        if self.vae_latent not in ("sample", "mean"):
            raise ValueError(f'stage0.vae_latent must be "sample" or "mean", got {self.vae_latent!r}')
        if not 0 < self.mask_ratio < 1:
            raise ValueError(f"stage0.mask_ratio must be in (0, 1), got {self.mask_ratio}")


@dataclass(frozen=True)
class RatePoint:
    """One rate point of a model trained jointly over several (``sprdiff.rates``); its place in
    ``rate_points`` is its rate id."""

    lambda_rate: float  # λ_b of the samples coded at this rate
    init_gain: float  # scalar gain it starts from when a one-rate model is given rate points

    def __post_init__(self):
        if not self.lambda_rate > 0 or not self.init_gain > 0:
            raise ValueError(f"rate points need lambda_rate > 0 and init_gain > 0, got {self}")


@dataclass(frozen=True)
class StageConfig:
    steps: int
    lr: float
    lr_drops: tuple[tuple[int, float], ...]  # (step, new lr): piecewise-constant schedule
    lambda_rate: float  # λ_b, weight of the estimated bpp
    weights: LossWeights
    rate_ids: dict[str, int]  # λ_b (as written in the file) -> rate id stored in the exported model
    # lr of the hyper-latent's factorized prior (CompressAI EntropyBottleneck density) as a multiple of
    # lr: that density starts wide and, at the main lr, needs far more steps to fit than short runs have
    prior_lr_scale: float
    # several rate points trained jointly, sample by sample in turn (empty: one rate, λ_b = lambda_rate);
    # lambda_rate then names the model's default rate and must be one of theirs
    rate_points: tuple[RatePoint, ...] = ()
    # lr of the rate points' own parameters (gains, inverse gains, the entropy model's per-rate side
    # offsets) as a multiple of lr: few numbers that decide each rate's bits, barely moved at the main lr
    rate_lr_scale: float = 1.0

    def __post_init__(self):
        if self.steps < 1 or self.lr <= 0:
            raise ValueError(f"stage steps must be >= 1 and lr > 0, got steps={self.steps}, lr={self.lr}")
        if self.prior_lr_scale <= 0:
            raise ValueError(f"prior_lr_scale must be > 0, got {self.prior_lr_scale}")
        if self.rate_lr_scale <= 0:
            raise ValueError(f"rate_lr_scale must be > 0, got {self.rate_lr_scale}")
        if list(self.lr_drops) != sorted(self.lr_drops):
            raise ValueError(f"lr_drops must be sorted by step: {self.lr_drops}")
        if self.rate_points:
            lambdas = [p.lambda_rate for p in self.rate_points]
            if len(self.rate_points) < 2 or len(self.rate_points) > 16:
                raise ValueError(f"rate_points: 2 to 16 rate points (a rate id has 4 bits), got {len(lambdas)}")
            if float(self.lambda_rate) not in lambdas:
                raise ValueError(f"lambda_rate {self.lambda_rate} must be one of the rate points' {lambdas}: it "
                                 f"names the model's default rate")

    def lr_at(self, step: int) -> float:
        """Learning rate used for the update that makes ``step`` (0-based count of finished steps)."""
        lr = self.lr
        for at, value in self.lr_drops:
            if step >= at:
                lr = value
        return lr

    def rate_id_for(self, lambda_rate: float) -> int | None:
        if self.rate_points:  # a rate point's id is its place in the list
            return [p.lambda_rate for p in self.rate_points].index(float(lambda_rate))
        for key, rate_id in self.rate_ids.items():
            if float(key) == float(lambda_rate):
                return rate_id
        return None


@dataclass(frozen=True)
class DiscriminatorConfig:
    channels: int  # width of the first PatchGAN layer, doubled per layer
    layers: int  # strided layers
    lr: float  # its lr follows the stage's schedule: lr × stage.lr_at(step) / stage.lr
    betas: tuple[float, float]


VALIDATION_CRITERIA = {"rd_cost": "min", "psnr": "max", "ms_ssim": "max"}  # criterion -> better direction


@dataclass(frozen=True)
class ValidationConfig:
    """Validation during training on a fixed shard set (never a held-out report set)."""

    data: str | None  # URI of the validation shards (made by `sprdiff make-shards`); null: no validation
    every: int  # steps between validations (and at the last step)
    max_images: int  # the first this many samples of the validation shards, in key order
    crop: int  # centre crop side (multiple of 64), so every validation sees the same pixels
    criterion: str  # which score picks the best checkpoint (VALIDATION_CRITERIA)

    def __post_init__(self):
        if self.every < 1 or self.max_images < 1:
            raise ValueError(f"validation.every and validation.max_images must be >= 1, got {self}")
        if self.crop <= 0 or self.crop % 64:
            raise ValueError(f"validation.crop must be a positive multiple of 64, got {self.crop}")
        if self.criterion not in VALIDATION_CRITERIA:
            raise ValueError(f"validation.criterion must be one of {sorted(VALIDATION_CRITERIA)}, "
                             f"got {self.criterion!r}")


@dataclass(frozen=True)
class TrainConfig:
    model: str | None  # where stage 1 starts (preset, directory or URI); stage 2 takes --model
    seed: int
    vgg_weights: str | None  # local path or URI of a torchvision vgg16 state dict, or "random"
    vgg_layer: str
    data: DataConfig
    optimizer: OptimizerConfig
    bf16_on_gpu: bool  # bf16 autocast on CUDA, and frozen weights held in bf16 there
    activation_checkpointing: bool  # recompute activations in the backward pass instead of keeping them
    grad_accum: int  # micro-batches of data.batch_size per update (effective batch: × workers × this)
    tensorboard: bool  # also write the metrics as TensorBoard event files under OUTPUT/tensorboard/
    checkpoint_every: int
    checkpoints_to_keep: int
    progress_every: int
    train_pretrained: tuple[str, ...]  # components whose base weights train in stages 1-2 (no pretrained prior)
    stage0: PretrainConfig
    stage1: StageConfig
    stage2: StageConfig
    discriminator: DiscriminatorConfig
    validation: ValidationConfig

    def __post_init__(self):
        if self.grad_accum < 1:
            raise ValueError(f"grad_accum must be >= 1, got {self.grad_accum}")
        if self.vgg_layer not in VGG_LAYERS:
            raise ValueError(f"vgg_layer must be one of {sorted(VGG_LAYERS)}, got {self.vgg_layer!r}")
        if self.checkpoint_every < 1 or self.checkpoints_to_keep < 1 or self.progress_every < 1:
            raise ValueError("checkpoint_every, checkpoints_to_keep and progress_every must be >= 1")
        unknown = set(self.train_pretrained) - set(PRETRAINED_COMPONENTS)
        if unknown:
            raise ValueError(f"train_pretrained: unknown components {sorted(unknown)}; "
                             f"choose from {list(PRETRAINED_COMPONENTS)}")

    def stage(self, number: int) -> StageConfig:
        if number not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {number}")
        return self.stage1 if number == 1 else self.stage2

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        data = {k: v for k, v in data.items() if not k.startswith("_")}
        return _build(cls, data, "config")

    def with_overrides(self, overrides: dict[str, Any]) -> TrainConfig:
        """``{"stage1.steps": 10, "data.crop": 64}`` -> a new config (dotted keys, checked)."""
        data = self.to_dict()
        for dotted, value in overrides.items():
            *parents, leaf = dotted.split(".")
            node = data
            for part in parents:
                node = node[part]
            if leaf not in node:
                raise KeyError(f"unknown config key {dotted!r}")
            node[leaf] = value
        return TrainConfig.from_dict(data)


def _build(cls, data: Any, where: str):
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be an object, got {data!r}")
    known = {f.name: f for f in fields(cls)}
    unknown = set(data) - set(known)
    missing = set(known) - set(data)
    if unknown or missing:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}")
    nested = {"data": DataConfig, "optimizer": OptimizerConfig, "stage0": PretrainConfig, "stage1": StageConfig,
              "stage2": StageConfig,
              "discriminator": DiscriminatorConfig, "weights": LossWeights, "validation": ValidationConfig}
    values = {}
    for name, value in data.items():
        if name in nested and isinstance(value, dict) and name in known:
            value = _build(nested[name], value, f"{where}.{name}")
        elif name in ("betas",):
            value = tuple(float(v) for v in value)
        elif name == "train_pretrained":
            value = tuple(str(v) for v in value)
        elif name == "lr_drops":
            value = tuple((int(step), float(lr)) for step, lr in value)
        elif name == "rate_ids":
            value = {str(k): int(v) for k, v in value.items()}
        elif name == "rate_points":
            value = tuple(_build(RatePoint, point, f"{where}.rate_points[{i}]") for i, point in enumerate(value))
        values[name] = value
    return cls(**values)


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``update`` over ``base`` (objects merge key by key; anything else replaces)."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "rate_ids":
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_json(uri: str | Path) -> dict[str, Any]:
    with fsspec.open(str(uri), "rt") as f:
        return json.load(f)


def load_config(default_path: str | Path, *user_paths: str | Path) -> TrainConfig:
    """The default file, with each of ``user_paths`` (partial files are fine) merged over it in order."""
    data = read_json(default_path)
    for path in user_paths:
        data = merge(data, read_json(path))
    return TrainConfig.from_dict(data)
