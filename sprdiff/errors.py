"""The library's error types.

Every problem with *data* (a bitstream or an input image) raises a subclass of
:class:`SPRDiffError`, so callers that archive corpora can turn it into a status row.
Programmer errors (wrong argument types, a model used before it is ready) raise the
usual ``TypeError``/``ValueError`` with a message that says what to do.
"""

from __future__ import annotations


class SPRDiffError(Exception):
    """Base class of every data error this library raises.

    ``status`` is a short machine-readable class (``corrupt``, ``truncated``,
    ``model_mismatch``, ...) that batch jobs store in their ``status`` column.
    """

    status = "error"

    def __init__(self, message: str, *, status: str | None = None):
        super().__init__(message)
        if status is not None:
            self.status = status


class BitstreamError(SPRDiffError):
    """A record cannot be decoded: corrupt, truncated, foreign model or unknown version."""

    status = "bad_bitstream"


class ImageError(SPRDiffError):
    """An input image cannot be encoded: unreadable, not an image, too large, ..."""

    status = "bad_image"
