"""Activation checkpointing: keep only the inputs of chosen pieces of the forward pass and recompute
the rest during the backward pass, for about one more forward's compute.

diffusers (VAE, UNet) and transformers (DINOv2) have their own switches; our networks are
:class:`Checkpointable` and checkpoint through :func:`maybe_checkpoint`. :func:`enable` turns all of
them on in a module tree. The recomputation is the same forward: torch restores the RNG state
(``preserve_rng_state``: dropout or noise inside a piece) and the autocast state for it, and the
global RNG continues afterwards as if nothing had been recomputed.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from diffusers import ModelMixin
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedModel


class Checkpointable:
    """A module of ours with an activation checkpointing switch (off until :func:`enable`)."""

    activation_checkpointing = False


def maybe_checkpoint(enabled: bool, function: Callable, *args):
    """``function(*args)``, keeping only ``args`` for the backward pass when ``enabled`` and gradients
    are on. Not tied to training mode: frozen parts in the gradient path (g_s, DINOv2 on x̄) run in
    eval mode and still pass gradients back."""
    if enabled and torch.is_grad_enabled():
        return checkpoint(function, *args, use_reentrant=False)
    return function(*args)


class CheckpointedSequential(Checkpointable, nn.Sequential):
    """An ``nn.Sequential`` (same children, same state-dict keys) that can checkpoint.

    ``blockwise``: each child is one checkpointed piece (long stacks of residual blocks at full
    resolution, such as g_a/g_s, where recomputing them all at once would cost what it saves);
    otherwise the whole sequence is one (short stacks of single layers, which would each keep
    their input anyway)."""

    def __init__(self, *args, blockwise: bool = False):
        super().__init__(*args)
        self.blockwise = blockwise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.blockwise:
            return maybe_checkpoint(self.activation_checkpointing, super().forward, x)
        for block in self:
            x = maybe_checkpoint(self.activation_checkpointing, block, x)
        return x


def checkpointable(module: nn.Module, blockwise: bool = False) -> nn.Module:
    """``module`` as a :class:`CheckpointedSequential` holding the same children when it is a plain
    ``nn.Sequential``; anything else as it is."""
    if type(module) is nn.Sequential:
        return CheckpointedSequential(OrderedDict(module.named_children()), blockwise=blockwise)
    return module


def enable(module: nn.Module) -> None:
    """Turn activation checkpointing on in every part of ``module`` that has it."""
    for sub in module.modules():
        if isinstance(sub, ModelMixin) and sub._supports_gradient_checkpointing:
            sub.enable_gradient_checkpointing()  # diffusers: every down/mid/up block
        elif isinstance(sub, PreTrainedModel) and sub.supports_gradient_checkpointing:
            # transformers: every layer, in training mode only. Releases before the rename call it
            # gradient_checkpointing_enable (5.17, which the lent GPU machine's image holds: bench/device_python.sh)
            enable_layers = getattr(sub, "activation_checkpointing_enable", None) or sub.gradient_checkpointing_enable
            enable_layers()
        elif isinstance(sub, Checkpointable):
            sub.activation_checkpointing = True

