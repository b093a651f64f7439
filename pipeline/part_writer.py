"""The last stage of both jobs: regroup result rows into parts, write each complete part, yield its summary.

It runs on a Ray worker (one actor: every row of a part must reach the same collector), never in
the driver, and writes each part whole under its final name (an object-store PUT; on a local disk
a fsynced temporary file renamed into place), then the part's ``_parts/`` sidecar. What it returns
to the driver is one small summary row per part written.

* encode: the archive part (rows sorted by key, footer metadata of CONTRACTS §1). A healing task
  (``--retry-errors``) brings only some rows: they replace the rows with the same keys in the
  existing part, which is rewritten atomically.
* decode: the manifest part under ``_manifest/`` (and, for WebDataset output, the part's tar).
"""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.archive import (
    archive_table,
    footer_metadata,
    manifest_table,
    parquet_bytes,
    summarise_archive_part,
    summarise_manifest_part,
    write_sidecar,
)
from pipeline.collect import ShardCollector
from pipeline.inputs.plan import part_name
from pipeline.schema import ARCHIVE_COLUMNS, MANIFEST_COLUMNS
from pipeline.storage import Location
from sprdiff import FORMAT_VERSION

SUMMARY_COLUMN = "summary"
MANIFEST_DIR = "_manifest"


def batch_table(batch: dict[str, np.ndarray]) -> pa.Table:
    """A numpy batch (object arrays for strings and bytes) as an Arrow table."""
    return pa.table({k: pa.array(list(v)) if v.dtype == object else pa.array(v) for k, v in batch.items()})


def summaries_batch(summaries: list[dict]) -> dict[str, np.ndarray]:
    column = np.empty(len(summaries), dtype=object)
    column[:] = [json.dumps(s, sort_keys=True) for s in summaries]
    return {SUMMARY_COLUMN: column}


class PartWriter:
    """``job``: what every part shares (kind, output, job_id, plan_digest, ...); ``tasks``: index -> payload
    of the parts this run writes."""

    def __init__(self, job: dict, tasks: dict[int, dict], *, on_part: Callable[[dict], None] | None = None):
        self.job, self.tasks, self.on_part = job, tasks, on_part
        self.out = Location.of(job["output"])
        self.collector = ShardCollector()
        self.fingerprint = job.get("fingerprint") or None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        summaries = []
        if len(next(iter(batch.values()), ())):
            for index, rows in self.collector.add(batch_table(batch)):
                summary = self.write(index, rows)
                summaries.append(summary)
                if self.on_part:
                    self.on_part(summary)
        return summaries_batch(summaries)

    def write(self, index: int, rows: pa.Table) -> dict:
        if self.job["job"] == "encode":
            return self._write_archive_part(index, rows)
        return self._write_manifest_part(index, rows)

    def _write_archive_part(self, index: int, rows: pa.Table) -> dict:
        name, task = part_name(index), self.tasks.get(index, {})
        table = archive_table(rows)
        self._check_fingerprint(table)
        path = self.out.path(f"{name}.parquet")
        if task.get("only_keys") is not None:
            table = _merged(self.out, path, table)
        metadata = {"model_id": _first(table, "model_id"), "model_fingerprint": self.fingerprint or "",
                    "model_source": self.job.get("model_source", ""), "model_store": self.job.get("model_store", ""),
                    "writer_record_version": str(FORMAT_VERSION),  # layout 1 named it format_version
                    "job": json.dumps({"input": self.job.get("input", ""), "input_format": self.job.get("kind", ""),
                                       "shard": name}),
                    **footer_metadata(self.job["job_id"], self.job["plan_digest"], index, table)}
        data = parquet_bytes(table, ARCHIVE_COLUMNS, metadata)
        self.out.write_bytes(path, data)
        summary = summarise_archive_part(name, index, self.job["job_id"], data, table)
        summary["bpp_sum"] = float(pc.sum(table.column("bpp")).as_py() or 0.0)
        write_sidecar(self.out, summary)
        return summary

    def _check_fingerprint(self, table: pa.Table) -> None:
        """An archive never mixes two models."""
        found = {f for f, s in zip(table.column("model_fingerprint").to_pylist(), table.column("status").to_pylist())
                 if f and s == "ok"}
        if self.fingerprint:
            found.add(self.fingerprint)
        if len(found) > 1:
            raise ValueError(f"this run's model does not match the archive's (fingerprints {sorted(found)}); rerun "
                             f"with the model the archive was started with, or write to a new --output")
        self.fingerprint = self.fingerprint or next(iter(found), None)

    def _write_manifest_part(self, index: int, rows: pa.Table) -> dict:
        name, task = part_name(index), self.tasks.get(index, {})
        if self.job.get("image_format") == "wds":
            rows = _write_tar(self.out, name, rows)
        table = manifest_table(rows)
        metadata = {"input": task.get("uri", ""), "model_source": self.job.get("model_source", ""),
                    **footer_metadata(self.job["job_id"], self.job["plan_digest"], index, table)}
        data = parquet_bytes(table, MANIFEST_COLUMNS, metadata)
        self.out.write_bytes(self.out.path(MANIFEST_DIR, f"{name}.parquet"), data)
        summary = summarise_manifest_part(name, index, self.job["job_id"], data, table)
        write_sidecar(self.out, summary)
        return summary


def _first(table: pa.Table, name: str) -> str:
    return table.column(name)[0].as_py() if table.num_rows else ""


def _merged(out: Location, path: str, healed: pa.Table) -> pa.Table:
    """The existing part with the rows of ``healed`` in place of those with the same keys."""
    with out.fs.open(path, "rb") as f:
        old = pq.read_table(f)
    keep = pc.invert(pc.is_in(old.column("key"), value_set=healed.column("key")))
    return pa.concat_tables([old.filter(keep).select(healed.column_names).cast(healed.schema),
                             healed]).sort_by("key")


def _write_tar(out: Location, name: str, rows: pa.Table) -> pa.Table:
    """Write the part's decoded images as ``<part>.tar``; return the rows with their output URIs."""
    from pipeline.decode_stages import tar_bytes

    ok = pc.equal(rows.column("status"), "ok")
    good = rows.filter(ok)
    path = out.path(f"{name}.tar")
    out.write_bytes(path, tar_bytes(good.column("member").to_pylist(), good.column("payload").to_pylist()))
    tar_uri = out.uri(path)
    members = rows.column("member").to_pylist()
    uris = [f"{tar_uri}#{m}.png" if good_row else "" for m, good_row in zip(members, ok.to_pylist())]
    return rows.set_column(rows.column_names.index("output_uri"), "output_uri", pa.array(uris, pa.string()))
