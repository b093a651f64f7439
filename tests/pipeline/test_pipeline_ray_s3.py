"""Both jobs on a local Ray (2 CPUs) against a real S3 endpoint (moto_server on loopback)."""

from __future__ import annotations

import os
import uuid

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pipeline_testing import COMPUTE, MAX_PIXELS, fs, make_tar, png_bytes, read_archive

from jobs.cli import main as sprdiff_cli
from pipeline import ray_runner
from pipeline.config import ComputeConfig, DecodeJobConfig, EncodeJobConfig
from pipeline.decode_job import run_decode_job
from pipeline.encode_job import run_encode_job


@pytest.fixture(scope="module")
def bucket(s3_endpoint) -> str:
    name = f"pipeline-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="module")
def s3_photos(bucket, small_images, bad_files) -> str:
    s3 = fs()
    for key, pixels in small_images.items():
        s3.pipe_file(f"{bucket}/photos/{key}.png", png_bytes(pixels))
    for name, (data, _) in bad_files.items():
        s3.pipe_file(f"{bucket}/photos/{name}", data)
    return f"s3://{bucket}/photos"


def quiet(_: str) -> None:
    pass


def test_encode_and_decode_jobs_over_s3(ray_two_cpus, s3_photos, bucket, small_images, bad_files, tmp_path,
                                        tiny_model, capsys):
    archive = f"s3://{bucket}/archive"
    stats = run_encode_job(EncodeJobConfig(input=s3_photos, output=archive, rows_per_part=5, max_pixels=MAX_PIXELS,
                                           compute=COMPUTE), ray_runner.stream_encode)
    rows = read_archive(archive)
    assert len(rows) == 24 == stats["rows"]
    expected = {k: "ok" for k in small_images} | {n.rsplit(".", 1)[0]: s for n, (_, s) in bad_files.items()}
    assert {k: r["status"] for k, r in rows.items()} == expected
    assert stats["counts"] == {"ok": 20, "empty": 1, "not_image": 1, "too_large": 1, "truncated": 1}
    assert stats["run"]["shards_written"] == 5
    assert fs().exists(f"{bucket}/archive/_stats.json")

    # byte-identical to the single-file CLI on the same images
    local = tmp_path / "photos"
    local.mkdir()
    for key, pixels in small_images.items():
        (local / f"{key}.png").write_bytes(png_bytes(pixels))
    assert sprdiff_cli(["encode", *sorted(map(str, local.iterdir())), "-o", str(tmp_path / "sprd"),
                        "--model", "tiny"]) == 0
    for key in small_images:
        assert rows[key]["record"] == (tmp_path / "sprd" / f"{key}.sprd").read_bytes(), key
        assert rows[key]["source_uri"] == f"s3://{bucket}/photos/{key}.png"

    decoded = f"s3://{bucket}/decoded"
    dstats = run_decode_job(DecodeJobConfig(input=archive, output=decoded, compute=COMPUTE), ray_runner.stream_decode)
    assert dstats["counts"] == {"ok": 20, "not_encoded": 4}
    s3 = fs()
    pngs = sorted(p.rsplit("/", 1)[1] for p in s3.glob(f"{bucket}/decoded/*.png"))
    assert pngs == sorted(f"{k}.png" for k in small_images)
    for key in ("img-00", "img-03"):
        with s3.open(f"{bucket}/decoded/{key}.png", "rb") as f:
            got = np.asarray(Image.open(f))
        [want] = tiny_model.decompress([rows[key]["record"]])
        # the actor runs torch with 1 thread, this process with 2: synthesis may differ in the last bit
        assert got.shape == want.shape and np.abs(got.astype(int) - want).max() <= 1
    manifest = pq.read_table(f"{bucket}/decoded/_manifest", filesystem=s3)
    assert manifest.num_rows == 24

    # credentials never reach the output or the log
    secret = os.environ["AWS_SECRET_ACCESS_KEY"].encode()
    for path in s3.find(bucket):
        assert secret not in s3.cat_file(path), path
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in capsys.readouterr().out

    # a rerun finds every shard done and writes nothing
    before = {p: s3.info(p)["ETag"] for p in s3.glob(f"{bucket}/archive/part-*.parquet")}
    again = run_encode_job(EncodeJobConfig(input=s3_photos, output=archive, rows_per_part=5, max_pixels=MAX_PIXELS,
                                           compute=COMPUTE), ray_runner.stream_encode, log=quiet)
    assert again["run"]["shards_written"] == 0 and again["rows"] == 24
    fresh = fs()
    assert {p: fresh.info(p)["ETag"] for p in fresh.glob(f"{bucket}/archive/part-*.parquet")} == before


def test_batched_encode_on_ray_writes_what_the_local_runner_writes(ray_two_cpus, s3_photos, bucket, tiny_model):
    """--batch-size 3: fixed-size read batches of whole codec groups pass Ray's blocks and batches intact
    (filler rows never reach the archive) and the records equal the in-process runner's."""
    from functools import partial

    from pipeline import local_runner

    compute = ComputeConfig(actors=1, cpus_per_actor=1, threads_per_actor=1, batch_size=3)
    settings = {"input": s3_photos, "rows_per_part": 7, "max_pixels": MAX_PIXELS, "colour_correction": False,
                "compute": compute}
    on_ray = run_encode_job(EncodeJobConfig(output=f"s3://{bucket}/batched-ray", **settings), ray_runner.stream_encode)
    local = run_encode_job(EncodeJobConfig(output=f"s3://{bucket}/batched-local", **settings),
                           partial(local_runner.stream_encode, model=tiny_model), log=quiet)
    assert on_ray["counts"] == local["counts"] and on_ray["rows"] == 24
    ray_rows, local_rows = read_archive(f"s3://{bucket}/batched-ray"), read_archive(f"s3://{bucket}/batched-local")
    assert sorted(ray_rows) == sorted(local_rows)
    assert all(ray_rows[k]["record"] == local_rows[k]["record"] for k in ray_rows)


def test_webdataset_input_from_s3(ray_two_cpus, bucket, small_images, tiny_model):
    images = list(small_images.items())
    s3 = fs()
    s3.pipe_file(f"{bucket}/wds/train-000000.tar", make_tar(
        [{"__key__": k, "png": png_bytes(v), "json": b"{}"} for k, v in images[:4]] +
        [{"__key__": "caption-only", "txt": b"no image here"}]))
    s3.pipe_file(f"{bucket}/wds/train-000001.tar", make_tar(
        [{"__key__": k, "png": png_bytes(v)} for k, v in images[4:7]]))
    archive = f"s3://{bucket}/wds-archive"
    stats = run_encode_job(EncodeJobConfig(input=f"s3://{bucket}/wds", output=archive, compute=COMPUTE),
                           ray_runner.stream_encode, log=quiet)
    assert stats["counts"] == {"ok": 7, "no_image": 1}
    rows = read_archive(archive)
    assert rows["train-000000/caption-only"]["status"] == "no_image"
    for key, pixels in images[:7]:
        shard = "train-000000" if key in dict(images[:4]) else "train-000001"
        row = rows[f"{shard}/{key}"]
        assert row["record"] == tiny_model.compress([pixels])[0]
        assert row["source_uri"] == f"s3://{bucket}/wds/{shard}.tar"


def test_parquet_input_from_s3(ray_two_cpus, bucket, small_images, tiny_model):
    images = list(small_images.items())[:9]
    table = pa.table({"id": [k for k, _ in images], "jpg": [png_bytes(v) for _, v in images[:8]] + [b"garbage"]})
    pq.write_table(table, f"{bucket}/tables/batch.parquet", filesystem=fs(), row_group_size=4)
    archive = f"s3://{bucket}/tables-archive"
    stats = run_encode_job(EncodeJobConfig(input=f"s3://{bucket}/tables", output=archive, rows_per_part=4,
                                           compute=COMPUTE), ray_runner.stream_encode, log=quiet)
    assert stats["counts"] == {"ok": 8, "not_image": 1} and stats["run"]["shards_written"] == 3
    rows = read_archive(archive)
    for key, pixels in images[:8]:
        assert rows[f"batch/{key}"]["record"] == tiny_model.compress([pixels])[0]


def test_an_actor_pool_that_would_starve_the_readers_is_refused(ray_two_cpus):
    with pytest.raises(ValueError, match="would hang"):
        ray_runner.check_resources(ComputeConfig(actors=2, cpus_per_actor=1))


def test_encode_and_decode_datasets_inside_a_users_own_pipeline(ray_two_cpus, small_images, tiny_model):
    """``pipeline.encode_dataset`` / ``decode_dataset`` on a user's Ray Dataset (docs/operations.md's example)."""
    import io

    import ray

    import pipeline

    images = dict(list(small_images.items())[:3])
    ds = ray.data.from_items([{"key": k, "image": png_bytes(v)} for k, v in images.items()] +
                             [{"key": "broken", "image": b"not an image"}])
    rows = {r["key"]: r for r in pipeline.encode_dataset(ds, model="tiny", compute=COMPUTE).take_all()}
    assert {k: r["status"] for k, r in rows.items()} == {**{k: "ok" for k in images}, "broken": "not_image"}
    for key, pixels in images.items():
        assert rows[key]["record"] == tiny_model.compress([pixels])[0]
        assert rows[key]["bpp"] == pytest.approx(8 * len(rows[key]["record"]) / pixels.shape[0] / pixels.shape[1])
    records = ray.data.from_items([{"key": k, "record": r["record"]} for k, r in rows.items() if k != "broken"])
    decoded = {r["key"]: r for r in pipeline.decode_dataset(records, model="tiny", compute=COMPUTE).take_all()}
    for key in images:
        [want] = tiny_model.decompress([rows[key]["record"]])
        got = np.asarray(Image.open(io.BytesIO(decoded[key]["png"])))
        assert decoded[key]["status"] == "ok" and got.shape == want.shape
        assert np.abs(got.astype(int) - want).max() <= 1  # 1 torch thread in the actor, 2 here


def test_sub_prefixes_listed_in_parallel_ray_tasks_give_the_same_plan(ray_two_cpus, bucket, tmp_path):
    from functools import partial

    from pipeline.inputs import PlanRequest, build_plan
    from pipeline.storage import Location

    s3 = fs()
    names = [f"{folder}/{i:03d}.png" for folder in ("a", "b", "c/d") for i in range(7)] + ["top.png"]
    for name in names:
        s3.pipe_file(f"{bucket}/nested/{name}", b"x")
    request = PlanRequest(input=f"s3://{bucket}/nested", rows_per_part=5)
    in_driver = build_plan(request, Location.of(str(tmp_path / "p1")))
    in_tasks = build_plan(request, Location.of(str(tmp_path / "p2")),
                          lister=partial(ray_runner.list_in_tasks, tasks=2))
    keys = [i.key for s in in_tasks.shards() for i in in_tasks.items(s)]
    assert keys == sorted(n.removesuffix(".png") for n in names)
    assert in_tasks.info.digest == in_driver.info.digest
