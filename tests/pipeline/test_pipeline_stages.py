"""The stages and the driver logic without Ray: statuses, part regrouping, Parquet files, resume."""

from __future__ import annotations

import collections
import hashlib
import io
import json
import tarfile
from functools import partial

import duckdb
import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pipeline_testing import MAX_PIXELS, png_bytes

from pipeline import archive, local_runner
from pipeline.collect import ShardCollector
from pipeline.config import ComputeConfig, DecodeJobConfig, EncodeJobConfig
from pipeline.decode_job import run_decode_job
from pipeline.encode_job import run_encode_job
from pipeline.encode_stages import decode_item
from pipeline.inputs import SourceItem
from pipeline.schema import ARCHIVE_COLUMNS, SCHEMA_METADATA_KEY
from sprdiff.bitstream import read_header
from sprdiff.run_settings import DEFAULT_TILE_SIZE


def test_decode_item_turns_bad_files_into_statuses(bad_files, small_images):
    for name, (data, status) in bad_files.items():
        row = decode_item(SourceItem(name, f"mem://{name}", data), max_pixels=MAX_PIXELS)
        assert row["status"] == status, (name, row["error"])
        assert row["error"] and row["pixels"].size == 0
    good = png_bytes(small_images["img-01"])
    row = decode_item(SourceItem("g", "mem://g", good), max_pixels=MAX_PIXELS)
    assert row["status"] == "ok" and row["error"] == ""
    assert np.array_equal(row["pixels"], small_images["img-01"])
    assert (row["height"], row["width"], row["source_bytes"]) == (96, 128, len(good))
    unread = decode_item(SourceItem("u", "mem://u", None, status="read_error", error="gone"), max_pixels=MAX_PIXELS)
    assert (unread["status"], unread["error"], unread["source_sha256"]) == ("read_error", "gone", "")


def _rows(shard: int, items: list[int], total: int | None = None) -> pa.Table:
    rows = [{"_shard": shard, "_item": i, "_shard_rows": 0, "key": f"{shard}/{i}"} for i in items]
    if total is not None:
        rows.append({"_shard": shard, "_item": -1, "_shard_rows": total, "key": ""})
    return pa.Table.from_pylist(rows)


def test_collector_releases_a_shard_only_when_complete():
    c = ShardCollector()
    assert c.add(_rows(1, [2, 0])) == []
    [(index, table)] = c.add(pa.concat_tables([_rows(2, [], total=0), _rows(1, [], total=4)]))
    assert index == 2 and table.num_rows == 0  # an empty shard completes with its marker
    assert c.add(_rows(1, [3])) == []
    [(index, table)] = c.add(_rows(1, [1]))
    assert index == 1 and table.column("_item").to_pylist() == [0, 1, 2, 3]
    assert c.pending == 0
    with pytest.raises(RuntimeError, match="rows arrived"):
        ShardCollector().add(_rows(3, [0, 1], total=1))


def test_collector_drops_rows_that_ray_delivers_twice():
    """A retried batch (an actor died after sending its output) brings rows again: they are dropped,
    neither completing a shard early nor failing the job."""
    c = ShardCollector()
    assert c.add(_rows(1, [0, 1])) == []
    assert c.add(pa.concat_tables([_rows(1, [1, 0]), _rows(1, [], total=3)])) == []  # repeats, and the marker
    assert c.add(_rows(1, [], total=3)) == []  # the marker again
    [(index, table)] = c.add(_rows(1, [2, 2]))
    assert index == 1 and table.column("_item").to_pylist() == [0, 1, 2]
    assert c.repeated_rows == 3
    assert c.add(_rows(1, [0, 1, 2], total=3)) == []  # the whole shard again after it was written
    with pytest.raises(RuntimeError, match="different row counts"):
        d = ShardCollector()
        d.add(_rows(4, [0], total=2))
        d.add(_rows(4, [], total=3))


def test_row_groups_stay_small(monkeypatch):
    monkeypatch.setattr(archive, "MAX_ROW_GROUP_BYTES", 1000)
    monkeypatch.setattr(archive, "MAX_ROW_GROUP_ROWS", 4)
    rows = {c.name: [None] * 10 for c in ARCHIVE_COLUMNS}
    rows |= {"key": [f"k{i}" for i in range(10)], "source_uri": ["x"] * 10, "status": ["ok"] * 10,
             "record": [bytes(400)] * 10, "model_id": ["m"] * 10, "model_fingerprint": ["f"] * 10,
             "format_version": [1] * 10, "read_s": [0.0] * 10, "decode_s": [0.0] * 10, "encode_s": [0.0] * 10}
    table = pa.table(rows, schema=pa.schema([c.field() for c in ARCHIVE_COLUMNS]))
    f = pq.ParquetFile(io.BytesIO(archive.parquet_bytes(table, ARCHIVE_COLUMNS, {"model_id": "m"})))
    assert f.metadata.num_rows == 10 and f.metadata.num_row_groups == 5  # 1,000 bytes: two 400-byte records
    monkeypatch.setattr(archive, "MAX_ROW_GROUP_BYTES", 10**6)
    f = pq.ParquetFile(io.BytesIO(archive.parquet_bytes(table, ARCHIVE_COLUMNS, {"model_id": "m"})))
    assert [f.metadata.row_group(i).num_rows for i in range(f.metadata.num_row_groups)] == [4, 4, 2]
    key_stats = f.metadata.row_group(1).column(0).statistics
    assert (key_stats.min, key_stats.max) == ("k4", "k7")  # what lets a lookup skip row groups
    assert json.loads(f.schema_arrow.metadata[SCHEMA_METADATA_KEY])["columns"][0]["name"] == "key"


@pytest.fixture
def photo_folder(tmp_path, small_images, bad_files):
    folder = tmp_path / "photos"
    folder.mkdir()
    for key in list(small_images)[:5]:
        (folder / f"{key}.png").write_bytes(png_bytes(small_images[key]))
    for name, (data, _) in bad_files.items():
        (folder / name).write_bytes(data)
    return folder


@pytest.fixture
def encode_local(tiny_model):
    def encode(folder, out, **kw) -> dict:
        config = EncodeJobConfig(input=str(folder), output=str(out), rows_per_part=3, max_pixels=MAX_PIXELS, **kw)
        return run_encode_job(config, partial(local_runner.stream_encode, model=tiny_model), log=lambda _: None)
    return encode


def test_local_encode_job_archive_contract(photo_folder, tmp_path, small_images, bad_files, tiny_model, encode_local):
    out = tmp_path / "archive"
    stats = encode_local(photo_folder, out)
    assert sorted(p.name for p in out.iterdir()) == ["_index", "_job.json", "_models", "_parts", "_plan", "_stats.json",
                                                     "part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert [p.name for p in (out / "_models").iterdir()] == [tiny_model.fingerprint]
    table = pq.read_table(out)
    for n in range(3):  # each part sorted by key, its footer and sidecar naming this job, plan and key range
        part = pq.read_table(out / f"part-0000{n}.parquet")
        assert part.column("key").to_pylist() == sorted(part.column("key").to_pylist())
        meta = {k.decode(): v.decode() for k, v in pq.read_schema(out / f"part-0000{n}.parquet").metadata.items()}
        sidecar = json.loads((out / "_parts" / f"part-0000{n}.json").read_text())
        job = json.loads((out / "_job.json").read_text())
        assert meta["sprdiff.job_id"] == sidecar["job_id"] == job["job_id"]
        assert meta["sprdiff.plan_digest"] == job["plan_digest"] and meta["sprdiff.shard"] == str(n)
        assert int(meta["sprdiff.rows"]) == sidecar["rows"] == part.num_rows
        assert (meta["sprdiff.first_key"], meta["sprdiff.last_key"]) == (sidecar["first_key"], sidecar["last_key"]) \
            == (part.column("key")[0].as_py(), part.column("key")[-1].as_py())
        data = (out / f"part-0000{n}.parquet").read_bytes()
        assert sidecar["size"] == len(data) and sidecar["sha256"] == hashlib.sha256(data).hexdigest()
        assert sidecar["counts"] == dict(collections.Counter(part.column("status").to_pylist()))
    assert table.schema.names == [c.name for c in ARCHIVE_COLUMNS]
    rows = {r["key"]: r for r in table.to_pylist()}
    expected = {name.rsplit(".", 1)[0]: status for name, (_, status) in bad_files.items()}
    expected |= {k: "ok" for k in list(small_images)[:5]}
    assert {k: r["status"] for k, r in rows.items()} == expected
    for key in list(small_images)[:5]:
        r = rows[key]
        [record] = tiny_model.compress([small_images[key]])
        assert r["record"] == record and r["num_bytes"] == len(record)
        assert r["bpp"] == pytest.approx(8 * len(record) / (r["width"] * r["height"]))
        assert r["model_fingerprint"] == tiny_model.fingerprint and r["error"] is None
        # the tiny model's colours are far off: every record carries a map, some an offset grid too
        assert r["format_version"] == read_header(record)[0].version >= 2
        assert r["rate_id"] == tiny_model.config.rate_id and r["warning"] is None  # its one rate, no budget
    for key in ("zero", "cut", "text", "big"):
        assert rows[key]["record"] is None and rows[key]["error"]
        assert rows[key]["rate_id"] is None and rows[key]["warning"] is None
    assert rows["zero"]["source_bytes"] == 0 and rows["big"]["width"] is None
    assert stats["counts"] == {"ok": 5, "empty": 1, "not_image": 1, "too_large": 1, "truncated": 1}
    assert stats["rows"] == 9 and stats["bytes_out"] == sum(r["num_bytes"] or 0 for r in rows.values())
    assert stats["rate_counts"] == {str(tiny_model.config.rate_id): 5} and stats["budget_warnings"] == 0
    assert json.loads((out / "_stats.json").read_text())["counts"] == stats["counts"]
    # readable with no project code
    glob = str(out / "*.parquet")
    assert duckdb.sql(f"select count(*), sum(num_bytes) from read_parquet('{glob}')").fetchall() == \
        [(9, stats["bytes_out"])]
    assert pl.read_parquet(glob).filter(pl.col("status") == "ok").height == 5
    assert len(pd.read_parquet(out)) == 9
    meta = pq.ParquetFile(out / "part-00000.parquet").schema_arrow.metadata
    assert meta[b"sprdiff.model_fingerprint"].decode() == tiny_model.fingerprint
    assert b"secret" not in b"".join(meta.values()).lower()


def test_encode_job_without_colour_correction_writes_version_1_records(photo_folder, tmp_path, small_images,
                                                                       tiny_model, encode_local):
    out = tmp_path / "archive"
    encode_local(photo_folder, out, colour_correction=False)
    rows = {r["key"]: r for r in pq.read_table(out).to_pylist() if r["status"] == "ok"}
    assert len(rows) == 5
    for key, r in rows.items():
        [record] = tiny_model.compress([small_images[key]], colour_correction=False)
        assert r["record"] == record and r["format_version"] == read_header(record)[0].version == 4


def _rows_without_timings(out) -> dict[str, dict]:
    table = pq.read_table(out).drop_columns(["read_s", "decode_s", "encode_s"])
    return {r["key"]: r for r in table.to_pylist()}


def test_local_encode_job_resumes_and_refuses_other_settings(photo_folder, tmp_path, encode_local):
    out = tmp_path / "archive"
    encode_local(photo_folder, out)
    before = {p.name: p.read_bytes() for p in out.glob("part-*.parquet")}
    rows = _rows_without_timings(out)
    (out / "part-00001.parquet").unlink()
    (out / "_parts" / "part-00002.json").unlink()  # a sidecar lost: recomputed from its part
    (out / "part-00000.parquet").write_bytes(before["part-00000.parquet"][:-100])  # a torn part: rewritten
    stats = encode_local(photo_folder, out)
    assert stats["run"]["shards_written"] == 2 and stats["run"]["shards_done_before"] == 1
    assert stats["rows"] == 9
    assert sorted(p.name for p in out.glob("part-*.parquet")) == sorted(before)
    assert _rows_without_timings(out) == rows  # the same rows and records, byte for byte; only timings differ
    assert json.loads((out / "_parts" / "part-00002.json").read_text())["rows"] == 3
    keys = pq.read_table(out, columns=["key"]).column("key").to_pylist()
    assert len(keys) == len(set(keys)) == 9
    stats = encode_local(photo_folder, out)
    assert stats["run"]["shards_written"] == 0 and stats["rows"] == 9
    with pytest.raises(ValueError, match="other settings.*max_pixels"):
        run_encode_job(EncodeJobConfig(input=str(photo_folder), output=str(out), rows_per_part=3),
                       local_runner.stream_encode, log=lambda _: None)
    with pytest.raises(ValueError, match="other settings.*colour_correction"):
        encode_local(photo_folder, out, colour_correction=False)
    for settings, name in (({"rate": 0}, "rate"), ({"target_bpp": 0.5}, "target_bpp")):  # the rate point: bytes too
        with pytest.raises(ValueError, match=f"other settings.*{name}"):
            encode_local(photo_folder, out, **settings)
    for compute, name in ((ComputeConfig(precision="bf16"), "precision"), (ComputeConfig(tile_size=1024), "tile_size"),
                          (ComputeConfig(batch_size=4), "batch_size")):  # settings that change bytes
        with pytest.raises(ValueError, match=f"other settings.*{name}"):
            encode_local(photo_folder, out, compute=compute)
    same = encode_local(photo_folder, out, compute=ComputeConfig(tile_size=DEFAULT_TILE_SIZE))  # the default, named
    assert same["run"]["shards_written"] == 0
    with pytest.raises(ValueError, match="other settings.*input"):
        encode_local(tmp_path, out)
    # the rerun reads the stored plan and lists nothing: a file added since is not in this archive
    (photo_folder / "new.png").write_bytes(b"x")
    (out / "part-00001.parquet").unlink()
    stats = encode_local(photo_folder, out)
    assert stats["rows"] == 9 and "new" not in pq.read_table(out, columns=["key"]).column("key").to_pylist()


@pytest.fixture
def decode_local(tiny_model):
    def decode(archive_dir, out, **kw) -> dict:
        return run_decode_job(DecodeJobConfig(input=str(archive_dir), output=str(out), **kw),
                              partial(local_runner.stream_decode, loaded=tiny_model), log=lambda _: None)
    return decode


def test_local_decode_job_png_keys_where_and_wds(photo_folder, tmp_path, small_images, tiny_model, encode_local,
                                                 decode_local):
    archive_dir = tmp_path / "archive"
    encode_local(photo_folder, archive_dir)
    out = tmp_path / "decoded"
    stats = decode_local(archive_dir, out)
    assert stats["counts"] == {"ok": 5, "not_encoded": 4}
    for key in list(small_images)[:5]:
        [record] = tiny_model.compress([small_images[key]])
        [expected] = tiny_model.decompress([record])
        assert np.array_equal(np.asarray(Image.open(out / f"{key}.png")), expected)
    manifest = pd.read_parquet(out / "_manifest")
    assert len(manifest) == 9 and set(manifest[manifest.status == "ok"].output_uri) == \
        {f"file://{out}/{k}.png" for k in list(small_images)[:5]}
    assert sorted(p.name for p in (out / "_parts").iterdir()) == [f"part-0000{n}.json" for n in range(3)]

    keys_out = tmp_path / "some"
    some = decode_local(archive_dir, keys_out, keys=frozenset({"img-01", "zero", "nope"}), image_format="jpeg")
    assert some["counts"] == {"ok": 1, "not_encoded": 1}
    assert sorted(p.name for p in keys_out.glob("*.jpg")) == ["img-01.jpg"]

    where_out = tmp_path / "where"
    assert decode_local(archive_dir, where_out, where="status == 'ok' and width >= 128")["rows"] == 4
    with pytest.raises(ValueError, match="--where.*no_such_column"):
        decode_local(archive_dir, tmp_path / "bad", where="no_such_column > 3")
    with pytest.raises(ValueError, match="--where"):
        decode_local(archive_dir, tmp_path / "bad", where="__import__('os').system('true')")

    wds_out = tmp_path / "wds"
    decode_local(archive_dir, wds_out, image_format="wds")
    names = []
    for tar in sorted(wds_out.glob("part-*.tar")):
        with tarfile.open(tar) as t:
            names += t.getnames()
    assert sorted(names) == sorted(f"{k}.png" for k in list(small_images)[:5])


def test_decode_job_never_writes_outside_its_output(tmp_path, small_images, tiny_model, decode_local):
    keys = ["../escape", "/abs/olute", "nul\x00byte", "deep/../../x", "é" * 300, "ok/name"]
    [record] = tiny_model.compress([small_images["img-00"]])
    n = len(keys)
    table = pa.table({"key": keys, "record": [record] * n, "status": ["ok"] * n})
    archive_dir = tmp_path / "in"
    archive_dir.mkdir()
    pq.write_table(table, archive_dir / "hostile.parquet")
    out = tmp_path / "sandbox" / "out"
    stats = decode_local(archive_dir, out, model="tiny")
    assert stats["counts"] == {"ok": n}
    written = [p for p in (tmp_path).rglob("*.png")]
    assert len(written) == n and all(out in p.parents for p in written)
    assert (out / "ok" / "name.png").exists()
