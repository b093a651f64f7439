"""WebDataset tar shards: one item per tar, one archive row per sample (the member with an image suffix).

A damaged tar keeps the samples before the damage and adds one ``read_error`` row (keyed by the
shard) for the rest; tar members larger than the read limit are skipped, never read into memory.
"""

from __future__ import annotations

import tarfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

from PIL import Image

from pipeline.inputs.items import SourceItem, too_large_message
from pipeline.inputs.plan import PlanItem
from pipeline.keys import shard_member_key
from pipeline.storage import Location

IMAGE_SUFFIXES = frozenset(ext.lstrip(".").lower() for ext in Image.registered_extensions())


def read_tars(items: list[PlanItem], max_bytes: int | None) -> Iterator[SourceItem]:
    for item in items:
        yield from _read_tar(item, max_bytes)


def _pick_member(sample: dict, suffix: str | None) -> str | None:
    if suffix is not None:
        return suffix if suffix in sample else None
    candidates = sorted(k for k in sample if _is_image_member(k))
    return candidates[0] if candidates else None


def _is_image_member(suffix: str) -> bool:
    return suffix.rsplit(".", 1)[-1] in IMAGE_SUFFIXES


class _StrictTarInfo(tarfile.TarInfo):
    """Raises where :mod:`tarfile` would quietly end the archive: at a damaged member header, or where
    the data stops without the end-of-archive marker. Either way the samples after it would be lost
    without a word."""

    @classmethod
    def fromtarfile(cls, tar):
        offset = tar.fileobj.tell()
        try:
            return super().fromtarfile(tar)
        except tarfile.EOFHeaderError:
            raise  # a block of zeros: the end-of-archive marker
        except tarfile.InvalidHeaderError as e:
            raise tarfile.ReadError(f"damaged member header at byte {offset:,} ({e})") from None
        except (tarfile.EmptyHeaderError, tarfile.TruncatedHeaderError):
            raise tarfile.ReadError(f"the data stops at byte {offset:,} without the end-of-archive marker "
                                    f"(cut short)") from None


@dataclass
class _Sample:
    key: str
    members: dict[str, bytes | None] = field(default_factory=dict)  # suffix -> bytes (None: not read)
    sizes: dict[str, int] = field(default_factory=dict)
    error: str | None = None  # the tar broke off while this sample's members were read


def _tar_samples(fileobj, wanted, max_bytes: int | None) -> Iterator[_Sample]:
    """Samples of a tar stream (consecutive members sharing a key, as WebDataset groups them).

    Only members ``wanted(suffix)`` accepts are read, and only up to ``max_bytes``; the others are
    skipped (their size is kept). A repeated suffix starts a new sample with the same key. Where the
    tar is damaged, the sample being read is yielded (with ``error`` if one of its members was cut),
    then the error is raised.
    """
    # webdataset's member naming, imported here: webdataset imports torch, seconds of start-up
    # for every reading task that never sees a tar
    from webdataset.tariterators import base_plus_ext

    current: _Sample | None = None
    in_member = False
    try:
        with tarfile.open(fileobj=fileobj, mode="r|*", tarinfo=_StrictTarInfo) as tar:
            for info in tar:
                tar.members = []  # a stream: keep no history
                if not info.isreg():
                    continue
                if "/" not in info.name and info.name.startswith("__") and info.name.endswith("__"):
                    continue  # WebDataset metadata
                key, suffix = base_plus_ext(info.name)
                if key is None:
                    continue  # no suffix: not part of any sample
                suffix = suffix.lower()
                if current is None or key != current.key or suffix in current.members:
                    if current is not None:
                        yield current
                    current = _Sample(key)
                current.sizes[suffix] = info.size
                current.members[suffix] = None
                if wanted(suffix) and (max_bytes is None or info.size <= max_bytes):
                    in_member = True
                    current.members[suffix] = tar.extractfile(info).read()
                    in_member = False
    except _TAR_ERRORS as e:
        if current is not None:
            if in_member:
                current.error = f"the tar breaks off inside this sample's members: {e}"
            yield current
        raise
    if current is not None:
        yield current


_TAR_ERRORS = (tarfile.TarError, OSError, EOFError, ValueError, zlib.error)


def _read_tar(shard: PlanItem, max_bytes: int | None) -> Iterator[SourceItem]:
    uri, shard_key = shard.uri, shard.key
    location = Location.of(uri)
    wanted = (lambda s: s == shard.image_column) if shard.image_column else _is_image_member
    t0 = time.perf_counter()
    count, seen = 0, set()
    try:
        with location.fs.open(location.root, "rb") as f:
            for sample in _tar_samples(f, wanted, max_bytes):
                seconds, t0 = time.perf_counter() - t0, time.perf_counter()
                count += 1
                yield _sample_item(shard, sample, seen, seconds, max_bytes)
    except _TAR_ERRORS as e:
        yield SourceItem(shard_key, uri, None, status="read_error", read_s=time.perf_counter() - t0,
                         error=f"tar shard damaged after {count} sample(s); whatever follows is lost: {e}")


def _sample_item(shard: PlanItem, sample: _Sample, seen: set[str], seconds: float,
                 max_bytes: int | None) -> SourceItem:
    uri, shard_key = shard.uri, shard.key
    key = shard_member_key(shard_key, sample.key)
    if key in seen:
        copy = 2
        while f"{key}~{copy}" in seen:
            copy += 1
        first, key = key, f"{key}~{copy}"
        seen.add(key)
        return SourceItem(key, uri, None, status="duplicate_key", read_s=seconds,
                          error=f"sample key {sample.key!r} appears again in the shard (first row: {first!r}); "
                                f"this copy is not encoded")
    seen.add(key)
    if sample.error is not None:
        return SourceItem(key, uri, None, status="read_error", error=sample.error, read_s=seconds)
    member = _pick_member(sample.members, shard.image_column)
    if member is None:
        present = ", ".join(sorted(sample.members))
        return SourceItem(key, uri, None, status="no_image", read_s=seconds,
                          error=f"sample has no image member (members: {present})")
    data = sample.members[member]
    if data is None:
        return SourceItem(key, uri, None, status="too_large", read_s=seconds,
                          error=too_large_message(f"member .{member}", sample.sizes[member], max_bytes or 0))
    return SourceItem(key, uri, data, read_s=seconds)


