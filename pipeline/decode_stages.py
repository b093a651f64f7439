"""The decode job's stages as plain callables (no Ray here; ``pipeline.ray_runner`` places them).

1. :func:`read_archive_rows` (CPU task): one archive part in, the selected rows' records out
   (only the row groups that may hold them are read), ending with a marker row that carries the
   part's row count.
2. :class:`DecodeRecords` (actor; one model load per actor): records in, pixels out.
3. :func:`write_images` (CPU task): pixels in, PNG/WebP/JPEG files written under the output
   prefix (names from :func:`pipeline.keys.safe_relative_path`); for WebDataset output the
   encoded bytes travel on to the part writer, which writes one tar per part.
4. :class:`pipeline.part_writer.PartWriter` (one actor): the manifest parts, summaries out.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator

import numpy as np
from PIL import Image

from pipeline.encode_stages import EMPTY_PIXELS, MARKER_ITEM, rows_to_batch
from pipeline.keys import safe_relative_path
from pipeline.lookup import read_part
from pipeline.parts import PartTask
from pipeline.storage import Location
from pipeline.where import parse_where
from sprdiff import SPRDiffError
from sprdiff.images import encode_png

OUTPUT_FORMATS = ("png", "webp", "jpeg", "wds")
SUFFIXES = {"png": ".png", "webp": ".webp", "jpeg": ".jpg", "wds": ".png"}


def read_archive_rows(batch: dict[str, np.ndarray], *, rows_per_batch: int = 64) -> Iterator[dict[str, np.ndarray]]:
    """CPU stage: ``{"task": [PartTask JSON, ...]}`` -> one row per selected record, plus a marker.

    A task names one archive part, the keys wanted from it (or none: every row) and a ``--where``
    expression; only the row groups that may hold them are read (:func:`pipeline.lookup.read_part`).
    """
    for spec in batch["task"]:
        task = PartTask.from_json(spec)
        p = task.payload
        where = parse_where(p["where"])[0] if p.get("where") else None
        table = read_part(p["uri"], keys=p.get("keys"), where=where)
        names = table.column_names
        statuses = table.column("status").to_pylist() if "status" in names else ["ok"] * table.num_rows
        errors = table.column("error").to_pylist() if "error" in names else [None] * table.num_rows
        rows = []
        for i, (key, record, status, error) in enumerate(zip(table.column("key").to_pylist(),
                                                           table.column("bitstream").to_pylist(), statuses, errors)):
            rows.append({"key": key, "source_uri": p["uri"], "bitstream": record or b"",
                         "encode_status": status or "", "encode_error": error or "",
                         "_shard": task.index, "_item": i, "_shard_rows": 0})
            if len(rows) == rows_per_batch:
                yield rows_to_batch(rows)
                rows = []
        rows.append({"key": "", "source_uri": p["uri"], "bitstream": b"", "encode_status": "marker",
                     "encode_error": "", "_shard": task.index, "_item": MARKER_ITEM, "_shard_rows": len(statuses)})
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
