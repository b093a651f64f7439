"""The crafted bad-input corpus (``bad_inputs.py``) through the real encode job on a local Ray over S3.

One run per input kind (image files, WebDataset shards, Parquet tables): every input gets exactly
one row with the status it must have and a message when it is not ``ok``; the good and the
convertible images in the same run are encoded, bit-identical to the model on the pixels the
conversion rule gives. A last test measures the memory a reading process spends on the corpus.
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from bad_inputs import image_files, parquet_files, tar_shards
from pipeline_testing import COMPUTE, fs, read_archive

from pipeline import ray_runner
from pipeline.config import EncodeJobConfig
from pipeline.encode_job import run_encode_job
from sprdiff.images import DEFAULT_MAX_PIXELS, load_image

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MEMORY_BOUND_MB = 200


@pytest.fixture(scope="module")
def good(small_images) -> dict[str, np.ndarray]:
    """Four of the photo crops: the images that must come out ``ok`` beside the bad ones."""
    return {k: small_images[k] for k in ("img-00", "img-01", "img-02", "img-03")}


def _encode(source: str, output: str, **kw) -> dict:
    config = EncodeJobConfig(input=source, output=output, rows_per_part=8, max_pixels=DEFAULT_MAX_PIXELS,
                             compute=COMPUTE, **kw)
    return run_encode_job(config, ray_runner.stream_encode, log=lambda _: None)


def _upload(bucket: str, prefix: str, files: dict[str, bytes]) -> str:
    s3 = fs()
    for name, data in files.items():
        s3.pipe_file(f"{bucket.removeprefix('s3://')}/{prefix}/{name}", data)
    return f"{bucket}/{prefix}"


def _check_rows(rows: dict[str, dict], expected: dict[str, str], stats: dict) -> None:
    assert sorted(rows) == sorted(expected), "every input key exactly once, and nothing else"
    got = {k: r["status"] for k, r in rows.items()}
    assert got == expected, {k: (got[k], expected[k], rows[k]["error"]) for k in expected if got[k] != expected[k]}
    for key, row in rows.items():
        if row["status"] == "ok":
            assert row["error"] is None and row["record"], key
        else:
            assert row["error"] and row["record"] is None, key
    assert stats["counts"] == dict(collections.Counter(expected.values()))
    assert stats["rows"] == len(expected)


def test_image_files(ray_two_cpus, s3_bucket, good, tiny_model):
    files, cases = image_files(good)
    bad = [c for c in cases.values() if c.name not in {f"{k}.png" for k in good}]
    assert len(bad) >= 25 and len({c.status for c in bad}) >= 6
    source = _upload(s3_bucket, "corpus", files)
    stats = _encode(source, f"{s3_bucket}/archive")
    rows = read_archive(f"{s3_bucket}/archive")
    _check_rows(rows, {key: c.status for key, c in cases.items()}, stats)
    for key, case in cases.items():
        row = rows[key]
        assert row["source_uri"] == f"{source}/{case.name}"
        if case.status != "ok":
            continue
        # the exact pixels of the conversion rule where they are known, else what the (lossy) decoder gives
        pixels = case.pixels if case.pixels is not None else load_image(case.data)
        if case.shape is not None:
            assert pixels.shape[:2] == case.shape, key
        assert (row["height"], row["width"]) == pixels.shape[:2], key
        assert row["record"] == tiny_model.compress([pixels])[0], key
    rotated = rows["exif-rotated.jpg"]
    assert (rotated["width"], rotated["height"]) == (32, 16)  # stored 16 wide, 32 high: the tag was applied
    assert "81,000,000 pixels exceeds the limit" in rows["bomb-81mp"]["error"]
    assert rows["zero-bytes.png"]["source_bytes"] == 0 and rows["huge-ihdr"]["width"] is None


def test_webdataset_shards(ray_two_cpus, s3_bucket, good, tiny_model):
    shards = tar_shards(good)
    source = _upload(s3_bucket, "wds", {s.name: s.data for s in shards})
    stats = _encode(source, f"{s3_bucket}/wds-archive", input_format="wds")
    rows = read_archive(f"{s3_bucket}/wds-archive")
    _check_rows(rows, {k: v for s in shards for k, v in s.rows.items()}, stats)
    for shard in shards:
        for key, pixels in (shard.pixels or {}).items():
            assert rows[key]["record"] == tiny_model.compress([pixels])[0], key
        for key, status in shard.rows.items():
            if key == shard.name.removesuffix(".tar"):  # the shard's own row: what broke, and where
                assert status == "read_error" and rows[key]["source_uri"].endswith(shard.name)
                assert "tar shard damaged after" in rows[key]["error"]
    assert "bad checksum" in rows["e-bad-header"]["error"]
    assert "4,294,967,296 bytes" in rows["f-huge-member/b"]["error"]
    assert "appears again" in rows["g-duplicate-key/x~2"]["error"]


def test_parquet_tables(ray_two_cpus, s3_bucket, good, tiny_model):
    tables = parquet_files(good)
    source = _upload(s3_bucket, "tables", {t.name: t.data for t in tables})
    stats = _encode(source, f"{s3_bucket}/tables-archive", input_format="parquet")
    rows = read_archive(f"{s3_bucket}/tables-archive")
    _check_rows(rows, {k: v for t in tables for k, v in t.rows.items()}, stats)
    for key, pixels in tables[0].pixels.items():
        assert rows[key]["record"] == tiny_model.compress([pixels])[0], key
    for table in tables[1:]:  # every message names the problem and the file
        for key in table.rows:
            assert table.name in rows[key]["error"], rows[key]["error"]
    assert "holds int64, not image bytes" in rows["b-int-images/i0"]["error"]
    assert "not a readable Parquet file" in rows["e-not-parquet"]["error"]


MEMORY_SCRIPT = textwrap.dedent("""
    import json, sys, tempfile
    from pathlib import Path
    import numpy as np
    sys.path.insert(0, sys.argv[1])
    from bad_inputs import image_files
    from pipeline.encode_stages import read_and_decode
    from pipeline.encode_job import plan_tasks
    from pipeline.inputs import PlanRequest, build_plan
    from pipeline.storage import Location
    from sprdiff.errors import ImageError
    from sprdiff.images import load_image

    def status_mb(field):
        line = next(l for l in open("/proc/self/status") if l.startswith(field + ":"))
        return int(line.split()[1]) / 1024

    def peak_growth_mb(run):  # peak RSS while run() runs above the RSS before it (high-water mark reset first)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        start = status_mb("VmRSS")
        run()
        return status_mb("VmHWM") - start

    def refuse_bombs():
        for case in bombs:
            try:
                load_image(case.data)
            except ImageError as e:
                assert e.status == "too_large", (case.name, e.status)
            else:
                raise AssertionError(case.name + " was decoded")

    def read_everything():
        statuses = [s for b in read_and_decode({"task": [task.to_json()]}, max_pixels=64_000_000)
                    for s in b["status"]]
        assert len(statuses) == len(files) + 1  # every file, and the shard's end marker

    rng = np.random.default_rng(0)
    good = {f"img-{i}": rng.integers(0, 256, (128, 192, 3), dtype=np.uint8) for i in range(4)}
    files, cases = image_files(good)
    folder = Path(tempfile.mkdtemp())
    for name, data in files.items():
        (folder / name).write_bytes(data)
    bombs = [c for c in cases.values() if c.status == "too_large"]
    plan = build_plan(PlanRequest(input=str(folder), rows_per_part=len(files)),
                      Location.of(tempfile.mkdtemp() + "/_plan"))
    [task] = plan_tasks(plan)
    load_image(files["img-0.png"])  # warm up the decoders
    figures = {"rss_mb": status_mb("VmRSS"), "bombs": len(bombs), "files": len(files),
               "bombs_mb": peak_growth_mb(refuse_bombs), "reader_mb": peak_growth_mb(read_everything),
               # control: the same 81 MP bomb with the limit lifted, to show the measurement sees a decode
               "control_mb": peak_growth_mb(lambda: load_image(files["bomb-81mp.png"], max_pixels=10**9))}
    print(json.dumps(figures))
""")


def test_bombs_are_refused_before_their_pixels_are_allocated():
    """In a fresh process: refusing every too-large case, and reading and decoding the whole corpus
    (the job's CPU stage), each raise the peak RSS by less than MEMORY_BOUND_MB; decoding the 81 MP
    bomb with the limit lifted raises it by more, so the measurement does see allocations."""
    done = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(HERE)], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    print("peak RSS growth (MB):", figures)
    assert figures["bombs"] >= 7
    assert figures["bombs_mb"] < MEMORY_BOUND_MB
    assert figures["reader_mb"] < MEMORY_BOUND_MB
    assert figures["control_mb"] > MEMORY_BOUND_MB
