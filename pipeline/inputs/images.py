"""Image files: one item (and one archive row) per file, read whole unless over the read limit.

A file that vanished or could not be read is a ``read_error`` row with its cause: such failures
may be transient, and ``encode-job --retry-errors`` reads them again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from pipeline.inputs.items import SourceItem, too_large_message
from pipeline.inputs.plan import PlanItem
from pipeline.storage import Location


def read_files(items: list[PlanItem], max_bytes: int | None) -> Iterator[SourceItem]:
    for item in items:
        if item.status != "ok":  # an inventory entry that names no readable object, a repeated key
            yield SourceItem(item.key, item.uri, None, status=item.status, error=item.error)
            continue
        if max_bytes is not None and item.size > max_bytes:
            yield SourceItem(item.key, item.uri, None, status="too_large",
                             error=too_large_message("the file", item.size, max_bytes))
            continue
        yield _read_one(item, max_bytes)


def _read_one(item: PlanItem, max_bytes: int | None) -> SourceItem:
    t0 = time.perf_counter()
    location = Location.of(item.uri)
    try:
        if item.size >= 0 or max_bytes is None:
            data = location.fs.cat_file(location.root)
        else:  # size unknown (an inventory without sizes): never read past the limit
            with location.fs.open(location.root, "rb") as f:
                data = f.read(max_bytes + 1)
            if len(data) > max_bytes:
                return SourceItem(item.key, item.uri, None, status="too_large", read_s=time.perf_counter() - t0,
                                  error=too_large_message("the file", location.fs.size(location.root), max_bytes))
    except FileNotFoundError as e:
        return SourceItem(item.key, item.uri, None, status="read_error", read_s=time.perf_counter() - t0,
                          error=f"file vanished before it was read: {e}")
    except OSError as e:
        return SourceItem(item.key, item.uri, None, status="read_error", read_s=time.perf_counter() - t0,
                          error=f"cannot read: {e}")
    return SourceItem(item.key, item.uri, data, read_s=time.perf_counter() - t0)
