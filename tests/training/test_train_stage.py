"""One stage on one worker, without Ray: what trains, what stays frozen, losses, checkpoints, export."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torchvision.models import vgg16

from pipeline.training.checkpoint import read_checkpoint, write_checkpoint
from pipeline.training.export import export_model
from pipeline.training.losses import VGGFeatures, estimated_bpp
from pipeline.training.stage import AUX_PARAMETER_SUFFIX, StageTrainer
from sprdiff import SPRDiff
from sprdiff.model_card import read_model_card

PRETRAINED = ("vae.", "unet.", "dino.", "distortion.")


def fixed_batch(size: int = 64) -> torch.Tensor:
    from skimage import data

    crop = data.astronaut()[100:100 + size, 150:150 + size]
    return torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)[None].float() / 255


def random_batches(n: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(1, 3, 64, 64, generator=g) for _ in range(n)]


def test_frozen_parts_stay_frozen_and_the_rest_trains(train_config):
    model = SPRDiff.from_pretrained("tiny")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = StageTrainer(model, train_config, stage=2)  # stage 2: the discriminator trains too
    trainer.set_train_mode()
    d_before = {n: p.detach().clone() for n, p in trainer.discriminator.named_parameters()}
    for batch in random_batches(3):
        trainer.train_step(batch)

    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert frozen and trained
    assert all(n.startswith(PRETRAINED) and "lora_" not in n for n in frozen)
    assert all(not n.startswith(PRETRAINED) or "lora_" in n for n in trained)
    assert any(n.startswith("vae.encoder.") and "lora_" in n for n in trained)
    assert any(n.startswith("unet.") and "lora_" in n for n in trained)
    params = dict(model.named_parameters())
    for name in frozen:
        assert params[name].grad is None, name
        assert torch.equal(params[name], before[name]), f"frozen {name} changed"
    for name in trained:
        assert not torch.equal(params[name], before[name]), f"trainable {name} did not change"
    for name, p in trainer.discriminator.named_parameters():
        assert not torch.equal(p, d_before[name]), name
    # CompressAI's convention: the quantiles are only in the auxiliary optimizer
    assert trainer.aux_names == [n for n in trained if n.endswith(AUX_PARAMETER_SUFFIX)] != []
    assert not any(n.endswith(AUX_PARAMETER_SUFFIX) for n in trainer.main_names)
    assert len(trainer.main_names) + len(trainer.aux_names) == len(trained)


def test_stage1_overfits_one_batch(train_config):
    torch.manual_seed(0)
    trainer = StageTrainer(SPRDiff.from_pretrained("tiny"), train_config.with_overrides({"stage1.lr": 3e-3}), stage=1)
    trainer.set_train_mode()
    x = fixed_batch()
    before = trainer.evaluate(x)  # eval mode: rounding, not noise, so before/after compare exactly
    history = [trainer.train_step(x) for _ in range(60)]
    after = trainer.evaluate(x)
    # tiny's distortion decoder g_s is random and frozen, so x̄ (weight 2, most of the loss) only
    # improves through T; measured: total 0.67x, x̂ MSE 0.64x, bpp 0.2-0.55x after 60 steps
    assert after["loss"] < 0.75 * before["loss"]
    assert after["mse_x_hat"] < 0.8 * before["mse_x_hat"]
    assert after["mse_x_bar"] < 0.85 * before["mse_x_bar"]
    assert after["bpp"] < 0.7 * before["bpp"]
    assert history[-1]["aux_loss"] < history[0]["aux_loss"]  # the auxiliary optimizer works too
    assert set(history[0]) >= {"loss", "mse_x_hat", "perceptual", "mse_x_bar", "bpp", "aux_loss", "lr", "grad_norm"}


def test_stage2_learning_rate_drops_on_schedule(train_config):
    config = train_config.with_overrides({"stage2.lr_drops": [[2, 1e-5], [3, 1e-6]]})
    trainer = StageTrainer(SPRDiff.from_pretrained("tiny"), config, stage=2)
    trainer.set_train_mode()
    records = [trainer.train_step(batch) for batch in random_batches(4)]
    assert [r["lr"] for r in records] == pytest.approx([5e-5, 5e-5, 1e-5, 1e-6])
    assert trainer.d_optimizer.param_groups[0]["lr"] == pytest.approx(config.discriminator.lr * 1e-6 / 5e-5)
    assert {"adversarial", "d_loss"} <= set(records[0])


def test_checkpoint_round_trip_continues_the_same_run(tmp_path, train_config):
    batches = random_batches(3, seed=5)
    a = StageTrainer(SPRDiff.from_pretrained("tiny"), train_config, stage=2)
    a.set_train_mode()
    for batch in batches[:2]:
        a.train_step(batch)
    write_checkpoint(tmp_path / "ckpt", {"trainer": a.state_dict()})

    b = StageTrainer(SPRDiff.from_pretrained("tiny"), train_config, stage=2)
    b.load_state_dict(read_checkpoint(tmp_path / "ckpt")["trainer"])
    b.set_train_mode()
    assert b.step == 2 and b.scheduler.last_epoch == a.scheduler.last_epoch
    assert b.optimizer.state_dict()["state"][0]["step"] == 2
    torch.manual_seed(1)
    next_a = a.train_step(batches[2])
    torch.manual_seed(1)
    next_b = b.train_step(batches[2])
    assert next_a["loss"] == pytest.approx(next_b["loss"], rel=1e-5)
    for (name, pa), pb in zip(a.model.named_parameters(), b.model.parameters()):
        torch.testing.assert_close(pa, pb, msg=name)

    with pytest.raises(ValueError, match="stage 2"):
        StageTrainer(SPRDiff.from_pretrained("tiny"), train_config, stage=1).load_state_dict(
            read_checkpoint(tmp_path / "ckpt")["trainer"])


def test_resumed_run_follows_the_configs_schedule_not_the_checkpoints(tmp_path, train_config):
    first = StageTrainer(SPRDiff.from_pretrained("tiny"), train_config.with_overrides({"stage2.lr_drops": [[1, 1e-5]]}),
                         stage=2)
    first.set_train_mode()
    for batch in random_batches(2):
        first.train_step(batch)
    assert first.optimizer.param_groups[0]["lr"] == pytest.approx(1e-5)
    write_checkpoint(tmp_path / "ckpt", {"trainer": first.state_dict()})

    edited = train_config.with_overrides({"stage2.lr_drops": [[4, 1e-6]]})
    resumed = StageTrainer(SPRDiff.from_pretrained("tiny"), edited, stage=2)
    resumed.load_state_dict(read_checkpoint(tmp_path / "ckpt")["trainer"])
    resumed.set_train_mode()
    records = [resumed.train_step(batch) for batch in random_batches(3, seed=2)]
    assert [r["lr"] for r in records] == pytest.approx([5e-5, 5e-5, 1e-6])
    assert resumed.d_optimizer.param_groups[0]["lr"] == pytest.approx(edited.discriminator.lr * 1e-6 / 5e-5)
    again = StageTrainer(SPRDiff.from_pretrained("tiny"), edited, stage=2)
    again.load_state_dict(resumed.state_dict())
    assert again.scheduler.get_last_lr() == pytest.approx([1e-6])
    resumed.load_state_dict(read_checkpoint(tmp_path / "ckpt")["trainer"])  # a second load: still the config's
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(5e-5)
    assert resumed.d_optimizer.param_groups[0]["lr"] == pytest.approx(edited.discriminator.lr)


def test_the_hyper_latents_prior_can_learn_at_a_multiple_of_the_lr(tmp_path, train_config):
    def trainer(scale: float) -> StageTrainer:
        config = train_config.with_overrides({"stage2.prior_lr_scale": scale, "stage2.lr_drops": [[1, 1e-5]]})
        return StageTrainer(SPRDiff.from_pretrained("tiny"), config, stage=2)

    plain, scaled = trainer(1.0), trainer(30.0)
    eb = scaled.model.entropy.codec["hyper"].entropy_bottleneck
    density = {n: p for n, p in eb.named_parameters() if n != "quantiles"}
    main, prior = scaled.optimizer.param_groups
    assert {id(p) for p in prior["params"]} == {id(p) for p in density.values()}
    assert not {id(p) for p in main["params"]} & {id(p) for p in density.values()}
    assert len(plain.optimizer.param_groups) == 1
    assert [g["lr"] for g in scaled.optimizer.param_groups] == pytest.approx([5e-5, 30 * 5e-5])

    before = {n: p.detach().clone() for n, p in density.items()}
    plain_eb = plain.model.entropy.codec["hyper"].entropy_bottleneck
    plain_before = {n: p.detach().clone() for n, p in plain_eb.named_parameters() if n != "quantiles"}
    batch = random_batches(1)[0]
    for t in (plain, scaled):
        t.set_train_mode()
        t.train_step(batch)
    # Adam's first step moves each parameter by about its lr: 30 times further with the scale
    moved = max((density[n] - before[n]).abs().max().item() for n in density)
    plain_moved = max((p - plain_before[n]).abs().max().item() for n, p in plain_eb.named_parameters()
                      if n != "quantiles")
    assert moved == pytest.approx(30 * 5e-5, rel=0.05) and plain_moved == pytest.approx(5e-5, rel=0.05)

    scaled.train_step(batch)  # the drop at step 1 applies to both groups
    assert [g["lr"] for g in scaled.optimizer.param_groups] == pytest.approx([1e-5, 30 * 1e-5])
    write_checkpoint(tmp_path / "ckpt", {"trainer": scaled.state_dict()})
    resumed = trainer(30.0)
    resumed.load_state_dict(read_checkpoint(tmp_path / "ckpt")["trainer"])
    assert [g["lr"] for g in resumed.optimizer.param_groups] == pytest.approx([1e-5, 30 * 1e-5])
    with pytest.raises(ValueError, match="prior_lr_scale"):
        trainer(1.0).load_state_dict(read_checkpoint(tmp_path / "ckpt")["trainer"])


def test_export_gives_a_model_the_codec_loads(tmp_path, train_config, sample_images):
    trainer = StageTrainer(SPRDiff.from_pretrained("tiny"), train_config, stage=2, lambda_rate=4)
    trainer.set_train_mode()
    trainer.train_step(random_batches(1)[0])
    fingerprint = export_model(trainer.model, str(tmp_path), rate_id=1, parent="tiny", steps=1)
    loaded = SPRDiff.from_pretrained(str(tmp_path / "model"))  # the pointer to the latest export
    assert loaded.fingerprint == fingerprint != SPRDiff.from_pretrained("tiny").fingerprint
    assert loaded.config.rate_id == 1
    card = read_model_card(str(tmp_path / "models" / fingerprint))
    assert (card.fingerprint, card.parent, card.steps) == (fingerprint, "tiny", 1)
    image = sample_images["chelsea"][:100, :120]
    [record] = loaded.compress([image])
    [decoded] = loaded.decompress([record])
    assert decoded.shape == image.shape
    assert trainer.model.compress([image]) == [record]  # the tables were saved, not recomputed differently


def test_a_second_export_leaves_the_first_models_files_untouched(tmp_path, train_config, sample_images):
    trainer = StageTrainer(SPRDiff.from_pretrained("tiny"), train_config, stage=2, lambda_rate=4)
    trainer.set_train_mode()
    trainer.train_step(random_batches(1)[0])
    first = export_model(trainer.model, str(tmp_path))
    files = {p.name: p.read_bytes() for p in (tmp_path / "models" / first).iterdir()}
    [record] = SPRDiff.from_pretrained(str(tmp_path / "model")).compress([sample_images["chelsea"][:64, :64]])

    trainer.set_train_mode()
    trainer.train_step(random_batches(1)[0])  # a retrain: other weights, exported to the same output
    second = export_model(trainer.model, str(tmp_path))
    assert second != first
    assert {p.name: p.read_bytes() for p in (tmp_path / "models" / first).iterdir()} == files
    assert SPRDiff.from_pretrained(str(tmp_path / "model")).fingerprint == second
    [decoded] = SPRDiff.from_pretrained(str(tmp_path / "models" / first)).decompress([record])
    assert decoded.shape == (64, 64, 3)


def test_estimated_bpp_counts_bits_of_all_latents():
    likelihoods = {"y": torch.full((1, 2, 4, 4), 0.5), "z": torch.full((1, 1, 1, 1), 0.25)}
    assert estimated_bpp(likelihoods, num_pixels=64).item() == pytest.approx((32 * 1 + 1 * 2) / 64)


def test_vgg_weights_from_a_file_or_a_clear_error(tmp_path):
    torch.manual_seed(3)
    state = vgg16(weights=None).state_dict()
    save_file({k: v for k, v in state.items() if k.startswith("features.")}, str(tmp_path / "vgg16.safetensors"))
    torch.save(state, tmp_path / "vgg16.pth")
    for name in ("vgg16.safetensors", "vgg16.pth"):
        vgg = VGGFeatures(str(tmp_path / name), "relu3_3")
        assert torch.equal(vgg.features[0].weight, state["features.0.weight"])
        assert len(vgg.features) == 16 and not any(p.requires_grad for p in vgg.parameters())
    assert VGGFeatures("random")(torch.rand(1, 3, 64, 64)).shape == (1, 256, 16, 16)
    with pytest.raises(ValueError, match="vgg_weights"):
        VGGFeatures(None)
