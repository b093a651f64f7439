"""Key lookups push down: 3 keys out of 200 images in 8 parts read only the 3 parts that hold them
(counted from moto's own request log), through ``decode-job --keys`` and ``sprdiff get``."""

from __future__ import annotations

import re
import uuid
from functools import partial

import boto3
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pipeline_testing import fs, png_bytes

from jobs.cli import main as sprdiff_cli
from pipeline import local_runner
from pipeline.config import DecodeJobConfig, EncodeJobConfig
from pipeline.decode_job import run_decode_job
from pipeline.encode_job import run_encode_job

IMAGES, PER_PART = 200, 25
PART = re.compile(r"/(?:archive)/(part-\d{5})\.parquet$")


@pytest.fixture(scope="module")
def archive(recording_s3, sample_images, tiny_model):
    """200 small crops encoded into 8 parts on the recording S3: ``(s3://.../archive, images)``."""
    bucket = f"lookup-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=recording_s3.endpoint).create_bucket(Bucket=bucket)
    sources = list(sample_images.values())
    images = {}
    s3 = fs()
    for i in range(IMAGES):
        src = sources[i % len(sources)]
        y, x = (i * 7) % (src.shape[0] - 32), (i * 13) % (src.shape[1] - 32)
        images[f"img-{i:03d}"] = np.ascontiguousarray(src[y:y + 32, x:x + 32])
        s3.pipe_file(f"{bucket}/photos/img-{i:03d}.png", png_bytes(images[f"img-{i:03d}"]))
    uri = f"s3://{bucket}/archive"
    config = EncodeJobConfig(input=f"s3://{bucket}/photos", output=uri, rows_per_part=PER_PART, model="tiny",
                             colour_correction=False)
    stats = run_encode_job(config, partial(local_runner.stream_encode, model=tiny_model), log=lambda _: None)
    assert stats["rows"] == IMAGES and stats["run"]["shards_written"] == IMAGES // PER_PART >= 8
    return uri, images


def _parts_read(requests: list[dict]) -> set[str]:
    return {m.group(1) for r in requests if (m := PART.search(r["path"]))}


def test_decoding_three_keys_reads_only_the_parts_that_hold_them(archive, recording_s3, tiny_model, tmp_path):
    uri, images = archive
    wanted = {"img-030": "part-00001", "img-104": "part-00004", "img-199": "part-00007"}
    s3 = fs()
    sizes = {p.rsplit("/", 1)[1]: s3.size(p) for p in s3.glob(uri.removeprefix("s3://") + "/part-*.parquet")}
    with recording_s3.recording() as log:
        stats = run_decode_job(DecodeJobConfig(input=uri, output=str(tmp_path / "out"), keys=frozenset(wanted),
                                               model="tiny"),
                               partial(local_runner.stream_decode, loaded=tiny_model), log=lambda _: None)
    assert stats["counts"] == {"ok": 3}
    assert _parts_read(log.requests) == set(wanted.values())
    assert not [r for r in log.requests if r["method"] == "GET" and "list-type" in r["query"]
                and r["query"].get("prefix", "").startswith("archive")], "the archive was listed"
    read = sum(int(m.group(2)) - int(m.group(1)) + 1 for r in log.requests if PART.search(r["path"]) and r["range"]
               for m in [re.match(r"bytes=(\d+)-(\d+)", r["range"])] if m)
    print(f"decode-job --keys (3 of {IMAGES}): {len(log.requests)} requests, {read:,} bytes of parts read of "
          f"{sum(sizes.values()):,} in the archive's {len(sizes)} parts")
    for key in wanted:
        [record] = tiny_model.compress([images[key]], colour_correction=False)
        [expected] = tiny_model.decompress([record])
        assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / f"{key}.png")), expected)
    manifest = pq.read_table(tmp_path / "out" / "_manifest")
    assert sorted(manifest.column("key").to_pylist()) == sorted(wanted)


def test_sprdiff_get_decodes_one_key_without_ray(archive, recording_s3, tiny_model, tmp_path):
    uri, images = archive
    target = tmp_path / "one.png"
    with recording_s3.recording() as log:
        assert sprdiff_cli(["get", uri, "img-077", "-o", str(target), "--model", "tiny"]) == 0
    assert _parts_read(log.requests) == {"part-00003"}
    [record] = tiny_model.compress([images["img-077"]], colour_correction=False)
    [expected] = tiny_model.decompress([record])
    assert np.array_equal(np.asarray(Image.open(target)), expected)
    assert sprdiff_cli(["get", uri, "img-999", "-o", str(tmp_path / "none.png"), "--model", "tiny"]) == 1


def test_where_is_pushed_down_and_safe(archive, recording_s3, tiny_model, tmp_path):
    uri, _ = archive
    with recording_s3.recording():
        stats = run_decode_job(DecodeJobConfig(input=uri, output=str(tmp_path / "w"), model="tiny",
                                               where="key in ('img-003', 'img-150') or key >= 'img-198'"),
                               partial(local_runner.stream_decode, loaded=tiny_model), log=lambda _: None)
    assert stats["counts"] == {"ok": 4}
    assert sorted(pq.read_table(tmp_path / "w" / "_manifest").column("key").to_pylist()) == \
        ["img-003", "img-150", "img-198", "img-199"]
