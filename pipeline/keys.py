"""Stable keys for inputs, and the file names that keys become on the way out.

Keys come from where an input sits relative to the input prefix, so the same input tree always
yields the same keys. A key is data, not a path: before a key names an output file it goes
through :func:`safe_relative_path`, which can never climb out of the output prefix.
"""

from __future__ import annotations

import hashlib
import posixpath

MAX_COMPONENT_BYTES = 200  # below the 255-byte limit of common filesystems, room left for a suffix


def strip_extension(relative_path: str) -> str:
    """``a/b/photo.jpg`` -> ``a/b/photo``; names without a suffix (or dot-files) stay as they are."""
    head, tail = posixpath.split(relative_path)
    stem, dot, _ = tail.rpartition(".")
    if not dot or not stem:
        return relative_path
    return posixpath.join(head, stem) if head else stem


def file_keys(relative_paths: list[str]) -> list[str]:
    """One key per input file: the relative path without its extension.

    Where two files differ only by extension (``a.png`` and ``a.jpg``) both keep their full
    relative path, so keys stay unique and do not depend on listing order.
    """
    stems = [strip_extension(p) for p in relative_paths]
    counts: dict[str, int] = {}
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    return [s if counts[s] == 1 else p for s, p in zip(stems, relative_paths)]


def shard_member_key(shard_key: str, member: str) -> str:
    """Key of one sample inside a tar or Parquet shard: ``<shard key>/<member key>``."""
    return f"{shard_key}/{member}"


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:10]


def _clean_component(component: str) -> str:
    cleaned = "".join(ch if ch.isprintable() and ch != "\\" else "_" for ch in component)
    if cleaned in (".", ".."):
        cleaned = cleaned.replace(".", "_")
    return cleaned


def _truncate_utf8(text: str, max_bytes: int) -> str:
    return text.encode("utf-8", "surrogatepass")[:max_bytes].decode("utf-8", "ignore")


def safe_relative_path(key: str, suffix: str) -> str:
    """A relative output path for ``key`` plus ``suffix`` (``".png"``) that stays under the output prefix.

    Empty, ``.`` and leading ``/`` components are dropped; ``..`` becomes ``__``; NUL, other control
    characters and backslashes become ``_``; components longer than 200 bytes are cut. Whenever the
    key had to change, ``~<hash of the key>`` is appended, so two different keys never share a name.
    """
    if not isinstance(key, str):
        raise TypeError(f"keys are strings, got {type(key).__name__}")
    components = [_clean_component(c) for c in key.split("/") if c not in ("", ".")]
    components = [_truncate_utf8(c, MAX_COMPONENT_BYTES) for c in components] or ["_"]
    path = "/".join(components)
    if path != key:
        path = f"{path}~{_short_hash(key)}"
    return path + suffix
