"""Memory of a training worker: activation checkpointing, frozen weights in bf16, DDP over the
trained parameters only.

(Interface fixed; implementation in progress.)
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.training.config import TrainConfig


def prepare_for_training(model: nn.Module, config: TrainConfig, device: torch.device) -> None:
    """Called once the trainer has decided what trains (``requires_grad``) and before its optimizers
    are built: turns on activation checkpointing when ``config.activation_checkpointing`` and, on
    CUDA with ``config.bf16_on_gpu``, stores the frozen weights in bf16."""


def exclude_frozen_from_ddp(module: nn.Module) -> None:
    """Tell DDP (before wrapping ``module``) to neither broadcast nor sync the parameters and
    buffers that do not train."""
