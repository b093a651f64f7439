"""Checkpoint files: every tensor in one safetensors file, everything else in one JSON file.

Optimizer and scheduler state dicts are nested dicts/lists of tensors and plain values;
:func:`split_tensors` replaces each tensor by ``{"__tensor__": key}`` and collects the tensors,
:func:`join_tensors` puts them back. Nothing is pickled, so a checkpoint from an untrusted
store cannot run code when it is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

TENSORS_NAME = "tensors.safetensors"
STATE_NAME = "state.json"
TENSOR_REF = "__tensor__"


def split_tensors(tree: Any, prefix: str, out: dict[str, torch.Tensor]) -> Any:
    """A JSON-able copy of ``tree`` whose tensors are moved into ``out`` under dotted keys."""
    if isinstance(tree, torch.Tensor):
        out[prefix] = tree.detach().cpu().contiguous().clone()
        return {TENSOR_REF: prefix}
    if isinstance(tree, dict):
        for key in tree:
            if not isinstance(key, (str, int)):
                raise TypeError(f"checkpoint keys must be str or int, got {key!r} at {prefix}")
        # int keys (optimizer state is indexed by parameter) are kept as "#<int>" to survive JSON
        return {(f"#{k}" if isinstance(k, int) else k): split_tensors(v, f"{prefix}.{k}", out)
                for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [split_tensors(v, f"{prefix}.{i}", out) for i, v in enumerate(tree)]
    if tree is None or isinstance(tree, (bool, int, float, str)):
        return tree
    raise TypeError(f"cannot store {type(tree).__name__} at {prefix} in a checkpoint (tensors and JSON values only)")


def join_tensors(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`split_tensors`."""
    if isinstance(tree, dict):
        if set(tree) == {TENSOR_REF}:
            return tensors[tree[TENSOR_REF]]
        return {(int(k[1:]) if k.startswith("#") else k): join_tensors(v, tensors) for k, v in tree.items()}
    if isinstance(tree, list):
        return [join_tensors(v, tensors) for v in tree]
    return tree


def write_checkpoint(directory: Path, tree: dict[str, Any]) -> None:
    """Write ``tree`` (nested state dicts) as ``tensors.safetensors`` + ``state.json`` in ``directory``."""
    tensors: dict[str, torch.Tensor] = {}
    plain = split_tensors(tree, "ckpt", tensors)
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / TENSORS_NAME))
    (directory / STATE_NAME).write_text(json.dumps(plain, indent=1, sort_keys=True) + "\n")


def read_checkpoint(directory: Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    tensors = load_file(str(directory / TENSORS_NAME), device=str(device))
    plain = json.loads((directory / STATE_NAME).read_text())
    return join_tensors(plain, tensors)
