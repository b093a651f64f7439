"""Finding rows in an archive without reading it: the part index, then row-group statistics.

* :class:`ArchiveIndex` says which parts there are and which keys each holds: from
  ``_index/parts.parquet`` (one small file), else from the ``_parts/`` sidecars, else (an archive written
  before parts had summaries, or any folder of Parquet files) from a listing, with no key ranges.
* :func:`read_part` reads one part's selected rows: for keys, only the row groups whose key
  statistics (min/max) can hold one of them; for a ``--where`` expression, pyarrow's own
  statistics pruning. Parts are sorted by key with row groups of at most 1,024 rows, so three keys
  out of a billion cost three part footers and three row groups.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from pyarrow.fs import FSSpecHandler, PyFileSystem

from pipeline.archive import INDEX_FILE, PARTS_DIR
from pipeline.inputs.listing import list_pages
from pipeline.schema import ADDED_COLUMNS, as_current, stored_name, with_added_columns
from pipeline.storage import Location


@dataclass(frozen=True)
class PartEntry:
    name: str  # part-00012 (the decode job's manifest part has the same name)
    index: int
    uri: str
    rows: int  # -1: unknown (no summary)
    first_key: str | None  # None: unknown
    last_key: str | None

    def may_hold(self, keys: list[str]) -> list[str]:
        """The sorted ``keys`` that fall in this part's key range (all of them when it is unknown)."""
        if self.rows == 0:
            return []
        if self.first_key is None or self.last_key is None:
            return keys
        lo = bisect.bisect_left(keys, self.first_key)
        hi = bisect.bisect_right(keys, self.last_key)
        return keys[lo:hi]


class ArchiveIndex:
    def __init__(self, location: Location, parts: list[PartEntry], digest: str, source: str):
        self.location, self.parts, self.digest, self.source = location, parts, digest, source

    @classmethod
    def open(cls, uri: str) -> ArchiveIndex:
        location = Location.of(uri)
        location.refresh()
        index_path = location.path(INDEX_FILE)
        if location.exists(index_path):
            with location.fs.open(index_path, "rb") as f:
                table = pq.read_table(f)
            return cls._from_rows(location, table.to_pylist(), "index")
        sidecars = sorted(p for p in _try_glob(location, location.path(PARTS_DIR, "part-*.json")))
        if sidecars:
            rows = [json.loads(location.read_bytes(p)) for p in sidecars]
            return cls._from_rows(location, rows, "sidecars")
        return cls._from_listing(location)

    @classmethod
    def _from_rows(cls, location: Location, rows: list[dict], source: str) -> ArchiveIndex:
        parts = [PartEntry(r["part"], int(r["shard"]), location.uri(location.path(f"{r['part']}.parquet")),
                           int(r["rows"]), r["first_key"] if r["rows"] else None, r["last_key"] if r["rows"] else None)
                 for r in rows]
        parts.sort(key=lambda p: p.index)
        digest = hashlib.sha256("\n".join(f"{r['part']}\t{r['rows']}\t{r.get('sha256', '')}" for r in
                                          sorted(rows, key=lambda r: r["part"])).encode()).hexdigest()
        return cls(location, parts, digest, source)

    @classmethod
    def _from_listing(cls, location: Location) -> ArchiveIndex:
        files = sorted((rel, size) for page in list_pages(location) for rel, size in page
                       if rel.endswith(".parquet") and not any(p.startswith("_") for p in rel.split("/")))
        if not files:
            raise FileNotFoundError(f"no Parquet files under {location.uri()}")
        single = location.fs.isfile(location.root)
        base = location.root.rsplit("/", 1)[0] if single else location.root
        parts = [PartEntry(f"part-{i:05d}", i, location.uri(f"{base.rstrip('/')}/{rel}"), -1, None, None)
                 for i, (rel, _) in enumerate(files)]
        digest = hashlib.sha256("\n".join(f"{rel}\t{size}" for rel, size in files).encode()).hexdigest()
        return cls(location, parts, digest, "listing")

    def select(self, keys: list[str] | None) -> Iterator[tuple[PartEntry, list[str] | None]]:
        """The parts that may hold any of the sorted ``keys`` (every part when ``keys`` is None), each
        with the keys it may hold."""
        for part in self.parts:
            if keys is None:
                yield part, None
                continue
            wanted = part.may_hold(keys)
            if wanted:
                yield part, wanted


def _try_glob(location: Location, pattern: str) -> list[str]:
    try:
        return location.fs.glob(pattern)
    except FileNotFoundError:
        return []


def _key_groups(pf: pq.ParquetFile, keys: list[str]) -> list[int]:
    """Row groups whose key statistics may hold one of the sorted ``keys`` (all, without statistics)."""
    names = pf.schema_arrow.names
    if "key" not in names:
        return list(range(pf.metadata.num_row_groups))
    column = names.index("key")
    groups = []
    for i in range(pf.metadata.num_row_groups):
        stats = pf.metadata.row_group(i).column(column).statistics
        if stats is None or not stats.has_min_max:
            groups.append(i)
            continue
        lo = bisect.bisect_left(keys, stats.min)
        if lo < len(keys) and keys[lo] <= stats.max:
            groups.append(i)
    return groups


def read_part(uri: str, *, keys: list[str] | None = None, where: pc.Expression | None = None,
              columns: list[str] | None = None) -> pa.Table:
    """The rows of one part with a key in the sorted ``keys`` and matching ``where``, reading only the row
    groups that may hold them. Columns have today's names whatever the part's layout, and the columns
    added since it read as nulls, in ``where`` too (``pipeline.schema.as_current``)."""
    location = Location.of(uri)
    wanted = columns
    if keys is not None:
        with location.fs.open(location.root, "rb") as f:
            pf = pq.ParquetFile(f)
            columns = _as_stored(columns, pf.schema_arrow.names)
            groups = _key_groups(pf, keys)
            table = pf.read_row_groups(groups, columns=columns) if groups else \
                pf.schema_arrow.empty_table().select(columns if columns is not None else pf.schema_arrow.names)
        table = as_current(table.filter(pc.is_in(table.column("key"), value_set=pa.array(keys, pa.string()))))
        return as_current(table.filter(where) if where is not None and table.num_rows else table, wanted)
    if where is None and columns is None:
        with location.fs.open(location.root, "rb") as f:
            return as_current(pq.read_table(f))
    with location.fs.open(location.root, "rb") as f:
        schema = pq.read_schema(f)
    columns = _as_stored(columns, schema.names)
    if where is None:
        with location.fs.open(location.root, "rb") as f:
            return as_current(pq.read_table(f, columns=columns), wanted)
    dataset = ds.dataset(location.root, format="parquet", filesystem=PyFileSystem(FSSpecHandler(location.fs)),
                         schema=with_added_columns(schema))
    return as_current(dataset.to_table(columns=columns, filter=where), wanted)


def _as_stored(columns: list[str] | None, file_names: list[str]) -> list[str] | None:
    """Today's column names as a part spells them (layout 1: bitstream), without the columns added since
    its layout (``as_current`` adds those, as nulls)."""
    if columns is None:
        return None
    added = {c.name for c in ADDED_COLUMNS}
    return [stored_name(c, file_names) for c in columns if not (c in added and c not in file_names)]


def find(archive: str, keys: list[str], columns: list[str] | None = None) -> pa.Table:
    """Every row of the archive whose key is in ``keys`` (no Ray: what ``sprdiff get`` uses)."""
    wanted = sorted(set(keys))
    index = ArchiveIndex.open(archive)
    tables = [read_part(part.uri, keys=held, columns=columns) for part, held in index.select(wanted)]
    tables = [t for t in tables if t.num_rows]
    if not tables:
        return pa.table({"key": pa.array([], pa.string())})
    return pa.concat_tables(tables, promote_options="permissive")
