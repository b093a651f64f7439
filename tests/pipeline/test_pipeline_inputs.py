"""Listing, sharding and reading inputs: image folders, WebDataset tars, Parquet tables."""

from __future__ import annotations

import io
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pipeline_testing import make_tar, png_bytes

from pipeline.inputs import WorkShard, plan_inputs, read_shard


def write_folder(root, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def test_image_folder_plan_is_sorted_sharded_and_stable(tmp_path, small_images):
    files = {f"sub/{k}.png": png_bytes(v) for k, v in list(small_images.items())[:5]}
    files |= {"a.png": b"x", ".DS_Store": b"junk", "sub/.hidden/z.png": b"junk"}
    write_folder(tmp_path, files)
    plan = plan_inputs(str(tmp_path), shard_size=2)
    assert plan.kind == "images" and plan.num_files == 6
    assert [s.name for s in plan.shards] == ["part-00000", "part-00001", "part-00002"]
    keys = [k for s in plan.shards for k in s.keys]
    assert keys == ["a", "sub/img-00", "sub/img-01", "sub/img-02", "sub/img-03", "sub/img-04"]
    assert plan.shards[0].uris[0] == f"file://{tmp_path}/a.png"
    again = plan_inputs(f"file://{tmp_path}", shard_size=2)
    assert again.digest == plan.digest and again.shards == plan.shards
    assert plan_inputs(str(tmp_path), shard_size=3).digest != plan.digest
    assert [k for s in plan_inputs(str(tmp_path), shard_size=4, limit=3).shards for k in s.keys] == keys[:3]
    assert WorkShard.from_json(plan.shards[1].to_json()) == plan.shards[1]


def test_missing_or_empty_input_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        plan_inputs(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="no input files"):
        plan_inputs(str(tmp_path))


def test_reading_image_files_reports_a_vanished_file(tmp_path, small_images):
    write_folder(tmp_path, {"a.png": png_bytes(small_images["img-00"]), "b.png": b"data"})
    [shard] = plan_inputs(str(tmp_path)).shards
    (tmp_path / "b.png").unlink()
    a, b = read_shard(shard)
    assert (a.key, a.status, a.data) == ("a", "ok", png_bytes(small_images["img-00"]))
    assert (b.key, b.status, b.data) == ("b", "read_error", None) and "vanished" in b.error


def test_webdataset_shards_yield_one_item_per_sample(tmp_path, small_images):
    imgs = list(small_images.values())
    (tmp_path / "shard-000000.tar").write_bytes(make_tar([
        {"__key__": "s0", "png": png_bytes(imgs[0]), "json": b"{}"},
        {"__key__": "s1", "jpg": b"not really a jpeg"},
        {"__key__": "s2", "txt": b"caption only"},
    ]))
    (tmp_path / "shard-000001.tar").write_bytes(make_tar([{"__key__": "t0", "webp": png_bytes(imgs[1])}]))
    (tmp_path / "manifest.json").write_text("{}")  # beside the shards, as `sprdiff make-shards` writes it
    plan = plan_inputs(str(tmp_path))
    assert plan.kind == "wds" and len(plan.shards) == 2
    items = [i for s in plan.shards for i in read_shard(s)]
    assert [(i.key, i.status) for i in items] == [("shard-000000/s0", "ok"), ("shard-000000/s1", "ok"),
                                                  ("shard-000000/s2", "no_image"), ("shard-000001/t0", "ok")]
    assert items[0].data == png_bytes(imgs[0]) and items[0].source_uri.endswith("shard-000000.tar")
    assert "txt" in items[2].error


def test_a_truncated_tar_keeps_the_samples_before_the_damage(tmp_path, small_images):
    imgs = list(small_images.values())
    data = make_tar([{"__key__": f"s{i}", "png": png_bytes(imgs[i])} for i in range(3)])
    (tmp_path / "broken.tar").write_bytes(data[: len(data) * 2 // 3])
    [shard] = plan_inputs(str(tmp_path)).shards
    items = list(read_shard(shard))
    assert [(i.key, i.status) for i in items] == [("broken/s0", "ok"), ("broken/s1", "ok"),
                                                  ("broken/s2", "read_error"), ("broken", "read_error")]
    assert "breaks off" in items[2].error and "after 3 sample" in items[3].error
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        assert len(t.getmembers()) == 3


def test_parquet_tables_are_split_into_row_ranges(tmp_path, small_images):
    images = [png_bytes(v) for v in small_images.values()][:7]
    table = pa.table({"name": [f"n{i}" for i in range(7)], "image": images, "label": list(range(7))})
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=3)
    plan = plan_inputs(str(tmp_path), shard_size=4)
    assert plan.kind == "parquet" and [(s.row_start, s.row_stop) for s in plan.shards] == [(0, 4), (4, 7)]
    assert plan.details == {"image_column": "image", "key_column": "name"}
    items = [i for s in plan.shards for i in read_shard(s)]
    assert [i.key for i in items] == [f"t/n{i}" for i in range(7)]
    assert [i.data for i in items] == images
    limited = plan_inputs(str(tmp_path), shard_size=4, limit=5)
    assert sum(s.row_stop - s.row_start for s in limited.shards) == 5


def test_parquet_struct_images_nulls_and_row_numbers(tmp_path, small_images):
    img = png_bytes(small_images["img-00"])
    table = pa.table({"img": [{"bytes": img, "path": "a.png"}, None]})
    pq.write_table(table, tmp_path / "hf.parquet")
    [shard] = plan_inputs(str(tmp_path)).shards
    a, b = read_shard(shard)
    assert (a.key, a.status, a.data) == ("hf/00000000", "ok", img)
    assert (b.key, b.status) == ("hf/00000001", "empty")
    with pytest.raises(ValueError, match="not in the Parquet schema"):
        plan_inputs(str(tmp_path), image_column="nope")


def test_unusable_parquet_tables_become_status_rows(tmp_path, small_images):
    img = png_bytes(small_images["img-00"])
    pq.write_table(pa.table({"key": ["a"], "image": [img]}), tmp_path / "good.parquet")
    pq.write_table(pa.table({"key": ["b", "c"], "image": pa.array([2**40, 1], pa.int64())}), tmp_path / "ints.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    for plan in (plan_inputs(str(tmp_path)), plan_inputs(str(tmp_path), image_column="image")):
        items = [i for s in plan.shards for i in read_shard(s)]  # never bytes(2**40): a terabyte of zeros
        assert [(i.key, i.status) for i in items] == [("good/a", "ok"), ("ints/b", "wrong_type"),
                                                      ("ints/c", "wrong_type"), ("junk", "read_error")]
        assert "holds int64" in items[1].error and "ints.parquet" in items[1].error
        assert "not a readable Parquet file" in items[3].error and "junk.parquet" in items[3].error
    # no table usable at all: the command is wrong, and planning says so before any work
    with pytest.raises(ValueError, match="no usable Parquet table.*image column 'key' holds string"):
        plan_inputs(str(tmp_path), image_column="key")
    (tmp_path / "good.parquet").unlink()
    with pytest.raises(ValueError, match="no usable Parquet table.*ints.parquet.*holds int64"):
        plan_inputs(str(tmp_path))


def test_files_over_the_read_limit_are_not_read(tmp_path, small_images):
    write_folder(tmp_path, {"a.png": png_bytes(small_images["img-00"]), "b.png": b"x" * 5000})
    [shard] = plan_inputs(str(tmp_path)).shards
    a, b = read_shard(shard, max_bytes=4096)
    assert a.status == "ok" and (b.status, b.data) == ("too_large", None)
    assert "5,000 bytes, over the 4,096-byte read limit" in b.error
