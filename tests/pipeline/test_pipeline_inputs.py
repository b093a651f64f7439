"""Planning and reading inputs: image folders, WebDataset tars, Parquet tables (the stored plan)."""

from __future__ import annotations

import io
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pipeline_testing import make_tar, plan_items, plan_of, png_bytes, read_plan

from pipeline.inputs import read_items


def write_folder(root, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def test_image_folder_plan_is_sorted_cut_into_parts_and_stable(tmp_path, small_images):
    source = tmp_path / "in"
    files = {f"sub/{k}.png": png_bytes(v) for k, v in list(small_images.items())[:5]}
    files |= {"a.png": b"x", ".DS_Store": b"junk", "sub/.hidden/z.png": b"junk"}
    write_folder(source, files)
    plan = plan_of(str(source), tmp_path / "p1", rows_per_part=2)
    assert plan.kind == "images" and plan.info.items == 6 and plan.info.shards == 3
    shards = list(plan.shards())
    assert [s.name for s in shards] == ["part-00000", "part-00001", "part-00002"]
    assert [s.expected_rows for s in shards] == [2, 2, 2]
    keys = [i.key for items in plan_items(plan) for i in items]
    assert keys == ["a", "sub/img-00", "sub/img-01", "sub/img-02", "sub/img-03", "sub/img-04"]
    assert (shards[1].first_key, shards[1].last_key) == ("sub/img-01", "sub/img-02")
    assert plan_items(plan)[0][0].uri == f"file://{source}/a.png"
    assert plan_items(plan)[0][0].size == 1
    again = plan_of(f"file://{source}", tmp_path / "p2", rows_per_part=2)
    assert again.info.digest == plan.info.digest and plan_items(again) == plan_items(plan)
    assert plan_of(str(source), tmp_path / "p3", rows_per_part=3).info.digest != plan.info.digest
    limited = plan_of(str(source), tmp_path / "p4", rows_per_part=4, limit=3)
    assert [i.key for items in plan_items(limited) for i in items] == keys[:3]


def test_files_that_differ_only_by_extension_keep_their_whole_path(tmp_path):
    write_folder(tmp_path / "in", {"a.png": b"1", "a.jpg": b"2", "a-b.png": b"3", "b.png": b"4"})
    plan = plan_of(str(tmp_path / "in"), tmp_path / "plan", rows_per_part=10)
    [items] = plan_items(plan)
    assert sorted(i.key for i in items) == ["a-b", "a.jpg", "a.png", "b"]
    assert all(i.status == "ok" for i in items)


def test_missing_or_empty_input_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        plan_of(str(tmp_path / "nope"), tmp_path / "plan")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no input files"):
        plan_of(str(tmp_path / "empty"), tmp_path / "plan")


def test_reading_image_files_reports_a_vanished_file(tmp_path, small_images):
    write_folder(tmp_path / "in", {"a.png": png_bytes(small_images["img-00"]), "b.png": b"data"})
    plan = plan_of(str(tmp_path / "in"), tmp_path / "plan")
    (tmp_path / "in" / "b.png").unlink()
    a, b = read_plan(plan)
    assert (a.key, a.status, a.data) == ("a", "ok", png_bytes(small_images["img-00"]))
    assert (b.key, b.status, b.data) == ("b", "read_error", None) and "vanished" in b.error


def test_webdataset_shards_yield_one_item_per_sample(tmp_path, small_images):
    imgs = list(small_images.values())
    source = tmp_path / "in"
    source.mkdir()
    (source / "shard-000000.tar").write_bytes(make_tar([
        {"__key__": "s0", "png": png_bytes(imgs[0]), "json": b"{}"},
        {"__key__": "s1", "jpg": b"not really a jpeg"},
        {"__key__": "s2", "txt": b"caption only"},
    ]))
    (source / "shard-000001.tar").write_bytes(make_tar([{"__key__": "t0", "webp": png_bytes(imgs[1])}]))
    (source / "manifest.json").write_text("{}")  # beside the shards, as `sprdiff make-shards` writes it
    plan = plan_of(str(source), tmp_path / "plan")
    assert plan.kind == "wds" and plan.info.shards == 2
    assert [s.expected_rows for s in plan.shards()] == [-1, -1]  # known only once read
    items = read_plan(plan)
    assert [(i.key, i.status) for i in items] == [("shard-000000/s0", "ok"), ("shard-000000/s1", "ok"),
                                                  ("shard-000000/s2", "no_image"), ("shard-000001/t0", "ok")]
    assert items[0].data == png_bytes(imgs[0]) and items[0].source_uri.endswith("shard-000000.tar")
    assert "txt" in items[2].error


def test_a_truncated_tar_keeps_the_samples_before_the_damage(tmp_path, small_images):
    imgs = list(small_images.values())
    data = make_tar([{"__key__": f"s{i}", "png": png_bytes(imgs[i])} for i in range(3)])
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "broken.tar").write_bytes(data[: len(data) * 2 // 3])
    items = read_plan(plan_of(str(tmp_path / "in"), tmp_path / "plan"))
    assert [(i.key, i.status) for i in items] == [("broken/s0", "ok"), ("broken/s1", "ok"),
                                                  ("broken/s2", "read_error"), ("broken", "read_error")]
    assert "breaks off" in items[2].error and "after 3 sample" in items[3].error
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        assert len(t.getmembers()) == 3


def test_parquet_tables_are_split_into_row_ranges(tmp_path, small_images):
    images = [png_bytes(v) for v in small_images.values()][:7]
    table = pa.table({"name": [f"n{i}" for i in range(7)], "image": images, "label": list(range(7))})
    (tmp_path / "in").mkdir()
    pq.write_table(table, tmp_path / "in" / "t.parquet", row_group_size=3)
    plan = plan_of(str(tmp_path / "in"), tmp_path / "plan", rows_per_part=4)
    assert plan.kind == "parquet"
    items = plan_items(plan)
    assert [(i.row_start, i.row_stop) for [i] in items] == [(0, 4), (4, 7)]
    assert {(i.image_column, i.key_column) for [i] in items} == {("image", "name")}
    assert [s.expected_rows for s in plan.shards()] == [4, 3]
    rows = read_plan(plan)
    assert [i.key for i in rows] == [f"t/n{i}" for i in range(7)]
    assert [i.data for i in rows] == images
    limited = plan_of(str(tmp_path / "in"), tmp_path / "plan2", rows_per_part=4, limit=5)
    assert sum(i.row_stop - i.row_start for [i] in plan_items(limited)) == 5


def test_parquet_struct_images_nulls_and_row_numbers(tmp_path, small_images):
    img = png_bytes(small_images["img-00"])
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"img": [{"bytes": img, "path": "a.png"}, None]}), tmp_path / "in" / "hf.parquet")
    a, b = read_plan(plan_of(str(tmp_path / "in"), tmp_path / "plan"))
    assert (a.key, a.status, a.data) == ("hf/00000000", "ok", img)
    assert (b.key, b.status) == ("hf/00000001", "empty")
    with pytest.raises(ValueError, match="no usable Parquet table.*not in the Parquet schema"):
        plan_of(str(tmp_path / "in"), tmp_path / "plan2", image_column="nope")


def test_unusable_parquet_tables_become_status_rows(tmp_path, small_images):
    img = png_bytes(small_images["img-00"])
    source = tmp_path / "in"
    source.mkdir()
    pq.write_table(pa.table({"key": ["a"], "image": [img]}), source / "good.parquet")
    pq.write_table(pa.table({"key": ["b", "c"], "image": pa.array([2**40, 1], pa.int64())}), source / "ints.parquet")
    (source / "junk.parquet").write_bytes(b"not parquet")
    for n, kw in enumerate(({}, {"image_column": "image"})):
        items = read_plan(plan_of(str(source), tmp_path / f"plan{n}", **kw))  # never bytes(2**40)
        assert [(i.key, i.status) for i in items] == [("good/a", "ok"), ("ints/b", "wrong_type"),
                                                      ("ints/c", "wrong_type"), ("junk", "read_error")]
        assert "holds int64" in items[1].error and "ints.parquet" in items[1].error
        assert "not a readable Parquet file" in items[3].error and "junk.parquet" in items[3].error
    # no table usable at all: the command is wrong, and planning says so before any work
    with pytest.raises(ValueError, match="no usable Parquet table.*image column 'key' holds string"):
        plan_of(str(source), tmp_path / "plan3", image_column="key")
    (source / "good.parquet").unlink()
    with pytest.raises(ValueError, match="no usable Parquet table.*ints.parquet.*holds int64"):
        plan_of(str(source), tmp_path / "plan4")


def test_files_over_the_read_limit_are_not_read(tmp_path, small_images):
    write_folder(tmp_path / "in", {"a.png": png_bytes(small_images["img-00"]), "b.png": b"x" * 5000})
    [items] = plan_items(plan_of(str(tmp_path / "in"), tmp_path / "plan"))
    a, b = read_items("images", items, max_bytes=4096)
    assert a.status == "ok" and (b.status, b.data) == ("too_large", None)
    assert "5,000 bytes, over the 4,096-byte read limit" in b.error
