"""Codec groups (pipeline.codec_groups): which images share a neural call, decided from a part's data
alone, so a rerun of a part reproduces its bytes; the read stage's fixed-size batches of whole groups;
and the codec actors running one call per group (a bad record or image never costs its neighbours)."""

from __future__ import annotations

from functools import partial

import numpy as np
import pyarrow.parquet as pq
import pytest
from pipeline_testing import MAX_PIXELS, png_bytes

from pipeline import local_runner
from pipeline.codec_groups import NO_GROUP, PAD_MULTIPLE, CodecGroups, budgets, group_indexes
from pipeline.codec_runtime import CodecRuntime
from pipeline.config import ComputeConfig, EncodeJobConfig
from pipeline.decode_stages import DecodeRecords
from pipeline.encode_job import plan_tasks, run_encode_job
from pipeline.encode_stages import FILLER_ITEM, MARKER_ITEM, EncodeImages, read_and_decode, read_batch_rows
from pipeline.inputs import PlanRequest, build_plan
from pipeline.storage import Location
from sprdiff.evaluation.metrics import psnr
from sprdiff.images import padded_size


def padded(height: int, width: int) -> tuple[int, int]:
    return padded_size(height, width, PAD_MULTIPLE)


def _rows(shapes: list[tuple[int, int]]) -> list[dict]:
    return [{"pixels": np.zeros((h, w, 3), np.uint8), "_item": i} for i, (h, w) in enumerate(shapes)]


def _form(former: CodecGroups, rows: list[dict]) -> list[list[int]]:
    closed = [g for r in rows for g in former.add(r)] + former.finish()
    return [[r["_item"] for r in g] for g in closed]


def test_groups_hold_one_padded_size_in_read_order_and_are_numbered_as_they_close():
    shapes = [(64, 64), (100, 120), (128, 128), (64, 64), (64, 60), (128, 100), (64, 64), (30, 30), (200, 200)]
    rows = _rows(shapes)
    groups = _form(CodecGroups(3), rows)
    assert groups == [[0, 3, 4], [1, 2, 5], [6, 7], [8]]  # (64, 64) fills first; the rest close at the end
    for number, group in enumerate(groups):
        assert len({padded(*shapes[i]) for i in group}) == 1 and group == sorted(group)
        assert {rows[i]["_group"] for i in group} == {number}
    assert _form(CodecGroups(3), _rows(shapes)) == groups  # a function of the images alone
    assert _form(CodecGroups(1), _rows(shapes)) == [[i] for i in range(len(shapes))]


def test_groups_stay_within_their_byte_budgets():
    image = 64 * 64 * 3
    assert _form(CodecGroups(8, group_bytes=2 * image), _rows([(64, 64)] * 5)) == [[0, 1], [2, 3], [4]]
    # waiting images are bounded: past held_bytes the fullest open group closes early
    former = CodecGroups(8, group_bytes=100 * image, held_bytes=3 * image)
    shapes = [(64, 64), (128, 128), (64, 64), (192, 192), (64, 64)]
    groups = _form(former, _rows(shapes))
    assert sorted(i for g in groups for i in g) == list(range(5))
    assert groups[0] == [1]  # (128, 128) was the fullest when the budget ran out
    assert budgets(128 << 20) == {"group_bytes": 32 << 20, "batch_bytes": 32 << 20, "held_bytes": 128 << 20}


def test_group_indexes_keep_parts_apart_and_skip_rows_without_a_group():
    shards = np.array([0, 0, 1, 0, 1, 0])
    groups = np.array([0, 0, 0, NO_GROUP, 0, 1])
    assert list(group_indexes(shards, groups)) == [[0, 1], [2, 4], [5]]


@pytest.fixture
def photo_folder(tmp_path, small_images):
    folder = tmp_path / "photos"
    folder.mkdir()
    for key, pixels in small_images.items():
        (folder / f"{key}.png").write_bytes(png_bytes(pixels))
    (folder / "img-07x.png").write_bytes(b"not an image")  # a bad row between good ones
    return folder


def test_read_stage_yields_fixed_size_batches_of_whole_groups(photo_folder, tmp_path):
    plan = build_plan(PlanRequest(input=str(photo_folder), rows_per_part=12), Location.of(str(tmp_path / "plan")))
    tasks = list(plan_tasks(plan))
    for batch_size in (1, 3, 20):
        seen, groups = [], {}
        for task in tasks:
            for batch in read_and_decode({"task": [task.to_json()]}, max_pixels=MAX_PIXELS, batch_size=batch_size):
                assert len(batch["key"]) == read_batch_rows(batch_size)  # fillers pad every batch
                real = batch["_item"] != FILLER_ITEM
                seen += [(s, i) for s, i in zip(batch["_shard"][real], batch["_item"][real]) if i != MARKER_ITEM]
                for shard, group in {(s, g) for s, g in zip(batch["_shard"], batch["_group"]) if g != NO_GROUP}:
                    assert (shard, group) not in groups, "a group was split across two batches"
                    members = (batch["_shard"] == shard) & (batch["_group"] == group)
                    groups[shard, group] = batch["pixels"][members]
        assert sorted(seen) == sorted({(t.index, i) for t in tasks for i in range(t.expected_rows)})  # each row once
        assert all(len(g) <= batch_size and len({padded(*p.shape[:2]) for p in g}) == 1 for g in groups.values())
        assert batch_size == 1 or any(len(g) > 1 for g in groups.values())


def _archive_records(out) -> dict[str, bytes]:
    table = pq.read_table(out, columns=["key", "record", "status"])
    return {k: r for k, r, s in zip(*(table.column(c).to_pylist() for c in ("key", "record", "status"))) if s == "ok"}


def test_a_batched_encode_job_writes_each_groups_call_and_a_rerun_the_same_bytes(photo_folder, tmp_path, small_images,
                                                                                tiny_model):
    def encode(out, batch_size):
        config = EncodeJobConfig(input=str(photo_folder), output=str(out), rows_per_part=12, max_pixels=MAX_PIXELS,
                                 colour_correction=False, compute=ComputeConfig(batch_size=batch_size))
        run_encode_job(config, partial(local_runner.stream_encode, model=tiny_model), log=lambda _: None)
        return _archive_records(out)

    batched = encode(tmp_path / "a", 4)
    assert encode(tmp_path / "b", 4) == batched  # a rerun (resume, healing) reproduces the bytes
    # what the job wrote is exactly each codec group run as one call
    keys = sorted(small_images)
    expected = {}
    for part in (keys[:11], keys[11:]):  # 12 rows a part: the bad file img-07x is the 9th row of the first
        rows = [{"pixels": small_images[k], "key": k} for k in part]
        former = CodecGroups(4)
        for group in [g for r in rows for g in former.add(r)] + former.finish():
            records = tiny_model.compress([r["pixels"] for r in group], colour_correction=False, batch_size=len(group))
            expected.update({r["key"]: rec for r, rec in zip(group, records)})
    assert batched == expected
    alone = encode(tmp_path / "c", 1)
    assert alone == {k: tiny_model.compress([small_images[k]], colour_correction=False)[0] for k in small_images}
    # batched records decode alone, as well as single-image encoding does (docs/codec.md)
    gap = np.mean([psnr(small_images[k], tiny_model.decompress([batched[k]])[0]) -
                   psnr(small_images[k], tiny_model.decompress([alone[k]])[0]) for k in small_images])
    assert abs(gap) <= 0.05, gap


def test_encode_actor_and_decode_actor_run_groups(small_images, tiny_model, monkeypatch):
    images = [small_images[k] for k in ("img-02", "img-07", "img-12")]  # all 128x128
    n = len(images)
    pixels = np.empty(n + 1, dtype=object)
    pixels[:] = [*images, np.zeros((0, 0, 3), np.uint8)]
    batch = {"key": np.array(["a", "b", "c", "z"], dtype=object), "status": np.array(["ok"] * n + ["empty"], object),
             "error": np.array([""] * (n + 1), object), "pixels": pixels, "_shard": np.zeros(n + 1, np.int64),
             "_item": np.arange(n + 1), "_group": np.array([0, 0, 0, NO_GROUP])}
    calls = []  # images per encode call (on CPU a batch gives the same bytes, so count the calls)
    encode = tiny_model.encode
    monkeypatch.setattr(tiny_model, "encode",
                        lambda images, settings=None: calls.append(len(images)) or encode(images, settings))
    out = EncodeImages(tiny_model, colour_correction=False, codec=CodecRuntime(batch_size=3))(batch)
    monkeypatch.undo()
    assert calls == [3]
    assert list(out["record"][:n]) == tiny_model.compress(images, colour_correction=False, batch_size=3)
    assert out["status"][n] == "empty" and out["record"][n] == b""

    records = np.empty(n, dtype=object)
    records[:] = [out["record"][0], out["record"][1][:-3] + b"\x00\x00\x00", out["record"][2]]  # b is damaged
    rows = {"key": np.array(["a", "b", "c"], dtype=object), "record": records,
            "encode_status": np.array(["ok"] * n, object), "encode_error": np.array([""] * n, object),
            "_shard": np.zeros(n, np.int64), "_item": np.arange(n)}
    decoded = DecodeRecords(tiny_model, codec=CodecRuntime(batch_size=3))(rows)
    assert list(decoded["status"][[0, 2]]) == ["ok", "ok"] and decoded["status"][1] not in ("ok", "marker")
    for i in (0, 2):  # the good records of a call with a bad one still decode, as they would alone
        assert np.array_equal(decoded["pixels"][i], tiny_model.decompress([records[i]], batch_size=1)[0])


def test_codec_settings_are_checked_when_the_job_is_configured():
    with pytest.raises(ValueError, match="precision must be one of"):
        ComputeConfig(precision="fp16")
    with pytest.raises(ValueError, match="multiple of 64"):
        ComputeConfig(tile_size=100)
    assert ComputeConfig().codec.batch_size == 1 and ComputeConfig(gpus_per_actor=1).codec.batch_size == 16
    assert ComputeConfig().codec.precision_on("cpu") == "fp32"
