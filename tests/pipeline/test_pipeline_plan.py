"""Planning at scale, on a small corpus: input lists and S3 Inventory files, bad entries, repeated keys,
the external sort, ``--plan-only``, and healing ``read_error`` rows in place with ``--retry-errors``."""

from __future__ import annotations

import gzip
import json
from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pipeline_testing import MAX_PIXELS, plan_items, plan_of, png_bytes

from jobs.cli import main as sprdiff_cli
from pipeline import local_runner
from pipeline.config import EncodeJobConfig
from pipeline.encode_job import run_encode_job
from pipeline.inputs import sorting


def _entries(plan) -> list[tuple[str, str, str]]:
    return [(i.key, i.status, i.uri) for items in plan_items(plan) for i in items]


def test_an_input_list_gives_keys_sizes_and_marks_bad_entries(tmp_path):
    manifest = tmp_path / "list.jsonl"
    lines = [{"uri": "s3://b/photos/x.png", "size": 10}, {"uri": "s3://b/photos/a.jpg"},
             {"uri": "s3://b/other/z.png", "key": "chosen"}, {"uri": ""}, {"uri": "http://evil/x.png"},
             {"uri": "s3://b/photos/x.png", "key": "chosen"}, {"uri": "/local/abs/p.png"}]
    text = "\n".join(json.dumps(line) for line in lines) + "\n{not json\n"
    manifest.write_text(text)
    plan = plan_of("", tmp_path / "plan", input_list=str(manifest), rows_per_part=3)
    got = _entries(plan)
    assert [k for k, _, _ in got] == sorted(k for k, _, _ in got)  # parts in key order
    by_key = {k: (s, u) for k, s, u in got}
    assert by_key["photos/x"] == ("ok", "s3://b/photos/x.png") and by_key["photos/a"][0] == "ok"
    assert by_key["chosen"] == ("ok", "s3://b/other/z.png")
    assert by_key["chosen~2"][0] == "duplicate_key"  # the second entry giving the key, in manifest order
    assert by_key["local/abs/p"] == ("ok", "/local/abs/p.png")
    invalid = sorted(k for k, s, _ in got if s == "invalid_entry")
    assert invalid == ["invalid-entry/000000000003", "invalid-entry/000000000004", "invalid-entry/000000000007"]
    errors = {i.key: i.error for items in plan_items(plan) for i in items}
    assert "empty uri" in errors["invalid-entry/000000000003"]
    assert "not on an allowed store" in errors["invalid-entry/000000000004"]
    assert "not a JSON object" in errors["invalid-entry/000000000007"]
    sizes = {i.key: i.size for items in plan_items(plan) for i in items}
    assert sizes["photos/x"] == 10 and sizes["photos/a"] == -1


def test_s3_inventory_files_are_accepted_as_they_are(tmp_path):
    table = pa.table({"bucket": ["b", "b", "b"], "key": ["p/one.png", "p/two.png", ""], "size": [5, 6, 7],
                      "last_modified_date": ["x"] * 3})
    pq.write_table(table, tmp_path / "inventory.parquet")
    got = _entries(plan_of("", tmp_path / "p1", input_list=str(tmp_path / "inventory.parquet")))
    assert [(k, s) for k, s, _ in got] == [("invalid-entry/000000000002", "invalid_entry"), ("p/one", "ok"),
                                           ("p/two", "ok")]
    # an S3 Inventory delivery: manifest.json naming headerless, URL-encoded CSV data files
    data = tmp_path / "data"
    data.mkdir()
    with gzip.open(data / "f1.csv.gz", "wt") as f:
        f.write('"b","p/with+space.png","12","2026-01-01"\n"b","p/%C3%A9t%C3%A9.png","13","2026-01-01"\n')
    (tmp_path / "manifest.json").write_text(json.dumps({
        "sourceBucket": "b", "fileFormat": "CSV", "fileSchema": "Bucket, Key, Size, LastModifiedDate",
        "files": [{"key": "data/f1.csv.gz", "size": 1, "MD5checksum": "x"}]}))
    got = _entries(plan_of("", tmp_path / "p2", input_list=str(tmp_path / "manifest.json")))
    assert [(k, u) for k, _, u in got] == [("p/with space", "s3://b/p/with space.png"),
                                           ("p/été", "s3://b/p/été.png")]


def test_a_list_without_a_uri_column_is_refused_naming_its_columns(tmp_path):
    (tmp_path / "list.csv").write_text("path,bytes\na.png,3\n")
    with pytest.raises(ValueError, match=r"no 'uri' column.*\['path', 'bytes'\]"):
        plan_of("", tmp_path / "plan", input_list=str(tmp_path / "list.csv"))


def test_the_external_sort_merges_spilled_runs_in_key_order():
    rng = np.random.default_rng(3)
    keys = [f"k{int(v):05d}" for v in rng.integers(0, 400, 2000)]  # many repeats: ties go by seq
    sorter = sorting.ExternalSorter(pa.schema([("key", pa.string()), ("seq", pa.int64())]), run_rows=150)
    for start in range(0, len(keys), 90):
        sorter.add(pa.table({"key": keys[start:start + 90], "seq": list(range(start, min(start + 90, len(keys))))}))
    assert sorter.runs == 11  # a run spills once 150 rows are buffered: every second 90-row batch
    sorting_batch, sorting.MIN_MERGE_BATCH = sorting.MIN_MERGE_BATCH, 7  # several merge steps per run
    try:
        merged = [(k, s) for t in sorter.sorted_batches(333)
                  for k, s in zip(t["key"].to_pylist(), t["seq"].to_pylist())]
    finally:
        sorting.MIN_MERGE_BATCH = sorting_batch
    assert merged == sorted(zip(keys, range(len(keys))))


def test_a_plan_from_spilled_runs_is_the_in_memory_plan(tmp_path, monkeypatch):
    names = [f"d{i % 5}/f{(i * 7919) % 263:04d}{'.png' if i % 3 else '.jpg'}" for i in range(263)]
    (tmp_path / "in").mkdir()
    for name in names:
        path = tmp_path / "in" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"x")
    whole = plan_of(str(tmp_path / "in"), tmp_path / "p1", rows_per_part=10)
    monkeypatch.setattr(sorting, "RUN_ROWS", 7)
    monkeypatch.setattr(sorting, "MIN_MERGE_BATCH", 5)
    spilled = plan_of(str(tmp_path / "in"), tmp_path / "p2", rows_per_part=10)
    assert plan_items(spilled) == plan_items(whole)
    assert spilled.info.digest == whole.info.digest and whole.info.items == 263


def test_plan_only_writes_the_plan_and_starts_nothing(tmp_path, small_images, capsys):
    (tmp_path / "in").mkdir()
    for key in list(small_images)[:5]:
        (tmp_path / "in" / f"{key}.png").write_bytes(png_bytes(small_images[key]))
    out = tmp_path / "archive"
    assert sprdiff_cli(["encode-job", "--input", str(tmp_path / "in"), "--output", str(out), "--plan-only",
                        "--rows-per-part", "2", "--model", "tiny"]) == 0
    printed = capsys.readouterr().out
    plan = json.loads((out / "_plan" / "plan.json").read_text())
    assert "5 objects, 3 parts" in printed and plan["digest"] in printed
    assert json.loads((out / "_job.json").read_text())["plan_digest"] == plan["digest"]
    assert not list(out.glob("part-*"))


@pytest.fixture
def corpus(tmp_path, small_images):
    folder = tmp_path / "in"
    folder.mkdir()
    for key in list(small_images)[:6]:
        (folder / f"{key}.png").write_bytes(png_bytes(small_images[key]))
    return folder


def test_retry_errors_heals_a_restored_source_in_place(corpus, tmp_path, small_images, tiny_model):
    out = tmp_path / "archive"
    config = EncodeJobConfig(input=str(corpus), output=str(out), rows_per_part=2, max_pixels=MAX_PIXELS,
                             colour_correction=False)
    encode = partial(run_encode_job, stream=partial(local_runner.stream_encode, model=tiny_model), log=lambda _: None)
    assert sprdiff_cli(["encode-job", "--input", str(corpus), "--output", str(out), "--plan-only",
                        "--rows-per-part", "2", "--max-pixels", str(MAX_PIXELS), "--no-colour-correction",
                        "--model", "tiny"]) == 0
    held = (corpus / "img-03.png").read_bytes()
    (corpus / "img-03.png").unlink()  # gone between planning and reading: a transient failure
    stats = encode(config)
    assert stats["counts"] == {"ok": 5, "read_error": 1}
    rows = {r["key"]: r for r in pq.read_table(out).to_pylist()}
    assert rows["img-03"]["status"] == "read_error" and "vanished" in rows["img-03"]["error"]
    before = {p.name: p.read_bytes() for p in out.glob("part-*.parquet")}
    (corpus / "img-03.png").write_bytes(held)

    healed = encode(EncodeJobConfig(**{**config.__dict__, "retry_errors": True}))
    assert healed["counts"] == {"ok": 6} and healed["run"]["shards_written"] == 1
    after = {p.name: p.read_bytes() for p in out.glob("part-*.parquet")}
    assert [n for n in before if before[n] != after[n]] == ["part-00001.parquet"]  # only the part that held it
    table = pq.read_table(out)
    keys = table.column("key").to_pylist()
    assert sorted(keys) == sorted(set(keys)) == sorted(rows)  # every key exactly once
    row = {r["key"]: r for r in table.to_pylist()}["img-03"]
    [record] = tiny_model.compress([small_images["img-03"]], colour_correction=False)
    assert (row["status"], row["error"], row["record"]) == ("ok", None, record)
    part = pq.read_table(out / "part-00001.parquet")
    assert part.column("key").to_pylist() == ["img-02", "img-03"]
    sidecar = json.loads((out / "_parts" / "part-00001.json").read_text())
    assert sidecar["counts"] == {"ok": 2} and sidecar["size"] == len(after["part-00001.parquet"])
    again = encode(EncodeJobConfig(**{**config.__dict__, "retry_errors": True}))
    assert again["run"]["shards_written"] == 0  # nothing left to heal


def test_a_part_never_spans_two_plan_files(tmp_path, monkeypatch):
    from pipeline.inputs import plan as plan_module

    monkeypatch.setattr(plan_module, "ITEMS_PER_FILE", 10)
    (tmp_path / "in").mkdir()
    for i in range(53):
        (tmp_path / "in" / f"f{i:03d}.png").write_bytes(b"x")
    plan = plan_of(str(tmp_path / "in"), tmp_path / "plan", rows_per_part=7)
    shards = list(plan.shards())
    assert plan.info.item_files == 4 and [(s.file, s.offset, s.items) for s in shards][:3] == [(0, 0, 7), (0, 7, 7),
                                                                                               (1, 0, 7)]
    assert [i.key for items in plan_items(plan) for i in items] == [f"f{i:03d}" for i in range(53)]
