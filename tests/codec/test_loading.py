"""One loading path: presets, saved directories, object-store URIs, and sd-turbo's sources."""

from __future__ import annotations

import json

import fsspec
import numpy as np
import pytest
import torch
from compressai.zoo.image import model_architectures
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import Dinov2Config, Dinov2Model

from sprdiff import SPRDiff
from sprdiff.config import CONFIG_NAME, WEIGHTS_NAME, SPRDiffConfig
from sprdiff.presets import sd_turbo_config, tiny_config


def _img(sample_images, h=96, w=128):
    return np.ascontiguousarray(sample_images["astronaut"][:h, :w])


def test_tiny_is_the_same_in_every_build(tiny_model):
    again = SPRDiff.from_pretrained("tiny")
    assert again.fingerprint == tiny_model.fingerprint


def test_save_and_load_round_trip(tmp_path, tiny_model, sample_images):
    tiny_model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    loaded = SPRDiff.from_pretrained(str(tmp_path / "m"))
    assert loaded.fingerprint == tiny_model.fingerprint
    [a] = tiny_model.compress([_img(sample_images)])
    [b] = loaded.compress([_img(sample_images)])
    assert a == b
    assert np.array_equal(loaded.decompress([a])[0], tiny_model.decompress([a])[0])


def test_saved_entropy_tables_are_used_not_recomputed(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path / "m")
    loaded = SPRDiff.from_pretrained(str(tmp_path / "m"))
    eb = loaded.entropy.codec["hyper"].entropy_bottleneck
    ref = tiny_model.entropy.codec["hyper"].entropy_bottleneck
    assert torch.equal(eb.quantized_cdf, ref.quantized_cdf)
    assert eb.quantized_cdf.dtype == torch.int32


def test_load_from_s3(s3_bucket, tiny_model, tmp_path, sample_images):
    uri = f"{s3_bucket}/models/tiny"
    tiny_model.save_pretrained(uri)
    assert fsspec.filesystem("s3").exists(f"{uri[5:]}/{WEIGHTS_NAME}")
    loaded = SPRDiff.from_pretrained(uri, cache_dir=tmp_path / "cache")
    assert loaded.fingerprint == tiny_model.fingerprint
    assert loaded.compress([_img(sample_images)]) == tiny_model.compress([_img(sample_images)])


def test_unknown_model_says_what_is_accepted():
    with pytest.raises(FileNotFoundError, match="not a preset"):
        SPRDiff.from_pretrained("/nonexistent/model")


def test_config_rejects_unknown_keys_and_bad_groups():
    data = json.loads(tiny_config().to_json())
    assert SPRDiffConfig.from_dict(data) == tiny_config()
    with pytest.raises(ValueError, match="unknown config keys"):
        SPRDiffConfig.from_dict({**data, "fusion_chanels": 3})
    with pytest.raises(ValueError, match="must sum"):
        tiny_config().replace(entropy_groups=(1, 2))


# ---- sd-turbo: the real sources replaced by tiny stand-ins in the same on-disk layout

@pytest.fixture(scope="module")
def sd_turbo_standins(tmp_path_factory):
    """``sd-turbo/{vae,unet}`` (diffusers), ``dinov2/`` (transformers), a CompressAI state-dict file."""
    root = tmp_path_factory.mktemp("standins")
    tiny = tiny_config()
    torch.manual_seed(0)
    AutoencoderKL.from_config(tiny.vae_config).save_pretrained(root / "sd-turbo" / "vae")
    UNet2DConditionModel.from_config({**tiny.unet_config, "cross_attention_dim": 24}).save_pretrained(
        root / "sd-turbo" / "unet")
    Dinov2Model(Dinov2Config(**tiny.dino_config)).save_pretrained(root / "dinov2")
    codec = model_architectures["cheng2020-anchor"](N=16)
    # CompressAI's zoo ships torch archives: exercised through torch.load(weights_only=True).
    torch.save(codec.state_dict(), root / "cheng2020-anchor-3.pth.tar")
    return root, codec


def _standin_config(root, **overrides):
    config = sd_turbo_config(vae_source=f"{root}/sd-turbo#vae", unet_source=f"{root}/sd-turbo#unet",
                             dino_source=str(root / "dinov2"),
                             distortion_source=str(root / "cheng2020-anchor-3.pth.tar"))
    # Our own modules at a small width, so the test stays fast; the loading path is the point.
    return config.replace(distortion_config={"arch": "cheng2020-anchor", "N": 16}, fusion_channels=16,
                          fusion_blocks=1, latent_channels=16, entropy_groups=(4, 4, 8), hyper_channels=16,
                          transform_channels=16, projector_channels=8, semantic_resolution=56, **overrides)


def test_sd_turbo_preset_names_its_sources():
    config = sd_turbo_config()
    assert config.vae_source == "stabilityai/sd-turbo#vae" and config.unet_source == "stabilityai/sd-turbo#unet"
    assert config.dino_source == "facebook/dinov2-large"
    assert config.distortion_source == "compressai-zoo:cheng2020-anchor/3"
    assert config.unet_config["cross_attention_dim"] == 1024 and config.dino_config["hidden_size"] == 1024


def test_sd_turbo_loads_its_components_from_sources(sd_turbo_standins, tmp_path, sample_images):
    root, codec = sd_turbo_standins
    model = SPRDiff.from_config(_standin_config(root), use_sources=True)
    # Pretrained weights really came from the sources...
    ref = AutoencoderKL.from_pretrained(root / "sd-turbo" / "vae")
    assert torch.equal(model.vae.decoder.conv_out.weight, ref.decoder.conv_out.weight)
    assert torch.equal(model.distortion.g_s[0].conv1.weight, codec.g_s[0].conv1.weight)
    assert model.unet.config.cross_attention_dim == 24
    assert model.semantic_projection.out_features == 24
    # ...and their architecture configs were recorded, so the saved directory needs no source.
    model.save_pretrained(tmp_path / "assembled")
    saved = json.loads((tmp_path / "assembled" / CONFIG_NAME).read_text())
    assert saved["unet_config"]["cross_attention_dim"] == 24
    reloaded = SPRDiff.from_pretrained(str(tmp_path / "assembled"))
    assert reloaded.fingerprint == model.fingerprint
    [rec] = model.compress([_img(sample_images, 64, 64)])
    assert reloaded.decompress([rec])[0].shape == (64, 64, 3)


def test_sd_turbo_sources_on_s3(sd_turbo_standins, s3_bucket, tmp_path):
    root, _ = sd_turbo_standins
    fs = fsspec.filesystem("s3")
    fs.put(str(root / "sd-turbo"), f"{s3_bucket[5:]}/sd-turbo", recursive=True)
    config = _standin_config(root).replace(vae_source=f"{s3_bucket}/sd-turbo#vae")
    model = SPRDiff.from_config(config, use_sources=True, cache_dir=tmp_path / "cache")
    ref = AutoencoderKL.from_pretrained(root / "sd-turbo" / "vae")
    assert torch.equal(model.vae.encoder.conv_out.weight, ref.encoder.conv_out.weight)


def test_a_model_re_exported_to_the_same_uri_is_fetched_again(s3_bucket, tiny_model, tmp_path):
    uri = f"{s3_bucket}/models/retrained"
    tiny_model.save_pretrained(uri)
    first = SPRDiff.from_pretrained(uri, cache_dir=tmp_path / "cache")
    changed = SPRDiff.from_pretrained("tiny")
    with torch.no_grad():
        changed.projector[0].bias.add_(0.5)
    changed.invalidate_fingerprint()
    changed.save_pretrained(uri)
    second = SPRDiff.from_pretrained(uri, cache_dir=tmp_path / "cache")
    assert first.fingerprint == tiny_model.fingerprint
    assert second.fingerprint == changed.fingerprint != first.fingerprint
