"""Regrouping a stream of result rows into complete shards (runs in the part-writing stage).

Rows of one shard can arrive in several batches, in any order, interleaved with other shards.
Each shard's reader ends it with a marker row (``_item == -1``) that carries the shard's row
count; a shard is complete once the marker and that many rows have arrived. Only complete
shards are written, which is what makes a killed run resumable without duplicates.

Ray may run a batch twice (an actor died after its output was sent, a task was retried), so a
row can arrive again: rows are de-duplicated on ``(shard, item)`` and a repeated marker with the
same count is ignored. Two markers that disagree are a bug and raise.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

MARKER_ITEM = -1


class ShardCollector:
    def __init__(self) -> None:
        self._parts: dict[int, list[pa.Table]] = {}
        self._seen: dict[int, set[int]] = {}
        self._expected: dict[int, int] = {}
        self._done: set[int] = set()
        self.repeated_rows = 0

    @property
    def pending(self) -> int:
        """Shards that have started arriving but are not complete yet."""
        return len(set(self._parts) | set(self._expected))

    def add(self, batch: pa.Table) -> list[tuple[int, pa.Table]]:
        """Take one batch; return ``(shard index, rows sorted by _item)`` for each shard it completed."""
        touched = []
        for shard in pc.unique(batch.column("_shard")).to_pylist():
            if shard in self._done:  # the whole shard again, after it was written: a retried batch
                self.repeated_rows += pc.sum(pc.equal(batch.column("_shard"), shard)).as_py() or 0
                continue
            rows = batch.filter(pc.equal(batch.column("_shard"), shard))
            is_marker = pc.equal(rows.column("_item"), MARKER_ITEM)
            for count in rows.filter(is_marker).column("_shard_rows").to_pylist():
                if self._expected.get(shard, count) != count:
                    raise RuntimeError(f"shard {shard} was read twice with different row counts "
                                       f"({self._expected[shard]} and {count}): report this as a bug")
                self._expected[shard] = count
            data = self._new_rows(shard, rows.filter(pc.invert(is_marker)))
            if data.num_rows:
                self._parts.setdefault(shard, []).append(data)
            touched.append(shard)
        done = []
        for shard in touched:
            expected = self._expected.get(shard)
            have = len(self._seen.get(shard, ()))
            if expected is None or have < expected:
                continue
            if have > expected:
                raise RuntimeError(f"shard {shard}: {have} rows arrived for {expected} inputs: report this as a bug")
            parts = self._parts.pop(shard, [])
            self._seen.pop(shard, None)
            self._expected.pop(shard)
            self._done.add(shard)
            done.append((shard, _sorted(parts, batch.schema)))
        return done

    def _new_rows(self, shard: int, data: pa.Table) -> pa.Table:
        seen = self._seen.setdefault(shard, set())
        kept = []
        for i, item in enumerate(data.column("_item").to_pylist()):
            if item not in seen:
                seen.add(item)
                kept.append(i)
        if len(kept) < data.num_rows:
            self.repeated_rows += data.num_rows - len(kept)
            data = data.take(pa.array(kept, pa.int64()))
        return data


def _sorted(parts: list[pa.Table], schema: pa.Schema) -> pa.Table:
    if not parts:
        return schema.empty_table()
    table = pa.concat_tables(parts, promote_options="permissive")
    return table.sort_by("_item")
