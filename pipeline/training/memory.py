"""Memory of a training worker: activation checkpointing, frozen weights in bf16, DDP over the
trained parameters only.

* Activation checkpointing (``sprdiff.checkpointing``): VAE and UNet blocks, DINOv2, g_a/g_s
  blocks and our own networks keep only their inputs and recompute the rest in the backward
  pass. The losses and updates are the same; a step costs about one more forward.
* Frozen weights in bf16 (CUDA with ``bf16_on_gpu``): the forward runs under bf16 autocast, which
  casts every weight to bf16 for each convolution and matmul anyway, so the frozen ones (VAE, UNet
  base, DINOv2, g_a/g_s) are stored that way: half their memory and no cast per step. Trained
  parameters stay fp32 (the optimizer's precision). The fp32 originals are kept on the host and
  are what ``state_dict()`` reports, so fingerprints and exports are those of the model, unrounded.
* DDP leaves the frozen parameters out (no start-up broadcast of the multi-GB frozen base; DDP
  already reduces only gradients). Buffers stay with DDP: those of the frozen parts are scalars
  (GDN bounds), and the entropy model's CDF tables must stay identical on every worker, which
  DDP's buffer broadcast (from rank 0) guarantees.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.training.config import TrainConfig
from sprdiff import checkpointing


def prepare_for_training(model: nn.Module, config: TrainConfig, device: torch.device) -> None:
    """Called once the trainer has decided what trains (``requires_grad``) and before its optimizers
    are built: turns on activation checkpointing when ``config.activation_checkpointing`` and, on
    CUDA with ``config.bf16_on_gpu``, stores the frozen weights in bf16."""
    if config.activation_checkpointing:
        checkpointing.enable(model)
    if trains_in_bf16(config, device):
        hold_frozen_in(model, torch.bfloat16)


def trains_in_bf16(config: TrainConfig, device: torch.device | str) -> bool:
    """bf16 autocast and frozen weights in bf16: on CUDA devices that have bf16, with ``bf16_on_gpu``
    (older GPUs train in fp32 rather than fail)."""
    device = torch.device(device)
    return config.bf16_on_gpu and device.type == "cuda" and torch.cuda.is_bf16_supported()


def frozen_parameter_names(module: nn.Module) -> list[str]:
    """Fully qualified names of the parameters of ``module`` that do not train."""
    return [name for name, p in module.named_parameters() if not p.requires_grad]


def hold_frozen_in(module: nn.Module, dtype: torch.dtype) -> list[str]:
    """Store every floating-point parameter of ``module`` that does not train in ``dtype``; returns
    their names. Only for forward passes under autocast to ``dtype`` (or one that promotes the mixed
    operands), as the trainers run them on CUDA. ``state_dict()`` keeps reporting the originals
    (copies on the host, in their own dtype)."""
    names, kept = [], {}  # kept: id of a cast parameter -> its original (a tied one is cast once)
    for owner_name, owner in module.named_modules():
        originals = {}
        for local_name, p in owner.named_parameters(recurse=False):
            if p.requires_grad or not p.is_floating_point() or (p.dtype == dtype and id(p) not in kept):
                continue
            if id(p) not in kept:
                kept[id(p)] = p.detach().to("cpu", copy=True)
                p.data = p.data.to(dtype)
                names.append(f"{owner_name}.{local_name}" if owner_name else local_name)
            originals[local_name] = kept[id(p)]
        if originals:
            owner.register_state_dict_post_hook(_report_originals(originals))
    return names


def _report_originals(originals: dict[str, torch.Tensor]):
    def hook(module: nn.Module, state: dict, prefix: str, local_metadata: dict) -> None:
        for local_name, tensor in originals.items():
            if prefix + local_name in state:
                state[prefix + local_name] = tensor
    return hook


def exclude_frozen_from_ddp(module: nn.Module) -> None:
    """Tell DDP (before wrapping ``module``) to neither broadcast nor sync the parameters that do
    not train. Buffers stay DDP's to broadcast (see the module docstring)."""
    torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(
        module, frozen_parameter_names(module))
