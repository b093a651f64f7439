"""The stages and the driver logic without Ray: statuses, shard regrouping, Parquet files, resume."""

from __future__ import annotations

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
from pipeline.config import DecodeJobConfig, EncodeJobConfig
from pipeline.decode_job import run_decode_job
from pipeline.encode_job import run_encode_job
from pipeline.encode_stages import decode_item
from pipeline.inputs import SourceItem
from pipeline.schema import ARCHIVE_COLUMNS, SCHEMA_METADATA_KEY
from sprdiff.bitstream import read_header


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


def test_row_groups_stay_small(monkeypatch):
    monkeypatch.setattr(archive, "MAX_ROW_GROUP_BYTES", 1000)
    rows = {c.name: [None] * 10 for c in ARCHIVE_COLUMNS}
    rows |= {"key": [f"k{i}" for i in range(10)], "source_uri": ["x"] * 10, "status": ["ok"] * 10,
             "bitstream": [bytes(400)] * 10, "model_id": ["m"] * 10, "model_fingerprint": ["f"] * 10,
             "format_version": [1] * 10, "read_s": [0.0] * 10, "decode_s": [0.0] * 10, "encode_s": [0.0] * 10}
    table = pa.table(rows, schema=pa.schema([c.field() for c in ARCHIVE_COLUMNS]))
    f = pq.ParquetFile(io.BytesIO(archive.parquet_bytes(table, ARCHIVE_COLUMNS, {"model_id": "m"})))
    assert f.metadata.num_rows == 10 and f.metadata.num_row_groups == 5
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
        config = EncodeJobConfig(input=str(folder), output=str(out), shard_size=3, max_pixels=MAX_PIXELS, **kw)
        return run_encode_job(config, partial(local_runner.stream_encode, model=tiny_model), log=lambda _: None)
    return encode


def test_local_encode_job_archive_contract(photo_folder, tmp_path, small_images, bad_files, tiny_model, encode_local):
    out = tmp_path / "archive"
    stats = encode_local(photo_folder, out)
    assert sorted(p.name for p in out.iterdir()) == ["_job.json", "_stats.json", "part-00000.parquet",
                                                     "part-00001.parquet", "part-00002.parquet"]
    table = pq.read_table(out)
    assert table.schema.names == [c.name for c in ARCHIVE_COLUMNS]
    rows = {r["key"]: r for r in table.to_pylist()}
    expected = {name.rsplit(".", 1)[0]: status for name, (_, status) in bad_files.items()}
    expected |= {k: "ok" for k in list(small_images)[:5]}
    assert {k: r["status"] for k, r in rows.items()} == expected
    for key in list(small_images)[:5]:
        r = rows[key]
        [record] = tiny_model.compress([small_images[key]])
        assert r["bitstream"] == record and r["num_bytes"] == len(record)
        assert r["bpp"] == pytest.approx(8 * len(record) / (r["width"] * r["height"]))
        assert r["model_fingerprint"] == tiny_model.fingerprint and r["error"] is None
        # the tiny model's colours are far off: every record carries a map, some an offset grid too
        assert r["format_version"] == read_header(record)[0].version >= 2
    for key in ("zero", "cut", "text", "big"):
        assert rows[key]["bitstream"] is None and rows[key]["error"]
    assert rows["zero"]["source_bytes"] == 0 and rows["big"]["width"] is None
    assert stats["counts"] == {"ok": 5, "empty": 1, "not_image": 1, "too_large": 1, "truncated": 1}
    assert stats["rows"] == 9 and stats["bytes_out"] == sum(r["num_bytes"] or 0 for r in rows.values())
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
        assert r["bitstream"] == record and r["format_version"] == read_header(record)[0].version == 4


def test_local_encode_job_resumes_and_refuses_other_settings(photo_folder, tmp_path, encode_local):
    out = tmp_path / "archive"
    encode_local(photo_folder, out)
    before = {p.name: p.read_bytes() for p in out.glob("part-*.parquet")}
    (out / "part-00001.parquet").unlink()
    stats = encode_local(photo_folder, out)
    assert stats["run"]["shards_written"] == 1 and stats["run"]["shards_done_before"] == 2
    assert stats["rows"] == 9
    after = {p.name: p.read_bytes() for p in out.glob("part-*.parquet")}
    assert after.keys() == before.keys()
    keys = pq.read_table(out, columns=["key"]).column("key").to_pylist()
    assert len(keys) == len(set(keys)) == 9
    stats = encode_local(photo_folder, out)
    assert stats["run"]["shards_written"] == 0 and stats["rows"] == 9
    with pytest.raises(ValueError, match="other settings.*max_pixels"):
        run_encode_job(EncodeJobConfig(input=str(photo_folder), output=str(out), shard_size=3),
                       local_runner.stream_encode, log=lambda _: None)
    (photo_folder / "new.png").write_bytes(b"x")
    with pytest.raises(ValueError, match="input_digest"):
        encode_local(photo_folder, out)


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
    manifest = pd.read_parquet(out / "_manifest.parquet")
    assert len(manifest) == 9 and set(manifest[manifest.status == "ok"].output_uri) == \
        {f"file://{out}/{k}.png" for k in list(small_images)[:5]}
    assert len(pd.read_parquet(out / "_manifest")) == 9

    keys_out = tmp_path / "some"
    some = decode_local(archive_dir, keys_out, keys=frozenset({"img-01", "zero", "nope"}), image_format="jpeg")
    assert some["counts"] == {"ok": 1, "not_encoded": 1}
    assert sorted(p.name for p in keys_out.glob("*.jpg")) == ["img-01.jpg"]

    where_out = tmp_path / "where"
    assert decode_local(archive_dir, where_out, where="status == 'ok' and width >= 128")["rows"] == 4
    with pytest.raises(ValueError, match="--where"):
        decode_local(archive_dir, tmp_path / "bad", where="no_such_column > 3")

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
    table = pa.table({"key": keys, "bitstream": [record] * n, "status": ["ok"] * n})
    archive_dir = tmp_path / "in"
    archive_dir.mkdir()
    pq.write_table(table, archive_dir / "hostile.parquet")
    out = tmp_path / "sandbox" / "out"
    stats = decode_local(archive_dir, out, model="tiny")
    assert stats["counts"] == {"ok": n}
    written = [p for p in (tmp_path).rglob("*.png")]
    assert len(written) == n and all(out in p.parents for p in written)
    assert (out / "ok" / "name.png").exists()
