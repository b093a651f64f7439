"""Object-store plumbing for the jobs: one fsspec filesystem per URI, joined paths, atomic writes.

Any fsspec protocol works (local paths, ``file://``, ``s3://``, ``gs://``, ...). S3 endpoint and
credentials come from the standard AWS variables, read by botocore itself; nothing here touches them.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass

import fsspec
from fsspec.implementations.local import LocalFileSystem


@dataclass(frozen=True)
class Location:
    """A filesystem plus a root path on it (``s3://bucket/prefix`` -> s3fs, ``bucket/prefix``)."""

    fs: fsspec.AbstractFileSystem
    root: str

    @classmethod
    def of(cls, uri: str) -> Location:
        fs, root = fsspec.core.url_to_fs(uri)
        if isinstance(fs, LocalFileSystem):
            root = os.path.abspath(root)
        return cls(fs, root.rstrip("/") or "/")

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def path(self, *names: str) -> str:
        """``root/name/...`` on this filesystem."""
        return "/".join([self.root.rstrip("/"), *(n.strip("/") for n in names)])

    def uri(self, path: str | None = None) -> str:
        """A full URI for a path on this filesystem (``s3://b/k``, ``file:///abs``)."""
        return self.fs.unstrip_protocol(path if path is not None else self.root)

    def refresh(self) -> None:
        """Forget cached listings (s3fs caches them), so a listing sees what was just written."""
        self.fs.invalidate_cache()

    def exists(self, path: str) -> bool:
        return self.fs.exists(path)

    def read_bytes(self, path: str) -> bytes:
        return self.fs.cat_file(path)

    def write_bytes(self, path: str, data: bytes) -> None:
        """Write a whole object so that it is either absent or complete under its final name.

        Object stores publish a PUT only when it completes. On a local disk the bytes go to a
        hidden temporary file beside the target first, fsynced, then ``os.replace`` moves it in
        place and the directory is fsynced too, so after a power loss the name holds either the
        old file or the whole new one.
        """
        if self.is_local:
            directory, name = os.path.split(path)
            os.makedirs(directory, exist_ok=True)
            tmp = os.path.join(directory, f".{name}.{uuid.uuid4().hex[:12]}.tmp")
            try:
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
                _fsync_directory(directory)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
        else:
            self.fs.pipe_file(path, data)


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def redact_uri(uri: str) -> str:
    """Drop any ``user:password@`` part of a URI before it is printed or stored."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return uri
    host, slash, tail = rest.partition("/")
    if "@" in host:
        host = host.rsplit("@", 1)[1]
    return f"{scheme}://{host}{slash}{tail}"
