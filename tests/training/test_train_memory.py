"""Memory of a training worker (pipeline.training.memory): activation checkpointing changes no
result but keeps fewer activations, frozen weights can be held in bf16 while the trained ones stay
fp32, and DDP leaves the frozen parameters out."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from test_train_stage import random_batches

from pipeline.training.memory import exclude_frozen_from_ddp, frozen_parameter_names, hold_frozen_in
from pipeline.training.pretrain import PretrainTrainer
from pipeline.training.stage import StageTrainer
from sprdiff import SPRDiff


def stage1_run(config, checkpointing: bool, steps: int = 3) -> tuple[list[float], dict[str, torch.Tensor]]:
    """Losses of ``steps`` stage-1 updates from the same seed, and the parameters after them."""
    torch.manual_seed(0)  # the entropy model's training noise
    trainer = StageTrainer(SPRDiff.from_pretrained("tiny"), config.with_overrides(
        {"activation_checkpointing": checkpointing}), stage=1)
    trainer.set_train_mode()
    losses = [trainer.train_step(batch)["loss"] for batch in random_batches(steps)]
    return losses, {n: p.detach().clone() for n, p in trainer.model.named_parameters()}


def test_activation_checkpointing_changes_no_loss_and_no_weight(train_config):
    plain_losses, plain_params = stage1_run(train_config, checkpointing=False)
    losses, params = stage1_run(train_config, checkpointing=True)
    assert losses == pytest.approx(plain_losses, rel=1e-5)
    for name, p in params.items():
        torch.testing.assert_close(p, plain_params[name], rtol=1e-5, atol=1e-7, msg=name)
    assert len(set(plain_losses)) == len(plain_losses)  # the steps did change the model


def test_activation_checkpointing_reaches_every_heavy_part(train_config):
    model = SPRDiff.from_pretrained("tiny")
    StageTrainer(model, train_config.with_overrides({"activation_checkpointing": True}), stage=1)
    assert model.vae.is_gradient_checkpointing and model.unet.is_gradient_checkpointing  # diffusers
    assert all(layer.gradient_checkpointing for layer in model.dino.encoder.layer)  # transformers
    for part in (model, model.fusion, model.latent_encoder, model.latent_decoder, model.transform,
                 model.projector, model.distortion.g_a, model.distortion.g_s):
        assert part.activation_checkpointing, type(part).__name__


def saved_for_backward(trainer: StageTrainer, x: torch.Tensor) -> int:
    """Bytes autograd keeps for the backward pass of one training forward, outside checkpointed
    pieces (a checkpointed piece keeps its input only, through its own hooks)."""
    saved = 0

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal saved
        saved += tensor.numel() * tensor.element_size()
        return tensor

    trainer.set_train_mode()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        trainer.model(x)
    return saved


def test_activation_checkpointing_keeps_fewer_tensors_for_backward(train_config):
    x = random_batches(1)[0]
    plain = saved_for_backward(StageTrainer(SPRDiff.from_pretrained("tiny"), train_config, stage=1), x)
    checkpointed = saved_for_backward(StageTrainer(SPRDiff.from_pretrained("tiny"), train_config.with_overrides(
        {"activation_checkpointing": True}), stage=1), x)
    assert checkpointed < plain / 3, (checkpointed, plain)


def test_stage0_with_activation_checkpointing_gives_the_same_losses(train_config):
    def losses(checkpointing: bool) -> list[float]:
        torch.manual_seed(0)  # VAE posterior samples, masked patches, codec noise
        trainer = PretrainTrainer(SPRDiff.from_pretrained("tiny"), train_config.with_overrides(
            {"activation_checkpointing": checkpointing}))
        trainer.set_train_mode()
        return [trainer.train_step(batch)["loss"] for batch in random_batches(2)]

    assert losses(True) == pytest.approx(losses(False), rel=1e-5)


def test_frozen_weights_held_in_bf16_while_the_trained_ones_stay_fp32():
    model = SPRDiff.from_pretrained("tiny")
    model.freeze_pretrained()
    model.train()
    original = {n: t.clone() for n, t in model.state_dict().items()}
    frozen = frozen_parameter_names(model)

    assert sorted(hold_frozen_in(model, torch.bfloat16)) == sorted(frozen)
    params = dict(model.named_parameters())
    assert {params[n].dtype for n in frozen} == {torch.bfloat16}
    assert {p.dtype for p in model.trainable_parameters()} == {torch.float32}
    # the state dict (fingerprint, export) still holds the unrounded originals
    state = model.state_dict()
    assert state.keys() == original.keys()
    for name, tensor in original.items():
        assert state[name].dtype == tensor.dtype and torch.equal(state[name], tensor), name

    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(random_batches(1)[0])
    loss = out["x_hat"].float().mean() + out["x_bar"].float().mean() + \
        sum(torch.log(p.float()).mean() for p in out["likelihoods"].values())
    loss.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.trainable_parameters())
    assert all(params[n].grad is None for n in frozen)


def test_frozen_weights_stay_fp32_on_cpu(train_config):
    assert train_config.bf16_on_gpu  # the default: on CUDA only
    model = SPRDiff.from_pretrained("tiny")
    StageTrainer(model, train_config, stage=1)
    assert {p.dtype for p in model.parameters()} == {torch.float32}


@pytest.fixture
def one_process_group(tmp_path):
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.filterwarnings("ignore:Grad strides do not match")  # depth-wise convs; a performance note only
def test_ddp_tracks_the_trained_parameters_only(train_config, one_process_group):
    model = SPRDiff.from_pretrained("tiny")
    trainer = StageTrainer(model, train_config, stage=1)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen

    exclude_frozen_from_ddp(model)
    assert set(model._ddp_params_and_buffers_to_ignore) == frozen
    ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=False)
    assert ddp.parameters_to_ignore == frozen
    assert {id(p) for p in ddp._module_parameters} == {id(p) for p in model.trainable_parameters()}

    trainer.set_train_mode()
    out = ddp(random_batches(1)[0])
    (out["x_hat"].mean() + out["x_bar"].mean()).backward()
    assert any(p.grad is not None for p in model.unet.parameters())
    assert all(p.grad is None for n, p in model.named_parameters() if n in frozen)
