"""Named presets: a config plus where its weights come from.

* ``tiny``: every component at toy width, random-initialised from a fixed seed (tests, CI).
* ``demo-init``: the full architecture at a width that trains on two CPU cores, random-initialised
  from a fixed seed: where ``jobs/configs/demo.sh`` starts (``sprdiff train --stage 0``).
* ``demo``: that architecture after our own training (stages 0, 1, 2 on ``shared/data/photos``, then
  three rate points), shipped as a model directory inside the package (:data:`SHIPPED_MODELS`);
  the demos it replaced ship too, under the date they shipped, so that their records still decode:
  ``demo-2026-12-07`` (the same three rate points after 1,200 joint steps) and ``demo-2026-12-03``
  (one rate).
* ``sd-turbo``: the paper's sizes; pretrained components come from the sources in its
  config (hub ids by default; point them at local dirs or ``s3://`` copies with
  :func:`sd_turbo_config`). Its architecture configs live in ``presets/sd_turbo.json`` so
  the full-size model can be built with random weights without any download.
"""

from __future__ import annotations

import json
from pathlib import Path

import fsspec

from sprdiff.config import CONFIG_NAME, SPRDiffConfig

_HERE = Path(__file__).parent / "preset_configs"


def tiny_config() -> SPRDiffConfig:
    return SPRDiffConfig(
        model_id="sprdiff-tiny",
        vae_config={
            "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 1,
            "block_out_channels": [8, 16, 16, 16], "norm_num_groups": 4, "sample_size": 64,
            "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
            "scaling_factor": 0.18215,
        },
        unet_config={
            "sample_size": 8, "in_channels": 4, "out_channels": 4, "layers_per_block": 1,
            "block_out_channels": [16, 32], "norm_num_groups": 8, "cross_attention_dim": 32,
            "attention_head_dim": 8, "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
        },
        dino_config={
            "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "mlp_ratio": 2,
            "patch_size": 14, "image_size": 112,
        },
        distortion_config={"arch": "cheng2020-anchor", "N": 16},
        fusion_channels=32,
        fusion_blocks=1,
        latent_channels=32,
        entropy_groups=(4, 4, 8, 16),
        hyper_channels=16,
        transform_channels=32,
        projector_channels=16,
        semantic_resolution=112,
        lora_init="random",
        latent_init_gain=2.0,
        timestep=999,
        init_seed=20260601,
    )


def demo_init_config() -> SPRDiffConfig:
    """The demo model before training. Sized so its safetensors stay under 20 MB.

    No self-attention at the latent's full resolution (VAE mid-block, UNet first level), so
    decoding cost grows linearly with the pixel count. The VAE is narrowest at full resolution,
    where it costs most, with one GroupNorm group (2 channels a group keep only a sign over flat
    regions). Few hyper channels: with 48, the hyper-latent alone cost ~0.027 bpp after a short
    training. Timestep 249 instead of 999: the UNet is trained from scratch, and at t=999 the
    one-step estimate divides by sqrt(alpha_bar) = 0.07, amplifying its errors 14x."""
    return SPRDiffConfig(
        model_id="sprdiff-demo",
        vae_config={
            "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 1,
            "block_out_channels": [8, 16, 32, 48], "norm_num_groups": 1, "sample_size": 128,
            "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
            "scaling_factor": 0.18215, "mid_block_add_attention": False,
        },
        unet_config={
            "sample_size": 24, "in_channels": 4, "out_channels": 4, "layers_per_block": 1,
            "block_out_channels": [32, 48, 48], "norm_num_groups": 8, "cross_attention_dim": 48,
            "attention_head_dim": 8,
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        },
        dino_config={
            "hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4, "mlp_ratio": 2,
            "patch_size": 14, "image_size": 224,
        },
        distortion_config={"arch": "cheng2020-anchor", "N": 32},
        fusion_channels=64,
        fusion_blocks=1,
        latent_channels=48,
        entropy_groups=(4, 4, 8, 16, 16),
        hyper_channels=16,
        transform_channels=64,
        projector_channels=32,
        semantic_resolution=224,
        lora_vae_rank=4,
        lora_unet_rank=4,
        lora_init="zero",
        timestep=249,
        init_seed=20261125,
    )


def sd_turbo_config(vae_source: str = "stabilityai/sd-turbo#vae", unet_source: str = "stabilityai/sd-turbo#unet",
                    dino_source: str = "facebook/dinov2-large",
                    distortion_source: str = "compressai-zoo:cheng2020-anchor/3") -> SPRDiffConfig:
    """The paper's model. Sources: local dir, ``s3://`` URI or hub id, ``#subfolder`` optional."""
    arch = json.loads((_HERE / "sd_turbo.json").read_text())
    arch.pop("_comment")
    return SPRDiffConfig(
        model_id="sprdiff-sd-turbo",
        vae_config=arch["vae"], unet_config=arch["unet"], dino_config=arch["dino"],
        distortion_config=arch["distortion"],
        vae_source=vae_source, unet_source=unet_source, dino_source=dino_source,
        distortion_source=distortion_source,
        fusion_channels=192, fusion_blocks=2, latent_channels=320, entropy_groups=(16, 16, 32, 64, 192),
        hyper_channels=192, transform_channels=192, projector_channels=64, semantic_resolution=448,
        lora_init="zero", timestep=999,
    )


PRESETS = {"tiny": tiny_config, "demo-init": demo_init_config, "sd-turbo": sd_turbo_config}

# Trained models that ship inside the package: name -> model directory (config.json + model.safetensors).
# The demos that shipped before the current one keep shipping under the date they shipped: records
# written by `sprdiff encode` with the default model keep decoding without a --model-store
# (tests/codec/test_shipped_goldens.py holds records of each).
SHIPPED_MODELS = {"demo": Path(__file__).parent / "pretrained" / "demo",
                  "demo-2026-12-07": Path(__file__).parent / "pretrained" / "demo-2026-12-07",
                  "demo-2026-12-03": Path(__file__).parent / "pretrained" / "demo-2026-12-03"}
RETRAIN_HINT = {"demo": "bash jobs/configs/demo.sh",
                "demo-2026-12-07": "bash jobs/configs/demo.sh with 1200 steps in demo_stage2_rates.json",
                "demo-2026-12-03": "bash jobs/configs/demo.sh (its ninth stage-2 run, stage2-haarpsi-rate12)"}


def read_config(name_or_uri: str, _hops: int = 0) -> SPRDiffConfig:
    """The config of the model ``name_or_uri`` names, read without building it: a preset's, or a saved
    directory's ``config.json`` (shipped, local or URI), model pointers followed (their fingerprint is
    checked when the model itself is loaded). Imports no torch; only a name that is none of these is
    loaded, to fail with the message loading gives."""
    if name_or_uri in PRESETS:
        return PRESETS[name_or_uri]()
    location = str(SHIPPED_MODELS[name_or_uri]) if name_or_uri in SHIPPED_MODELS else name_or_uri
    try:
        with fsspec.open(f"{location.rstrip('/')}/{CONFIG_NAME}", "rt", encoding="utf-8") as f:
            return SPRDiffConfig.from_json(f.read())
    except (OSError, ValueError):
        pass
    from sprdiff import storage
    from sprdiff.model_pointer import MAX_POINTER_HOPS, read_pointer

    if _hops < MAX_POINTER_HOPS and (storage.local_path(location) or storage.is_remote_uri(location)):
        pointer = read_pointer(location)
        if pointer is not None:
            return read_config(pointer.target, _hops + 1)
    from sprdiff.model import SPRDiff  # no model here: loading it raises the error a user sees

    return SPRDiff.from_pretrained(name_or_uri).config
