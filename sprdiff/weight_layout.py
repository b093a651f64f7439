"""How ``model.safetensors`` stores the entropy coder's tables: each distinct table once.

Every Gaussian conditional of the ELIC entropy model (one per channel group: five in ``demo``) is
built on the same scale table, so its integer CDF tables (``_quantized_cdf``, ``_offset``,
``_cdf_length``, ``scale_table``) are identical: about 0.8 MB each in ``demo``, 4 MB in all.
A model saved now writes the first of each identical set and lists the others in the file's
metadata under ``shared_tables`` (``{"copy name": "stored name"}``); loading puts the copies back
before anything else sees the weights. The tables a model decodes with and its fingerprint (a hash
of every weight in memory, by name) are the same either way, and files written before (every
table stored, no ``shared_tables``) load as they always did.

Only the integer tables are shared this way, and only when byte-identical: nothing is recomputed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any

SHARED_TABLES_KEY = "shared_tables"
TABLE_SUFFIXES = ("._quantized_cdf", "._offset", "._cdf_length", ".scale_table")


def _is_table(name: str) -> bool:
    return name.endswith(TABLE_SUFFIXES)


def _identity(tensor: Any) -> tuple:
    t = tensor.detach().cpu().contiguous()
    return str(t.dtype), tuple(t.shape), t.numpy().tobytes() if t.numel() else b""


def share_tables(state: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """(what to store, ``{copy: stored}``) for a full state dict: each distinct table once (the first
    by name), every other tensor as it is."""
    stored: dict[str, Any] = {}
    copies: dict[str, str] = {}
    first_of: dict[tuple, str] = {}
    for name in sorted(state):
        tensor = state[name]
        if _is_table(name):
            identity = (name.rsplit(".", 1)[1], *_identity(tensor))
            if identity in first_of:
                copies[name] = first_of[identity]
                continue
            first_of[identity] = name
        stored[name] = tensor
    return stored, copies


def copies_in(metadata: Mapping[str, str] | None) -> dict[str, str]:
    """``{copy: stored}`` from a weights file's metadata (empty for files that store every table)."""
    text = (metadata or {}).get(SHARED_TABLES_KEY)
    if not text:
        return {}
    copies = json.loads(text)
    if not isinstance(copies, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in copies.items()):
        raise ValueError(f"the weights file's {SHARED_TABLES_KEY!r} metadata is not a name-to-name map: {text[:200]}")
    return copies


def shared_tables_metadata(copies: Mapping[str, str]) -> dict[str, str]:
    return {SHARED_TABLES_KEY: json.dumps(dict(sorted(copies.items())), separators=(",", ":"))} if copies else {}


def restore_copies(state: dict[str, Any], copies: Mapping[str, str]) -> dict[str, Any]:
    """Put the shared tables back under their own names (each its own tensor)."""
    for copy, source in copies.items():
        if source not in state:
            raise ValueError(f"the weights file lists {copy!r} as a copy of {source!r}, which it does not hold")
        state[copy] = state[source].clone()
    return state


def all_tensors(names: list[str], copies: Mapping[str, str], get: Callable[[str], Any]) -> Iterator[tuple[str, Any]]:
    """Every tensor of a stored file by name, copies included, one at a time (``get`` reads one)."""
    for name in sorted([*names, *copies]):
        yield name, get(copies.get(name, name))
