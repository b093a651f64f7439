"""The decode job's stages as plain callables (no Ray here; ``pipeline.ray_runner`` places them).

1. :func:`read_archive_rows` (CPU task): one archive part in, the selected rows' records out
   (only the row groups that may hold them are read), ending with a marker row that carries the
   part's row count.
2. :class:`DecodeRecords` (actor): records in, pixels out, one ``decompress`` call per model a
   batch uses. Each record's weights are found from its fingerprint (``sprdiff.model_store``: the
   archive's ``_models/``, its footer's model store, ``--model-store``), each model loaded once
   per actor, a few at a time.
3. :func:`write_images` (CPU task): pixels in, PNG/WebP/JPEG files written under the output
   prefix (names from :func:`pipeline.keys.safe_relative_path`); for WebDataset output the
   encoded bytes travel on to the part writer, which writes one tar per part.
4. :class:`pipeline.part_writer.PartWriter` (one actor): the manifest parts, summaries out.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from functools import partial

import numpy as np
from PIL import Image

from pipeline.codec_runtime import CodecRuntime, each_result, use_threads
from pipeline.encode_stages import EMPTY_PIXELS, MARKER_ITEM, rows_to_batch
from pipeline.keys import safe_relative_path
from pipeline.lookup import read_part
from pipeline.parts import PartTask
from pipeline.schema import RECORD_COLUMN
from pipeline.storage import Location
from pipeline.where import parse_where
from sprdiff import SPRDiffError
from sprdiff.images import encode_png
from sprdiff.model_store import ARCHIVE_STORE, ModelCache, ModelNotFoundError, place_in

OUTPUT_FORMATS = ("png", "webp", "jpeg", "wds")
SUFFIXES = {"png": ".png", "webp": ".webp", "jpeg": ".jpg", "wds": ".png"}
FALLBACK_PLACES = ("demo",)  # looked in after every archive's own places: the shipped model
MODELS_PER_ACTOR = 2  # models a decode actor keeps loaded at once (an archive rarely mixes more)


def read_archive_rows(batch: dict[str, np.ndarray], *, rows_per_batch: int = 64) -> Iterator[dict[str, np.ndarray]]:
    """CPU stage: ``{"task": [PartTask JSON, ...]}`` -> one row per selected record, plus a marker.

    A task names one archive part, the keys wanted from it (or none: every row) and a ``--where``
    expression; only the row groups that may hold them are read (:func:`pipeline.lookup.read_part`).
    Each row carries the places its part names for the weights (:func:`part_model_places`).
    """
    for spec in batch["task"]:
        task = PartTask.from_json(spec)
        p = task.payload
        where = parse_where(p["where"])[0] if p.get("where") else None
        table = read_part(p["uri"], keys=p.get("keys"), where=where)
        places = json.dumps(part_model_places(p["uri"], table.schema.metadata))
        names = table.column_names
        statuses = table.column("status").to_pylist() if "status" in names else ["ok"] * table.num_rows
        errors = table.column("error").to_pylist() if "error" in names else [None] * table.num_rows
        fingerprints = table.column("model_fingerprint").to_pylist() if "model_fingerprint" in names \
            else [""] * table.num_rows
        rows = []
        for i, (key, record, status, error, fingerprint) in enumerate(zip(
                table.column("key").to_pylist(), table.column(RECORD_COLUMN).to_pylist(), statuses, errors,
                fingerprints)):
            rows.append({"key": key, "source_uri": p["uri"], "record": record or b"",
                         "encode_status": status or "", "encode_error": error or "",
                         "model_fingerprint": fingerprint or "", "_model_places": places,
                         "_shard": task.index, "_item": i, "_shard_rows": 0})
            if len(rows) == rows_per_batch:
                yield rows_to_batch(rows)
                rows = []
        rows.append({"key": "", "source_uri": p["uri"], "record": b"", "encode_status": "marker",
                     "encode_error": "", "model_fingerprint": "", "_model_places": places,
                     "_shard": task.index, "_item": MARKER_ITEM, "_shard_rows": len(statuses)})
        yield rows_to_batch(rows)


def part_model_places(part_uri: str, metadata: dict[bytes, bytes] | None) -> list[str]:
    """Where an archive part's weights may be: the store its footer names, the ``_models/`` beside it,
    and (archives of layout 1, which stored no weights) the model source it was encoded with."""
    kv = {k.decode(): v.decode() for k, v in (metadata or {}).items()}
    archive = part_uri.rsplit("/", 1)[0]
    named = kv.get("sprdiff.model_store")
    places = [place_in(archive, named) if named else None, place_in(archive, ARCHIVE_STORE),
              kv.get("sprdiff.model_source")]
    return list(dict.fromkeys(p for p in places if p))


class DecodeRecords:
    """Actor stage: decodes every record of each batch with the weights that wrote it.

    Without ``model`` each record's weights come from its fingerprint: looked up in ``places``,
    then in the places its archive part names (``_model_places``), each model loaded once per
    actor and at most ``max_models`` kept. With ``model`` (an explicit ``--model``) every record is
    decoded with it, and a record written by other weights is refused (``model_mismatch``).
    The records of one model in a batch are decoded in one ``decompress`` call, ``codec.batch_size``
    records of one size per synthesis (batch 1: pixels never depend on the other records). A bad
    record (``SPRDiffError``) or missing weights become that row's status; a call with a bad record
    in it is decoded again record by record, so the others still decode.
    """

    def __init__(self, model=None, *, places: tuple[str, ...] = (), loaded=(), device: str = "cpu",
                 threads: int | None = None, max_models: int = MODELS_PER_ACTOR, codec: CodecRuntime | None = None,
                 models: ModelCache | None = None):
        """``model``: a preset name, directory or URI to load, or an already loaded ``SPRDiff``;
        ``loaded``: models already in memory to use wherever their fingerprint is asked for;
        ``models``: a cache to share with other stages (a codec server's, kept across jobs)."""
        self.codec = codec or CodecRuntime()
        self.codec.check(device)
        use_threads(threads)
        self.model = self.codec.load(model, device=device) if model is not None else None
        self.places = tuple(places)
        self.models = models or ModelCache((), device=device, max_models=max_models, prepare=self.codec.prepare)
        for m in loaded:
            self.models.add(self.codec.prepare(m))

    def _model_for(self, fingerprint: str, places: str):
        if self.model is not None:
            if fingerprint and fingerprint != self.model.fingerprint:
                raise SPRDiffError(f"the record was written by model {fingerprint}, but --model is "
                                   f"{self.model.fingerprint}: drop --model to decode it with its own stored weights",
                                   status="model_mismatch")
            return self.model
        if not fingerprint:
            raise SPRDiffError("the archive row names no model fingerprint: pass --model", status="model_not_found")
        return self.models.get(fingerprint, [*self.places, *json.loads(places or "[]"), *FALLBACK_PLACES])

    def _decompress(self, model, records: list[bytes]) -> list[np.ndarray]:
        return model.decompress(records, batch_size=self.codec.batch_size,
                                precision=self.codec.precision_on(model.device), tile_size=self.codec.tile_size)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["key"])
        status = np.full(n, "ok", dtype=object)
        error = np.full(n, "", dtype=object)
        pixels = np.empty(n, dtype=object)
        pixels[:] = [EMPTY_PIXELS] * n
        width, height = np.full(n, -1, np.int64), np.full(n, -1, np.int64)
        decode_s = np.zeros(n, np.float64)
        fingerprints = batch.get("model_fingerprint", [""] * n)  # absent for a user's own dataset of records
        places = batch.get("_model_places", ["[]"] * n)
        by_model: dict[int, tuple[object, list[int]]] = {}
        for i in range(n):
            record, encode_status = batch["record"][i], batch["encode_status"][i]
            if encode_status == "marker":
                status[i] = "marker"
                continue
            if not record:
                status[i] = "not_encoded"
                error[i] = f"the archive row has no record (encode status {encode_status}: " \
                           f"{batch['encode_error'][i]})"
                continue
            try:
                model = self._model_for(fingerprints[i], places[i])
            except (ModelNotFoundError, ValueError) as e:  # no place holds the weights, or they were changed
                status[i], error[i] = "model_not_found", str(e)
                continue
            except SPRDiffError as e:  # written by other weights than an explicit --model
                status[i], error[i] = e.status, str(e)
                continue
            by_model.setdefault(id(model), (model, []))[1].append(i)
        for model, indexes in by_model.values():
            t0 = time.perf_counter()
            records = [batch["record"][i] for i in indexes]
            decoded = each_result(partial(self._decompress, model), records)
            seconds = (time.perf_counter() - t0) / len(indexes)
            for i, (image, problem) in zip(indexes, decoded, strict=True):
                decode_s[i] = seconds
                if problem is not None:
                    status[i], error[i] = problem.status, str(problem)
                else:
                    pixels[i] = image
                    height[i], width[i] = image.shape[:2]
        dropped = ("record", "encode_status", "encode_error", "model_fingerprint", "_model_places")
        out = {k: v for k, v in batch.items() if k not in dropped}
        out.update(status=status, error=error, pixels=pixels, width=width, height=height, decode_s=decode_s,
                   record_bytes=np.array([len(r) if r else -1 for r in batch["record"]], np.int64))
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
    image_bytes = np.full(n, -1, np.int64)
    write_s = np.zeros(n, np.float64)
    suffix = SUFFIXES[image_format]
    for i in range(n):
        if batch["status"][i] != "ok":
            continue
        t0 = time.perf_counter()
        data = encode_image(batch["pixels"][i], image_format, quality)
        image_bytes[i] = len(data)
        if image_format == "wds":
            member[i] = safe_relative_path(batch["key"][i], "")
            payload[i] = data
        else:
            path = location.path(safe_relative_path(batch["key"][i], suffix))
            location.write_bytes(path, data)
            output_uri[i] = location.uri(path)
        write_s[i] = time.perf_counter() - t0
    out = {k: v for k, v in batch.items() if k != "pixels"}
    out.update(output_uri=output_uri, member=member, payload=payload, image_bytes=image_bytes, write_s=write_s)
    return out


def tar_bytes(members: list[str], payloads: list[bytes], extension: str = "png") -> bytes:
    """A WebDataset shard: one ``<member>.<extension>`` per image, fixed mtime so it is reproducible."""
    from webdataset import TarWriter

    buf = io.BytesIO()
    with TarWriter(buf, mtime=0) as writer:
        for name, data in zip(members, payloads):
            writer.write({"__key__": name, extension: data})
    return buf.getvalue()
