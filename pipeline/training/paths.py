"""Paths under a training run's output URI (a local folder or an object-store prefix)."""

from __future__ import annotations


def output_path(uri: str, *parts: str) -> str:
    """``uri``/``parts``, with one slash between them, local or ``s3://``..."""
    return "/".join([uri.rstrip("/"), *parts])
