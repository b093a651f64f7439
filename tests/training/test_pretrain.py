"""Stage 0 (pretraining the VAE, distortion codec and semantic encoder) and the options models
trained without outside weights use: ``train_pretrained``, the MS-SSIM term, no VGG16."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from test_train_stage import fixed_batch, random_batches

from jobs.cli import build_parser
from jobs.train_commands import build_run_spec
from pipeline.training.checkpoint import read_checkpoint, write_checkpoint
from pipeline.training.losses import chroma_mse, haarpsi_loss, ms_ssim_loss
from pipeline.training.pretrain import PretrainNets, PretrainTrainer
from pipeline.training.stage import StageTrainer
from sprdiff import SPRDiff

PRETRAINED = ("vae.", "dino.", "distortion.")


def test_stage0_trains_the_pretrained_parts_only(train_config):
    model = SPRDiff.from_pretrained("tiny")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = PretrainTrainer(model, train_config)
    trainer.set_train_mode()
    for batch in random_batches(2):
        metrics = trainer.train_step(batch)
    assert {"vae_mse", "vae_chroma", "vae_kl", "codec_mse", "bpp", "mim", "aux_loss"} <= set(metrics)
    params = dict(model.named_parameters())
    changed = {n for n in params if not torch.equal(params[n], before[n])}
    assert any(n.startswith("vae.decoder.") for n in changed)
    assert any(n.startswith("distortion.g_s.") for n in changed)
    assert any(n.startswith("dino.") for n in changed)
    assert all(n.startswith(PRETRAINED) and "lora_" not in n for n in changed), \
        sorted(n for n in changed if not n.startswith(PRETRAINED) or "lora_" in n)[:5]


def test_stage0_losses_fall_on_one_batch(train_config):
    torch.manual_seed(0)
    trainer = PretrainTrainer(SPRDiff.from_pretrained("tiny"), train_config.with_overrides({"stage0.lr": 2e-3}))
    trainer.set_train_mode()
    x = fixed_batch()
    first = trainer.train_step(x)
    for _ in range(40):
        last = trainer.train_step(x)
    assert last["vae_mse"] < 0.5 * first["vae_mse"]
    assert last["codec_mse"] < 0.5 * first["codec_mse"]
    assert last["mim"] < first["mim"]


def test_chroma_term_sees_colour_errors_only():
    x = fixed_batch() * 0.9
    assert chroma_mse(x + 0.1, x).item() == pytest.approx(0, abs=1e-10)  # a grey shift is no colour error
    redder = x.clone()
    redder[:, 0] += 0.1
    assert chroma_mse(redder, x).item() == pytest.approx((0.1 ** 2 + 0.05 ** 2) / 2, rel=1e-4)  # R−G, B−(R+G)/2


def test_stage0_chroma_weight_adds_the_colour_error_to_the_vae_loss(train_config):
    x = fixed_batch()
    losses = []
    for weight in (0.0, 3.0):
        torch.manual_seed(0)
        trainer = PretrainTrainer(SPRDiff.from_pretrained("tiny"), train_config.with_overrides(
            {"stage0.vae_chroma": weight}))
        trainer.set_train_mode()
        losses.append(trainer.train_step(x))
    assert losses[0]["vae_chroma"] == pytest.approx(losses[1]["vae_chroma"], rel=1e-5)
    assert losses[1]["loss"] - losses[0]["loss"] == pytest.approx(3.0 * losses[0]["vae_chroma"], rel=1e-3)
    with pytest.raises(ValueError, match="vae_chroma"):
        train_config.with_overrides({"stage0.vae_chroma": -1.0})


def test_stage0_vae_latent_mean_reconstructs_through_the_posterior_mean(train_config):
    model = SPRDiff.from_pretrained("tiny")
    nets = PretrainNets(model).eval()
    x = fixed_batch()
    with torch.no_grad():
        expected = torch.nn.functional.mse_loss(
            (model.vae.decode(model.vae.encode(x * 2 - 1).latent_dist.mean).sample + 1) / 2, x)
        by_seed = {}
        for latent in ("mean", "sample"):
            for seed in (1, 2):
                torch.manual_seed(seed)
                by_seed[latent, seed] = nets(x, 0.5, latent)["vae_mse"].item()
    assert by_seed["mean", 1] == by_seed["mean", 2] == pytest.approx(expected.item(), rel=1e-6)
    assert by_seed["sample", 1] != by_seed["sample", 2]  # a sampled latent differs from draw to draw
    with pytest.raises(ValueError, match="vae_latent"):
        train_config.with_overrides({"stage0.vae_latent": "mode"})


def test_stage0_export_sets_the_latent_scale_and_loads_back(train_config, tmp_path):
    trainer = PretrainTrainer(SPRDiff.from_pretrained("tiny"), train_config)
    trainer.set_train_mode()
    for batch in random_batches(2):
        trainer.train_step(batch)
    model = trainer.exportable()
    scale = 1 / trainer.latent_std.item()
    assert model.vae.config.scaling_factor == pytest.approx(scale)
    assert model.config.vae_config["scaling_factor"] == pytest.approx(scale)
    model.save_pretrained(tmp_path / "model")
    again = SPRDiff.from_pretrained(str(tmp_path / "model"))
    assert again.vae.config.scaling_factor == pytest.approx(scale)
    assert again.fingerprint == model.fingerprint


def test_stage0_checkpoint_resumes_exactly(train_config, tmp_path):
    batches = random_batches(3, seed=1)
    trainer = PretrainTrainer(SPRDiff.from_pretrained("tiny"), train_config)
    trainer.set_train_mode()
    trainer.train_step(batches[0])
    write_checkpoint(tmp_path, {"trainer": trainer.state_dict()})
    other = PretrainTrainer(SPRDiff.from_pretrained("tiny"), train_config)
    other.load_state_dict(read_checkpoint(tmp_path)["trainer"])
    assert other.step == 1
    for name, p in other.nets.named_parameters():
        assert torch.equal(p, dict(trainer.nets.named_parameters())[name]), name
    torch.manual_seed(5)
    a = trainer.train_step(batches[1])
    torch.manual_seed(5)
    b = other.train_step(batches[1])
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    with pytest.raises(ValueError, match="stage 0"):
        StageTrainer(SPRDiff.from_pretrained("tiny"), train_config, stage=1).load_state_dict(trainer.state_dict())


def test_train_pretrained_unfreezes_a_base_component(train_config):
    config = train_config.with_overrides({"train_pretrained": ["unet"]})
    model = SPRDiff.from_pretrained("tiny")
    trainer = StageTrainer(model, config, stage=1)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any(n.startswith("unet.") and "lora_" not in n for n in trainable)
    assert not any(n.startswith(("vae.decoder.", "dino.", "distortion.")) for n in trainable)
    trainer.set_train_mode()
    assert model.unet.training and not model.vae.training
    with pytest.raises(ValueError, match="unknown components"):
        train_config.with_overrides({"train_pretrained": ["vgg"]})


def test_weight_free_terms_and_no_vgg_when_its_weight_is_zero(train_config):
    weights = {"mse_x_hat": 1.0, "perceptual": 0.0, "mse_x_bar": 1.0, "adversarial": 0.0, "ms_ssim": 1.0,
               "haarpsi": 0.5}
    config = train_config.with_overrides({"vgg_weights": None, "stage1.weights": weights})
    trainer = StageTrainer(SPRDiff.from_pretrained("tiny"), config, stage=1)
    assert trainer.vgg is None
    metrics = trainer.train_step(fixed_batch())
    assert "perceptual" not in metrics and 0 < metrics["ms_ssim"] <= 2 and 0 < metrics["haarpsi"] <= 1
    x = fixed_batch()
    assert ms_ssim_loss(x, x).item() == pytest.approx(0, abs=1e-5)
    assert ms_ssim_loss(torch.rand_like(x), x).item() > 0.5
    assert haarpsi_loss(x, x).item() == pytest.approx(0, abs=1e-5)
    assert haarpsi_loss(torch.rand_like(x), x).item() > 0.3
    blurred = F.avg_pool2d(F.pad(x, (2, 2, 2, 2), mode="replicate"), 5, stride=1)
    assert 0 < haarpsi_loss(blurred, x).item() < haarpsi_loss(torch.rand_like(x), x).item()
    with pytest.raises(ValueError, match="32 px"):
        haarpsi_loss(x[..., :16, :16], x[..., :16, :16])


def test_cli_stage0_spec_needs_no_vgg_and_makes_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cfg.json").write_text(json.dumps({"vgg_weights": None}))
    args = build_parser().parse_args(["train", "--stage", "0", "--data", "shards", "--output", "run",
                                      "--model", "demo-init", "--config", "cfg.json"])
    spec = build_run_spec(args)
    assert spec.stage == 0 and spec.model == "demo-init"
    assert spec.data_uri == str(tmp_path / "shards") and spec.output_uri == str(tmp_path / "run")
    args = build_parser().parse_args(["train", "--stage", "1", "--data", "s3://b/shards", "--output", "run",
                                      "--config", "cfg.json"])
    with pytest.raises(ValueError, match="VGG16"):
        build_run_spec(args)  # the default stage 1 has a perceptual weight
