"""Model pointers: a small named location (``runs/s2/model``) that says which stored weights are current.

Weights are written once, under a directory named by their fingerprint, and never overwritten;
what moves is the pointer: a directory holding only ``pointer.json``::

    {"fingerprint": "<64 hex digits>", "target": "../models/<fingerprint>"}

``target`` is relative to the pointer's directory or an absolute URI. Loading a pointer
(``SPRDiff.from_pretrained(".../model")``) follows it and checks that the weights it finds have
the fingerprint the pointer promises, so a pointer can never silently name other weights.
"""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass

import fsspec

POINTER_NAME = "pointer.json"
MAX_POINTER_HOPS = 4  # pointers followed in a row before a chain is refused as a cycle


@dataclass(frozen=True)
class Pointer:
    fingerprint: str  # hex SHA-256 of the weights it names
    target: str  # where they are: an absolute path or URI


def _join(directory: str, name: str) -> str:
    return f"{str(directory).rstrip('/')}/{name}"


def _resolve(directory: str, target: str) -> str:
    """``target`` as written in a pointer in ``directory`` -> an absolute path or URI."""
    if "://" in target or target.startswith("/"):
        return target
    protocol, sep, path = str(directory).rpartition("://")
    joined = posixpath.normpath(posixpath.join(path if sep else str(directory), target))
    return f"{protocol}://{joined}" if sep else joined


def write_pointer(pointer_dir: str, target: str, fingerprint: str) -> str:
    """Point ``pointer_dir`` (local or any fsspec URI) at ``target``; returns the pointer file's path.

    The file is replaced whole (a local rename, or a single object PUT), so readers see the old or
    the new pointer, never half of one."""
    if not re.fullmatch(r"[0-9a-f]{64}", fingerprint):
        raise ValueError(f"a pointer names weights by their 64-hex-digit fingerprint, got {fingerprint!r}")
    fs, root = fsspec.core.url_to_fs(str(pointer_dir))
    fs.makedirs(root, exist_ok=True)
    body = (json.dumps({"fingerprint": fingerprint, "target": target}, indent=1) + "\n").encode()
    path = _join(root, POINTER_NAME)
    if fs.protocol in ("file", "local") or "file" in fs.protocol:
        tmp = path + ".tmp"
        fs.pipe_file(tmp, body)
        fs.mv(tmp, path)
    else:
        fs.pipe_file(path, body)
    return _join(str(pointer_dir), POINTER_NAME)


def read_pointer(pointer_dir: str) -> Pointer | None:
    """The pointer in ``pointer_dir``, its target made absolute; None if the directory holds none."""
    fs, root = fsspec.core.url_to_fs(str(pointer_dir))
    path = _join(root, POINTER_NAME)
    if not fs.isfile(path):
        return None
    try:
        data = json.loads(fs.cat_file(path))
        return Pointer(fingerprint=str(data["fingerprint"]), target=_resolve(str(pointer_dir), str(data["target"])))
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{_join(str(pointer_dir), POINTER_NAME)} is not a model pointer "
                         f"({{'fingerprint', 'target'}}): {e}") from None
