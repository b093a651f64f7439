"""The pretrained components of SPRDiff, built from a config or loaded from a source.

* VAE (encoder with LoRA, frozen decoder) and UNet (LoRA): diffusers.
* Semantic encoder: DINOv2 from transformers.
* Distortion-oriented transforms ``g_a``/``g_s``: a CompressAI codec.

``load_*`` functions take a source (local dir, object-store URI or hub id, with an
optional ``#subfolder``) and return the module and its architecture config, so a saved
SPRDiff directory can rebuild the same architecture without the source.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from compressai.zoo import image_models, load_state_dict
from compressai.zoo.image import model_architectures
from diffusers import AutoencoderKL, UNet2DConditionModel
from peft import LoraConfig, inject_adapter_in_model
from safetensors.torch import load_file
from torch import nn
from transformers import Dinov2Config, Dinov2Model

from sprdiff import storage
from sprdiff.checkpointing import checkpointable

VAE_ENCODER_LORA_TARGETS = ["conv_in", "conv1", "conv2", "conv_shortcut", "to_q", "to_k", "to_v", "to_out.0"]
UNET_LORA_TARGETS = ["conv1", "conv2", "conv_shortcut", "to_q", "to_k", "to_v", "to_out.0", "proj_in",
                     "proj_out", "ff.net.0.proj", "ff.net.2"]
ZOO_PREFIX = "compressai-zoo:"


def _plain_config(config: Any) -> dict[str, Any]:
    """A JSON-able dict of a diffusers/transformers config, without private bookkeeping keys."""
    data = dict(config.to_dict() if hasattr(config, "to_dict") else config)
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in data.items() if not k.startswith("_")}


# ---- VAE and UNet (diffusers)

def build_vae(config: dict[str, Any]) -> AutoencoderKL:
    return AutoencoderKL.from_config(config)


def load_vae(source: str, cache_dir: Path | None = None) -> tuple[AutoencoderKL, dict[str, Any]]:
    location, subfolder = storage.resolve(source, cache_dir)
    vae = AutoencoderKL.from_pretrained(location, subfolder=subfolder)
    return vae, _plain_config(vae.config)


def build_unet(config: dict[str, Any]) -> UNet2DConditionModel:
    return UNet2DConditionModel.from_config(config)


def load_unet(source: str, cache_dir: Path | None = None) -> tuple[UNet2DConditionModel, dict[str, Any]]:
    location, subfolder = storage.resolve(source, cache_dir)
    unet = UNet2DConditionModel.from_pretrained(location, subfolder=subfolder)
    return unet, _plain_config(unet.config)


# ---- DINOv2 (transformers)

def build_dino(config: dict[str, Any]) -> Dinov2Model:
    return Dinov2Model(Dinov2Config(**config))


def load_dino(source: str, cache_dir: Path | None = None) -> tuple[Dinov2Model, dict[str, Any]]:
    location, subfolder = storage.resolve(source, cache_dir)
    model = Dinov2Model.from_pretrained(location, subfolder=subfolder) if subfolder else \
        Dinov2Model.from_pretrained(location)
    keep = {"hidden_size", "num_hidden_layers", "num_attention_heads", "mlp_ratio", "patch_size", "image_size",
            "num_channels", "layerscale_value", "use_swiglu_ffn", "layer_norm_eps", "hidden_act", "qkv_bias"}
    return model, {k: v for k, v in _plain_config(model.config).items() if k in keep}


# ---- distortion-oriented codec (CompressAI)

class DistortionTransforms(nn.Module):
    """The analysis/synthesis pair (``g_a``, ``g_s``) of a pretrained MSE codec, each able to checkpoint
    its blocks (``sprdiff.checkpointing``; same children and state-dict keys as CompressAI's)."""

    def __init__(self, g_a: nn.Module, g_s: nn.Module, channels: int):
        super().__init__()
        self.g_a = checkpointable(g_a, blockwise=True)
        self.g_s = checkpointable(g_s, blockwise=True)
        self.channels = channels


def build_distortion(config: dict[str, Any]) -> DistortionTransforms:
    arch = config["arch"]
    if arch not in model_architectures:
        raise ValueError(f"unknown CompressAI architecture {arch!r}; known: {sorted(model_architectures)}")
    kwargs = {k: v for k, v in config.items() if k in ("N", "M")}
    codec = model_architectures[arch](**kwargs)
    return DistortionTransforms(codec.g_a, codec.g_s, channels=config.get("M", config["N"]))


def load_distortion(source: str, config: dict[str, Any],
                    cache_dir: Path | None = None) -> tuple[DistortionTransforms, dict[str, Any]]:
    """``compressai-zoo:<arch>/<quality>`` (CompressAI's own download), or a state-dict file."""
    if source.startswith(ZOO_PREFIX):
        arch, _, quality = source[len(ZOO_PREFIX):].partition("/")
        codec = image_models[arch](quality=int(quality), metric="mse", pretrained=True)
        n = codec.g_a[-1].out_channels
        return DistortionTransforms(codec.g_a, codec.g_s, channels=n), {"arch": arch, "N": n}
    location, subfolder = storage.resolve(source, cache_dir)
    path = Path(location) / subfolder if subfolder else Path(location)
    if path.suffix == ".safetensors":
        state = load_file(str(path))
    else:  # CompressAI's zoo files are torch archives: read tensors only, never pickled code
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)
        state = load_state_dict(state)  # CompressAI's renaming of legacy keys
    transforms = build_distortion(config)
    sub = {k: v for k, v in state.items() if k.startswith(("g_a.", "g_s."))}
    missing, unexpected = transforms.load_state_dict(sub, strict=False)
    if missing or unexpected:
        raise ValueError(f"distortion codec weights at {source} do not fit {config}: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return transforms, dict(config)


# ---- LoRA (peft)

def add_lora(module: nn.Module, rank: int, targets: list[str], init: str) -> nn.Module:
    """Inject LoRA adapters of ``rank`` into ``module``'s layers named in ``targets``.

    ``init="zero"`` starts the adapters as the identity (a pretrained base is untouched);
    ``"random"`` makes them contribute from the start (toy models exercise the path).
    """
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, init_lora_weights=(init == "zero"))
    return inject_adapter_in_model(config, module)
