"""Listing a prefix page by page, never whole: S3 through ListObjectsV2 pages, local disks one
directory at a time, other fsspec stores one ``ls`` per directory.

Pages come in whatever order the store gives; planning sorts them (``pipeline.inputs.sorting``).
Hidden files (any path component starting with ``.``) are skipped. Where listing is the
bottleneck, :func:`sub_prefixes` cuts a prefix into its first-level folders, which
``pipeline.ray_runner.list_in_tasks`` lists in parallel Ray tasks.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterator

from fsspec.asyn import sync

from pipeline.storage import Location

PAGE = 1000  # S3's page size; local and other listings are cut to the same size

Page = list[tuple[str, int]]  # (path relative to the listed root, size in bytes)


def visible(relative_path: str) -> bool:
    return bool(relative_path) and not any(part.startswith(".") for part in relative_path.split("/"))


def list_pages(location: Location, sub_prefix: str = "") -> Iterator[Page]:
    """Pages of ``(relative path, size)`` of every visible file under the location (or the file itself).

    ``sub_prefix`` (a relative folder, ``"2024/"``) lists only below it; paths stay relative to the root.
    """
    fs, root = location.fs, location.root
    if not sub_prefix:
        if not fs.exists(root):
            raise FileNotFoundError(f"input {location.uri()} does not exist")
        if fs.isfile(root):
            yield [(posixpath.basename(root), int(fs.size(root)))]
            return
    if hasattr(fs, "_list_pages") and hasattr(fs, "split_path"):
        yield from _s3_pages(location, sub_prefix)
    elif location.is_local:
        yield from _local_pages(root, sub_prefix)
    else:
        yield from _walk_pages(location, sub_prefix)


def _s3_pages(location: Location, sub_prefix: str) -> Iterator[Page]:
    fs = location.fs
    bucket, key, _ = fs.split_path(location.root)
    prefix = f"{key.rstrip('/')}/" if key else ""
    pages = fs._list_pages("list_objects_v2", Bucket=bucket, Prefix=prefix + sub_prefix, **fs.req_kw)
    while True:
        try:
            out = sync(fs.loop, pages.__anext__)
        except StopAsyncIteration:
            return
        page = []
        for obj in out.get("Contents", []):
            relative = obj["Key"][len(prefix):]
            if visible(relative) and not relative.endswith("/"):
                page.append((relative, int(obj.get("Size") or 0)))
        yield page


def _local_pages(root: str, sub_prefix: str) -> Iterator[Page]:
    page: Page = []
    start = os.path.join(root, sub_prefix) if sub_prefix else root
    stack = [start]
    while stack:
        directory = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)
            elif entry.is_file():
                page.append((os.path.relpath(entry.path, root).replace(os.sep, "/"), entry.stat().st_size))
                if len(page) >= PAGE:
                    yield page
                    page = []
    if page:
        yield page


def _walk_pages(location: Location, sub_prefix: str) -> Iterator[Page]:
    root = location.root.rstrip("/")
    stack = [f"{root}/{sub_prefix.rstrip('/')}" if sub_prefix else root]
    page: Page = []
    while stack:
        for info in location.fs.ls(stack.pop(), detail=True):
            name = info["name"].rstrip("/")
            relative = name[len(root) + 1:]
            if not visible(relative):
                continue
            if info.get("type") == "directory":
                stack.append(name)
            else:
                page.append((relative, int(info.get("size") or 0)))
                if len(page) >= PAGE:
                    yield page
                    page = []
    if page:
        yield page


def sub_prefixes(location: Location) -> tuple[list[str], Page]:
    """The first-level folders under the root (``["a/", "b/"]``) and the files directly in it."""
    folders, files = [], []
    root = location.root.rstrip("/")
    for info in location.fs.ls(root, detail=True):
        name = info["name"].rstrip("/")
        relative = name[len(root) + 1:]
        if not visible(relative):
            continue
        if info.get("type") == "directory":
            folders.append(relative + "/")
        else:
            files.append((relative, int(info.get("size") or 0)))
    return sorted(folders), files
