"""``sprdiff make-shards``: image folders or object-store prefixes -> WebDataset tar shards.

* Inputs: every file with an image extension under the input URI (recursively), local or any
  fsspec URI. Each is decoded with ``sprdiff.load_image``; files that fail are skipped and
  counted by status (``not_image``, ``truncated``, ...), each listed in the manifest.
* Keys: the file's path relative to the input, without extension, with every character other
  than letters, digits, ``-`` and ``_`` replaced by ``_`` (``cats/tabby.1.jpg`` ->
  ``cats_tabby_1``). Two files that map to the same key both get a hash of their relative path
  appended. Keys depend only on the relative path, so they stay the same across runs.
* Samples: ``<key>.<ext>`` holding the original bytes (lossless, no re-encoding) and
  ``<key>.json`` (source URI, width, height after EXIF rotation). An image with a side
  shorter than ``crop`` is upscaled (bicubic) so the short side equals ``crop`` and stored as PNG,
  so every sample yields a ``crop`` x ``crop`` training crop.
* Shards: ``shard-000000.tar``... with ``per_shard`` samples each, sorted by key across and
  within shards, members written in sorted order with fixed metadata (mtime 0), so the same
  input gives byte-identical shards. ``manifest.json`` is written last: it lists the shards,
  the counts and every skipped file. Shards left over from an earlier, larger run are removed.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import fsspec
import numpy as np
from fsspec.implementations.local import LocalFileSystem
from PIL import Image
from webdataset import TarWriter

from sprdiff import ImageError, load_image
from sprdiff.images import DEFAULT_MAX_PIXELS, encode_png

IMAGE_SUFFIXES = {".png": "png", ".jpg": "jpg", ".jpeg": "jpg", ".webp": "webp", ".bmp": "bmp", ".tif": "tiff",
                  ".tiff": "tiff", ".gif": "gif", ".ppm": "ppm"}
SHARD_PATTERN = re.compile(r"^shard-(\d{6})\.tar$")
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True)
class SourceImage:
    key: str
    uri: str
    ext: str  # tar member extension for the original bytes


@dataclass
class ShardStats:
    shards: list[dict] = field(default_factory=list)  # {"name", "samples", "first_key", "last_key"}
    written: int = 0
    upscaled: int = 0
    skipped: Counter = field(default_factory=Counter)  # status -> count
    errors: list[dict] = field(default_factory=list)  # {"key", "source_uri", "status", "error"}

    def to_dict(self) -> dict:
        return {"samples": self.written, "upscaled": self.upscaled, "skipped": dict(sorted(self.skipped.items())),
                "shards": self.shards, "errors": self.errors}


def sample_key(relative_path: str) -> str:
    stem = str(PurePosixPath(relative_path).with_suffix(""))
    return re.sub(r"[^A-Za-z0-9_-]", "_", stem)


def find_images(input_uri: str, exclude: tuple[str, ...] = (), include: tuple[str, ...] = ()) -> list[SourceImage]:
    """Image files under ``input_uri`` with their stable keys, sorted by key. ``exclude``: glob
    patterns matched against each file's path relative to ``input_uri`` (e.g. held-out images);
    ``include``: when given, only files matching one of these (e.g. a validation split)."""
    fs, root = fsspec.core.url_to_fs(input_uri)
    if not fs.exists(root):
        raise FileNotFoundError(f"no such input: {input_uri}")
    root = root.rstrip("/")
    paths = [root] if fs.isfile(root) else fs.find(root)
    found: dict[str, list[tuple[str, str, str]]] = {}
    for path in paths:
        suffix = PurePosixPath(path).suffix.lower()
        if suffix not in IMAGE_SUFFIXES:
            continue
        relative = PurePosixPath(path).name if path == root else path[len(root) + 1:]
        if any(fnmatch.fnmatchcase(relative, pattern) for pattern in exclude):
            continue
        if include and not any(fnmatch.fnmatchcase(relative, pattern) for pattern in include):
            continue
        found.setdefault(sample_key(relative), []).append((relative, fs.unstrip_protocol(path), IMAGE_SUFFIXES[suffix]))
    images = []
    for key, entries in found.items():
        for relative, uri, ext in entries:
            unique = key if len(entries) == 1 else f"{key}_{hashlib.sha1(relative.encode()).hexdigest()[:8]}"
            images.append(SourceImage(unique, uri, ext))
    return sorted(images, key=lambda image: image.key)


def prepare_sample(image: SourceImage, crop: int, max_pixels: int) -> tuple[dict, bool]:
    """Read and validate one image -> (WebDataset sample, upscaled?). Raises ImageError."""
    try:
        with fsspec.open(image.uri, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ImageError(f"cannot read: {e}", status="unreadable") from e
    pixels = load_image(data, max_pixels=max_pixels)
    height, width = pixels.shape[:2]
    upscaled = min(height, width) < crop
    if upscaled:
        scale = crop / min(height, width)
        size = (max(crop, round(width * scale)), max(crop, round(height * scale)))
        pixels = np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BICUBIC))
        height, width = pixels.shape[:2]
        ext, data = "png", encode_png(pixels)
    else:
        ext = image.ext
    meta = {"source_uri": image.uri, "width": width, "height": height, "upscaled": upscaled}
    return {"__key__": image.key, ext: data, "json": json.dumps(meta, sort_keys=True).encode()}, upscaled


def _prepared(images: list[SourceImage], crop: int, max_pixels: int, threads: int
              ) -> Iterator[tuple[SourceImage, tuple[dict, bool] | ImageError]]:
    """Results in input order, at most ``2 * threads`` images in memory at once."""
    with ThreadPoolExecutor(max_workers=threads) as pool:
        pending: list[tuple[SourceImage, Future]] = []
        for image in images:
            pending.append((image, pool.submit(prepare_sample, image, crop, max_pixels)))
            if len(pending) >= 2 * threads:
                yield _result(*pending.pop(0))
        while pending:
            yield _result(*pending.pop(0))


def _result(image: SourceImage, future: Future):
    try:
        return image, future.result()
    except ImageError as e:
        return image, e


def make_shards(input_uri: str, output_uri: str, *, crop: int = 512, per_shard: int = 256,
                max_pixels: int = DEFAULT_MAX_PIXELS, threads: int = 8, exclude: tuple[str, ...] = (),
                include: tuple[str, ...] = (), log=print) -> ShardStats:
    if crop < 1 or per_shard < 1 or threads < 1:
        raise ValueError(f"crop, per_shard and threads must be >= 1, got {crop}, {per_shard}, {threads}")
    images = find_images(input_uri, exclude, include)
    if not images:
        raise FileNotFoundError(f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) under {input_uri}")
    fs, root = fsspec.core.url_to_fs(output_uri)
    root = root.rstrip("/")
    fs.makedirs(root, exist_ok=True)
    stats = ShardStats()
    writer: _ShardWriter | None = None
    for image, result in _prepared(images, crop, max_pixels, threads):
        if isinstance(result, ImageError):
            stats.skipped[result.status] += 1
            stats.errors.append({"key": image.key, "source_uri": image.uri, "status": result.status,
                                 "error": str(result)})
            continue
        sample, upscaled = result
        if writer is None or writer.count == per_shard:
            if writer is not None:
                stats.shards.append(writer.close())
            writer = _ShardWriter(fs, f"{root}/shard-{len(stats.shards):06d}.tar")
        writer.write(sample)
        stats.written += 1
        stats.upscaled += upscaled
        if stats.written % 1000 == 0:
            log(f"make-shards: {stats.written} samples written, {sum(stats.skipped.values())} skipped")
    if writer is not None:
        stats.shards.append(writer.close())
    _remove_stale_shards(fs, root, len(stats.shards))
    manifest = {"input": input_uri, "crop": crop, "per_shard": per_shard, **stats.to_dict()}
    fs.pipe_file(f"{root}/{MANIFEST_NAME}", (json.dumps(manifest, indent=1) + "\n").encode())
    return stats


class _ShardWriter:
    """Streams one tar to the store: a temporary name then a rename on local disks; on object
    stores the object only appears when the (multipart) upload completes."""

    def __init__(self, fs, path: str):
        self.fs, self.path, self.count = fs, path, 0
        self.local = isinstance(fs, LocalFileSystem)
        self.written_path = f"{path}.partial" if self.local else path
        self.stream = fs.open(self.written_path, "wb")
        self.tar = TarWriter(self.stream, encoder=False, mtime=0, user="", group="", mode=0o644)
        self.first_key: str | None = None
        self.last_key: str | None = None

    def write(self, sample: dict) -> None:
        self.tar.write(sample)
        self.count += 1
        self.first_key = self.first_key or sample["__key__"]
        self.last_key = sample["__key__"]

    def close(self) -> dict:
        self.tar.close()
        self.stream.close()
        if self.local:
            os.replace(self.written_path, self.path)
        return {"name": PurePosixPath(self.path).name, "samples": self.count, "first_key": self.first_key,
                "last_key": self.last_key}


def _remove_stale_shards(fs, root: str, keep: int) -> None:
    for path in fs.ls(root, detail=False):
        match = SHARD_PATTERN.match(PurePosixPath(path).name)
        if match and int(match.group(1)) >= keep:
            fs.rm_file(path)
