"""The decode job's stages as plain callables (no Ray here; ``pipeline.ray_runner`` places them).

1. :func:`read_archive_rows` (CPU task): one archive file in, the selected rows' records out,
   ending with a marker row that carries the shard's row count.
2. :class:`DecodeRecords` (actor; one model load per actor): records in, pixels out.
3. :func:`write_images` (CPU task): pixels in, PNG/WebP/JPEG files written under the output
   prefix (names from :func:`pipeline.keys.safe_relative_path`); for WebDataset output the
   encoded bytes travel on to the driver, which writes one tar per shard.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from pipeline.encode_stages import EMPTY_PIXELS, MARKER_ITEM, rows_to_batch
from pipeline.inputs import list_files, shard_name
from pipeline.keys import safe_relative_path
from pipeline.storage import Location
from sprdiff import SPRDiffError
from sprdiff.images import encode_png

OUTPUT_FORMATS = ("png", "webp", "jpeg", "wds")
SUFFIXES = {"png": ".png", "webp": ".webp", "jpeg": ".jpg", "wds": ".png"}


@dataclass(frozen=True)
class ArchiveShard:
    index: int
    uri: str

    @property
    def name(self) -> str:
        return shard_name(self.index)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ArchiveShard:
        return cls(**json.loads(text))


def plan_archive(uri: str) -> tuple[list[ArchiveShard], str]:
    """Every visible ``*.parquet`` under ``uri`` (names starting with ``_`` or ``.`` are skipped), sorted."""
    location = Location.of(uri)
    files = [f for f in list_files(location)
             if f[1].endswith(".parquet") and not any(p.startswith("_") for p in f[1].split("/"))]
    if not files:
        raise FileNotFoundError(f"no Parquet files under {location.uri()}")
    shards = [ArchiveShard(i, location.uri(path)) for i, (path, _, _) in enumerate(files)]
    digest = hashlib.sha256("\n".join(f"{rel}\t{size}" for _, rel, size in files).encode()).hexdigest()
    return shards, digest


def check_where(where: str, schema: pa.Schema) -> None:
    """Fail early, with pandas' message, if ``where`` does not evaluate on the archive's columns."""
    columns = [n for n in schema.names if n != "bitstream"]
    empty = schema.empty_table().select(columns).to_pandas()
    try:
        empty.query(where)
    except Exception as e:  # noqa: BLE001 - pandas raises many types for a bad expression
        raise ValueError(f"--where {where!r} does not evaluate on the archive's columns {columns}: {e}") from None


def select_rows(table: pa.Table, *, keys: frozenset[str] | None, where: str | None) -> pa.Table:
    """The rows whose key is in ``keys`` and that satisfy the pandas ``where`` expression."""
    if keys is not None:
        table = table.filter(pc.is_in(table.column("key"), value_set=pa.array(sorted(keys), pa.string())))
    if where and table.num_rows:
        frame = table.drop_columns(["bitstream"]).to_pandas()
        positions = np.flatnonzero(frame.index.isin(frame.query(where).index))
        table = table.take(pa.array(positions, pa.int64()))
    return table


def read_archive_rows(batch: dict[str, np.ndarray], *, keys: frozenset[str] | None = None, where: str | None = None,
                      rows_per_batch: int = 64) -> Iterator[dict[str, np.ndarray]]:
    """CPU stage: ``{"shard": [ArchiveShard JSON, ...]}`` -> one row per selected record, plus a marker."""
    for spec in batch["shard"]:
        shard = ArchiveShard.from_json(spec)
        location = Location.of(shard.uri)
        with location.fs.open(location.root, "rb") as f:
            table = pq.read_table(f)
        table = select_rows(table, keys=keys, where=where)
        names = table.column_names
        statuses = table.column("status").to_pylist() if "status" in names else ["ok"] * table.num_rows
        errors = table.column("error").to_pylist() if "error" in names else [None] * table.num_rows
        rows = []
        for i, (key, record, status, error) in enumerate(zip(table.column("key").to_pylist(),
                                                           table.column("bitstream").to_pylist(), statuses, errors)):
            rows.append({"key": key, "source_uri": shard.uri, "bitstream": record or b"",
                         "encode_status": status or "", "encode_error": error or "",
                         "_shard": shard.index, "_item": i, "_shard_rows": 0})
            if len(rows) == rows_per_batch:
                yield rows_to_batch(rows)
                rows = []
        rows.append({"key": "", "source_uri": shard.uri, "bitstream": b"", "encode_status": "marker",
                     "encode_error": "", "_shard": shard.index, "_item": MARKER_ITEM, "_shard_rows": len(statuses)})
        yield rows_to_batch(rows)


class DecodeRecords:
    """Actor stage: loads the model once, then decodes every record of each batch.

    Records are decoded one per ``decompress`` call, so the pixels never depend on which other
    records shared a batch. A bad record (``SPRDiffError``) becomes that row's status.
    """

    def __init__(self, model, *, device: str = "cpu", threads: int | None = None):
        """``model``: a preset name, directory or URI to load, or an already loaded ``SPRDiff``."""
        import torch

        from sprdiff import SPRDiff

        if threads and threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        self.model = SPRDiff.from_pretrained(model, device=device) if isinstance(model, str) else model

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["key"])
        status = np.full(n, "ok", dtype=object)
        error = np.full(n, "", dtype=object)
        pixels = np.empty(n, dtype=object)
        pixels[:] = [EMPTY_PIXELS] * n
        width, height = np.full(n, -1, np.int64), np.full(n, -1, np.int64)
        decode_s = np.zeros(n, np.float64)
        for i in range(n):
            record, encode_status = batch["bitstream"][i], batch["encode_status"][i]
            if encode_status == "marker":
                status[i] = "marker"
                continue
            if not record:
                status[i] = "not_encoded"
                error[i] = f"the archive row has no bitstream (encode status {encode_status}: " \
                           f"{batch['encode_error'][i]})"
                continue
            t0 = time.perf_counter()
            try:
                [image] = self.model.decompress([record], batch_size=1)
            except SPRDiffError as e:
                status[i], error[i] = e.status, str(e)
            else:
                pixels[i] = image
                height[i], width[i] = image.shape[:2]
            decode_s[i] = time.perf_counter() - t0
        out = {k: v for k, v in batch.items() if k not in ("bitstream", "encode_status", "encode_error")}
        out.update(status=status, error=error, pixels=pixels, width=width, height=height, decode_s=decode_s,
                   bitstream_bytes=np.array([len(r) if r else -1 for r in batch["bitstream"]], np.int64))
        return out


def encode_image(pixels: np.ndarray, image_format: str, quality: int) -> bytes:
    if image_format in ("png", "wds"):
        return encode_png(pixels)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="WEBP" if image_format == "webp" else "JPEG", quality=quality)
    return buf.getvalue()


def write_images(batch: dict[str, np.ndarray], *, output: str, image_format: str,
                 quality: int = 90) -> dict[str, np.ndarray]:
    """CPU stage: encode each decoded image; write it as a file (or keep its bytes for a tar)."""
    if image_format not in OUTPUT_FORMATS:
        raise ValueError(f"output format must be one of {OUTPUT_FORMATS}, got {image_format!r}")
    location = Location.of(output)
    n = len(batch["key"])
    output_uri = np.full(n, "", dtype=object)
    member = np.full(n, "", dtype=object)
    payload = np.full(n, b"", dtype=object)
    num_bytes = np.full(n, -1, np.int64)
    write_s = np.zeros(n, np.float64)
    suffix = SUFFIXES[image_format]
    for i in range(n):
        if batch["status"][i] != "ok":
            continue
        t0 = time.perf_counter()
        data = encode_image(batch["pixels"][i], image_format, quality)
        num_bytes[i] = len(data)
        if image_format == "wds":
            member[i] = safe_relative_path(batch["key"][i], "")
            payload[i] = data
        else:
            path = location.path(safe_relative_path(batch["key"][i], suffix))
            location.write_bytes(path, data)
            output_uri[i] = location.uri(path)
        write_s[i] = time.perf_counter() - t0
    out = {k: v for k, v in batch.items() if k != "pixels"}
    out.update(output_uri=output_uri, member=member, payload=payload, num_bytes=num_bytes, write_s=write_s)
    return out


def tar_bytes(members: list[str], payloads: list[bytes], extension: str = "png") -> bytes:
    """A WebDataset shard: one ``<member>.<extension>`` per image, fixed mtime so it is reproducible."""
    from webdataset import TarWriter

    buf = io.BytesIO()
    with TarWriter(buf, mtime=0) as writer:
        for name, data in zip(members, payloads):
            writer.write({"__key__": name, extension: data})
    return buf.getvalue()
