"""Codec groups: which images of a part share one neural call, decided from the part's data alone.

A group is up to ``batch_size`` images of one padded size from one part, in the part's read
order. The read stage numbers them (``_group``) and yields only whole groups in a batch; a codec
actor runs each group it is handed as one ``compress`` call. Because the groups depend only on
the part's images and the settings, never on how Ray cuts blocks or which actor takes them, a
rerun of a part makes the same calls and so writes the same bytes (the determinism contract in
``docs/codec.md``), which is what a resumed or healed part relies on.

Two byte budgets keep this safe and bounded:

* a group's pixels stay under ``group_bytes`` (one image above it is a group alone), and a
  batch is yielded once it reaches ``batch_bytes``, so a yielded batch stays under
  ``batch_bytes + group_bytes``. Ray Data only slices an output block that reaches 1.5x its
  target size (``DataContext.target_max_block_size``), and it emits a block as soon as it passes
  the target, so with both budgets at a quarter of the target no block is ever cut inside a group;
* images waiting for their group to fill hold at most ``held_bytes``: past it the fullest open
  group is closed early (a deterministic choice: it depends only on the images so far).
"""

from __future__ import annotations

from collections.abc import Iterator

from sprdiff.config import SPRDiffConfig
from sprdiff.images import padded_size

MIB = 1 << 20
RAY_TARGET_BLOCK_BYTES = 128 * MIB  # Ray Data's default target_max_block_size
# the presets' pad multiple; a model with another one re-splits a group by its own padded sizes
PAD_MULTIPLE = SPRDiffConfig.pad_multiple
NO_GROUP = -1  # rows with no image to encode (a bad input, the part's marker)


def budgets(target_block_bytes: int | None = None) -> dict[str, int]:
    """``group_bytes``/``batch_bytes``/``held_bytes`` for Ray Data's block target (see the module doc)."""
    quarter = max((target_block_bytes or RAY_TARGET_BLOCK_BYTES) // 4, 1)
    return {"group_bytes": quarter, "batch_bytes": quarter, "held_bytes": 4 * quarter}


class CodecGroups:
    """Forms the groups of one part: feed it the part's ``ok`` rows in read order with :meth:`add`,
    then :meth:`finish`; each returns the groups it closed, every row stamped with its ``_group``."""

    def __init__(self, batch_size: int, *, group_bytes: int = 32 * MIB, held_bytes: int = 128 * MIB):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size, self.group_bytes, self.held_bytes = batch_size, group_bytes, held_bytes
        self._open: dict[tuple[int, int], list[dict]] = {}
        self._open_bytes: dict[tuple[int, int], int] = {}
        self._held = 0
        self._next = 0

    def add(self, row: dict) -> list[list[dict]]:
        pixels = row["pixels"]
        size, nbytes = padded_size(*pixels.shape[:2], PAD_MULTIPLE), pixels.nbytes
        closed = []
        if size in self._open and self._open_bytes[size] + nbytes > self.group_bytes:
            closed.append(self._close(size))  # this image would take the group past its budget
        self._open.setdefault(size, []).append(row)
        self._open_bytes[size] = self._open_bytes.get(size, 0) + nbytes
        self._held += nbytes
        if len(self._open[size]) == self.batch_size or self._open_bytes[size] >= self.group_bytes:
            closed.append(self._close(size))
        while self._held > self.held_bytes:
            fullest = max(self._open, key=lambda s: (self._open_bytes[s], s))
            closed.append(self._close(fullest))
        return closed

    def finish(self) -> list[list[dict]]:
        """The groups still open, smallest padded size first."""
        return [self._close(size) for size in sorted(self._open)]

    def _close(self, size: tuple[int, int]) -> list[dict]:
        rows = self._open.pop(size)
        self._held -= self._open_bytes.pop(size)
        for row in rows:
            row["_group"] = self._next
        self._next += 1
        return rows


def group_indexes(shards, groups) -> Iterator[list[int]]:
    """Row indexes of a batch, one list per ``(shard, group)`` in order of first appearance; rows with
    ``NO_GROUP`` are skipped (the caller decides what to do with them)."""
    by_group: dict[tuple[int, int], list[int]] = {}
    for i, (shard, group) in enumerate(zip(shards, groups)):
        if group != NO_GROUP:
            by_group.setdefault((int(shard), int(group)), []).append(i)
    yield from by_group.values()
