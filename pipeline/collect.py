"""Regrouping a stream of result rows into complete shards (runs in the job's driver).

Rows of one shard can arrive in several batches, in any order, interleaved with other shards.
Each shard's reader ends it with a marker row (``_item == -1``) that carries the shard's row
count; a shard is complete once the marker and that many rows have arrived. Only complete
shards are written, which is what makes a killed run resumable without duplicates.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

MARKER_ITEM = -1


class ShardCollector:
    def __init__(self) -> None:
        self._parts: dict[int, list[pa.Table]] = {}
        self._rows: dict[int, int] = {}
        self._expected: dict[int, int] = {}

    @property
    def pending(self) -> int:
        """Shards that have started arriving but are not complete yet."""
        return len(set(self._parts) | set(self._expected))

    def add(self, batch: pa.Table) -> list[tuple[int, pa.Table]]:
        """Take one batch; return ``(shard index, rows sorted by _item)`` for each shard it completed."""
        touched = []
        for shard in pc.unique(batch.column("_shard")).to_pylist():
            rows = batch.filter(pc.equal(batch.column("_shard"), shard))
            is_marker = pc.equal(rows.column("_item"), MARKER_ITEM)
            for count in rows.filter(is_marker).column("_shard_rows").to_pylist():
                if shard in self._expected:
                    raise RuntimeError(f"shard {shard} was read twice in one run: report this as a bug")
                self._expected[shard] = count
            data = rows.filter(pc.invert(is_marker))
            if data.num_rows:
                self._parts.setdefault(shard, []).append(data)
                self._rows[shard] = self._rows.get(shard, 0) + data.num_rows
            touched.append(shard)
        done = []
        for shard in touched:
            expected = self._expected.get(shard)
            have = self._rows.get(shard, 0)
            if expected is None or have < expected:
                continue
            if have > expected:
                raise RuntimeError(f"shard {shard}: {have} rows arrived for {expected} inputs: report this as a bug")
            parts = self._parts.pop(shard, [])
            self._rows.pop(shard, None)
            self._expected.pop(shard)
            done.append((shard, _sorted(parts, batch.schema)))
        return done


def _sorted(parts: list[pa.Table], schema: pa.Schema) -> pa.Table:
    if not parts:
        return schema.empty_table()
    table = pa.concat_tables(parts, promote_options="permissive")
    return table.sort_by("_item")
