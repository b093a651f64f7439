"""Where weights live: local directories, object-store URIs (any fsspec protocol) or hub ids."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import fsspec
from filelock import FileLock

DEFAULT_CACHE = Path.home() / ".cache" / "sprdiff"


def split_source(source: str) -> tuple[str, str | None]:
    """``"location#subfolder"`` -> ``("location", "subfolder")``."""
    location, _, subfolder = source.partition("#")
    return location, (subfolder or None)


def is_remote_uri(location: str) -> bool:
    scheme = urlparse(location).scheme
    return len(scheme) > 1 and scheme != "file"  # one letter: a Windows drive


def local_path(location: str) -> Path | None:
    """A local path for ``location`` if it names one (plain path or ``file://``), else None."""
    if location.startswith("file://"):
        return Path(urlparse(location).path)
    if is_remote_uri(location):
        return None
    path = Path(location).expanduser()
    return path if path.exists() else None


def _version(info: dict) -> str:
    """What identifies one version of an object: its ETag, else modification time, plus size."""
    for key in ("ETag", "etag", "LastModified", "mtime", "last_modified", "updated"):
        if info.get(key) is not None:
            return f"{info.get('size')}:{info[key]}"
    return str(info.get("size"))


def fetch(location: str, cache_dir: Path | None = None) -> Path:
    """Copy an object-store prefix (``s3://bucket/model``) into a local cache and return it.

    The cache key covers the URI *and* each object's version (ETag or mtime, and size), so a
    model re-exported to the same URI is fetched again; a partial copy from an interrupted call
    is never reused (it is written under a temporary name first).

    Safe with several processes on one node (the codec actors of one machine all start at once):
    a file lock (``filelock``, one per cache entry) lets one process download while the others
    wait and then reuse its copy; and where locks do not hold (some network filesystems), the
    loser of the final rename takes the winner's complete copy instead of failing (errno 39).
    """
    cache_dir = Path(cache_dir or DEFAULT_CACHE)
    fs, root = fsspec.core.url_to_fs(location)
    if not fs.exists(root):
        raise FileNotFoundError(f"nothing at {location}")
    is_dir = fs.isdir(root)
    listing = fs.find(root, detail=True) if is_dir else {root: fs.info(root)}
    key = hashlib.sha256(location.encode())
    for path in sorted(listing):
        key.update(f"\n{path}={_version(listing[path])}".encode())
    target = cache_dir / key.hexdigest()[:24]
    if target.is_dir():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if target.is_dir():  # another process fetched it while this one waited
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f"{target.name}.part", dir=cache_dir))
        try:
            for remote in listing:
                rel = remote[len(root.rstrip("/")) + 1:] if is_dir else Path(root).name
                dest = tmp / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                fs.get_file(remote, str(dest))
            _publish(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _publish(tmp: Path, target: Path) -> None:
    """Rename a complete copy into place; if another process got there first, keep its copy."""
    try:
        os.rename(tmp, target)
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not target.is_dir():
            raise


def resolve(source: str, cache_dir: Path | None = None) -> tuple[str, str | None]:
    """Turn a source into something ``from_pretrained`` takes: a local dir or a hub id (+subfolder)."""
    location, subfolder = split_source(source)
    path = local_path(location)
    if path is not None:
        return str(path), subfolder
    if is_remote_uri(location):
        return str(fetch(location, cache_dir)), subfolder
    return location, subfolder  # a hub id: the library resolves it (and its cache)
