"""Which images an evaluation reads: a local directory, a file glob, one file, or an fsspec URI prefix."""

from __future__ import annotations

from dataclasses import dataclass

import fsspec

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".avif")
_GLOB_CHARS = set("*?[")


@dataclass(frozen=True)
class ImageSource:
    key: str  # stable id: the path relative to the input root (or the file name for a glob)
    uri: str  # what fsspec opens

    def read(self) -> bytes:
        with fsspec.open(self.uri, "rb") as f:
            return f.read()


def list_images(uri: str, limit: int | None = None) -> list[ImageSource]:
    """Image files under ``uri`` in sorted order (by key), at most ``limit`` of them.

    A directory (local or object-store prefix) is searched recursively for files with an image
    extension (others, e.g. a README, are ignored); a glob returns its matches whatever their
    extension; a single file is returned as is. Raises FileNotFoundError when nothing matches.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    fs, path = fsspec.core.url_to_fs(uri)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]

    def to_uri(p: str) -> str:
        return p if protocol in ("file", "local") else f"{protocol}://{p}"

    if _GLOB_CHARS & set(path):
        matches = sorted(p for p in fs.glob(path) if fs.isfile(p))
        sources = [ImageSource(p.rsplit("/", 1)[-1], to_uri(p)) for p in matches]
    elif fs.isdir(path):
        root = path.rstrip("/")
        found = sorted(p for p in fs.find(root) if p.lower().endswith(IMAGE_EXTENSIONS))
        sources = [ImageSource(p[len(root) + 1:], to_uri(p)) for p in found]
    elif fs.isfile(path):
        sources = [ImageSource(path.rsplit("/", 1)[-1], to_uri(path))]
    else:
        raise FileNotFoundError(f"no images at {uri}: not a directory, file or matching glob")
    keys = [s.key for s in sources]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{uri}: several files would share a key (same name in a glob); use a directory instead")
    if not sources:
        raise FileNotFoundError(f"no image files at {uri} (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return sources[:limit] if limit else sources
