"""Gradient accumulation: n micro-batches of b make the same update as one batch of n·b."""

from __future__ import annotations

import pytest
import torch

from pipeline.training.pretrain import PretrainTrainer
from pipeline.training.stage import StageTrainer
from sprdiff import SPRDiff


def four_images() -> torch.Tensor:
    return torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(7), dtype=torch.float64)


def deterministic_trainer(config, stage: int):
    """Stage-1 trainer on ``tiny`` whose entropy model rounds instead of adding training noise: the
    noise is drawn per call, so a batch of 4 and four batches of 1 would draw it in another order.
    What is left has no layer that mixes the samples of a batch (GroupNorm, LayerNorm, GDN are per
    sample), which is what makes accumulation exact. In float64: in float32, convolutions take other
    kernels for other batch sizes, and a last-bit difference in y that moves its rounding by one
    (the straight-through quantiser) changes that latent's gradient outright."""
    torch.manual_seed(0)
    model = SPRDiff.from_pretrained("tiny").double()
    trainer = StageTrainer(model, config, stage=stage)
    if trainer.vgg is not None:
        trainer.vgg.double()
    trainer.set_train_mode()
    model.entropy.eval()
    return trainer


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def test_four_micro_batches_of_one_update_as_one_batch_of_four(train_config):
    images = four_images()
    whole = deterministic_trainer(train_config, stage=1)
    accumulated = deterministic_trainer(train_config, stage=1)
    whole_metrics = whole.train_step(images)
    accumulated_metrics = accumulated.train_step(list(images.split(1)))

    for name in ("loss", "bpp", "mse_x_hat", "perceptual", "mse_x_bar", "grad_norm"):
        assert accumulated_metrics[name] == pytest.approx(whole_metrics[name], rel=1e-5), name
    whole_params = dict(whole.model.named_parameters())
    compared = 0
    for name, p in accumulated.model.named_parameters():
        if not p.requires_grad or name.endswith(".quantiles"):
            continue
        reference = whole_params[name]
        if reference.grad.abs().max() > 0:
            assert relative_difference(p.grad, reference.grad) < 1e-5, name
            compared += 1
        assert relative_difference(p, reference) < 1e-5, name
    assert compared > 20


def test_accumulation_is_not_one_micro_batch_alone(train_config):
    """The check above can fail: the first micro-batch's gradient alone is far from the batch's."""
    images = four_images()
    whole = deterministic_trainer(train_config, stage=1)
    first_only = deterministic_trainer(train_config, stage=1)
    whole.train_step(images)
    first_only.train_step(images[:1])
    whole_params = dict(whole.model.named_parameters())
    differences = [relative_difference(p.grad, whole_params[n].grad)
                   for n, p in first_only.model.named_parameters()
                   if p.requires_grad and p.grad is not None and whole_params[n].grad.abs().max() > 0]
    assert max(differences) > 1e-2


def test_stage2_and_stage0_accept_micro_batches(train_config):
    """The discriminator and the pretraining objectives accumulate too (stochastic, so no equality:
    one update happens and its metrics are finite)."""
    images = four_images().float()
    stage2 = StageTrainer(SPRDiff.from_pretrained("tiny"), train_config, stage=2)
    stage2.set_train_mode()
    before = [p.detach().clone() for p in stage2.discriminator.parameters()]
    metrics = stage2.train_step(list(images.split(2)))
    assert stage2.step == 1 and stage2.scheduler.last_epoch == 1
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, stage2.discriminator.parameters()))

    stage0 = PretrainTrainer(SPRDiff.from_pretrained("tiny"), train_config)
    stage0.set_train_mode()
    metrics = stage0.train_step(list(images.split(2)))
    assert stage0.step == 1 and metrics["vae_psnr"] > 0


def test_an_empty_update_is_refused(train_config):
    trainer = StageTrainer(SPRDiff.from_pretrained("tiny"), train_config, stage=1)
    with pytest.raises(ValueError, match="at least one micro-batch"):
        trainer.train_step([])
