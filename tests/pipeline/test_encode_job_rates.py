"""Rate points in the batch jobs: ``encode-job --rate`` / ``--target-bpp``, the archive's ``rate_id`` and
``warning`` columns (layout 3), and archives written before them (layout 2), which still read and decode."""

from __future__ import annotations

import uuid
from collections import Counter
from functools import partial
from pathlib import Path

import boto3
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from pipeline_testing import COMPUTE, fs, png_bytes, read_archive

from jobs.cli import main as sprdiff_cli
from pipeline import local_runner, ray_runner
from pipeline.config import DecodeJobConfig, EncodeJobConfig
from pipeline.decode_job import run_decode_job
from pipeline.encode_job import run_encode_job
from pipeline.lookup import find
from pipeline.verify import format_report, verify_archive
from sprdiff import SPRDiff
from sprdiff.bitstream import read_header
from sprdiff.rate_choice import budget_bytes
from sprdiff.rates import add_rate_points

FIXTURES = Path(__file__).parent / "fixtures"
ENCODE_JOB = ["--rows-per-part", "2", "--no-colour-correction", "--actors", "1", "--threads-per-actor", "1"]


def quiet(_: str) -> None:
    pass


@pytest.fixture(scope="module")
def multi_rate(tmp_path_factory) -> tuple[str, SPRDiff]:
    """The tiny model with rate points 0, 1, 2 (gains 0.5, 1, 2; default 1), saved: ``(directory, model)``."""
    model = SPRDiff.from_pretrained("tiny")
    add_rate_points(model, [0.5, 1.0, 2.0], default_rate=1)
    directory = tmp_path_factory.mktemp("multi-rate") / "model"
    model.save_pretrained(directory)
    return str(directory), model


@pytest.fixture(scope="module")
def crops(small_images) -> dict[str, np.ndarray]:
    """Two small images: a 64x64 one, which fits a budget some rate meets, and a 16x16 one, whose
    smallest record is all header and fits none."""
    return {"big": small_images["img-00"], "small": np.ascontiguousarray(small_images["img-05"][:16, :16])}


def _folder(path: Path, images: dict[str, np.ndarray]) -> Path:
    path.mkdir(parents=True)
    for key, pixels in images.items():
        (path / f"{key}.png").write_bytes(png_bytes(pixels))
    (path / "broken.png").write_bytes(b"not an image")
    return path


def test_a_rate_the_model_lacks_or_a_bad_target_is_refused_before_any_listing_or_ray(multi_rate, tmp_path,
                                                                                    monkeypatch, capsys):
    def no_ray(*_, **__):
        raise AssertionError("Ray was started for a job that should have been refused")

    monkeypatch.setattr(ray_runner, "ray_session", no_ray)
    model_dir, _ = multi_rate
    missing = tmp_path / "no-such-input"  # listing it would fail with another message
    out = tmp_path / "archive"
    for extra, message in ((["--model", model_dir, "--rate", "7"], "has no rate 7: it codes at rates 0, 1, 2"),
                           (["--model", "tiny", "--rate", "1"], "has no rate 1: it codes at rate 0"),
                           (["--model", model_dir, "--target-bpp", "0"], "target bpp must be a positive number"),
                           (["--model", model_dir, "--target-bpp", "-0.5"], "codes at rates 0, 1, 2")):
        assert sprdiff_cli(["encode-job", "--input", str(missing), "--output", str(out), *extra]) == 1, extra
        assert message in capsys.readouterr().err, extra
        assert sprdiff_cli(["encode-job", "--input", str(missing), "--output", str(out), "--plan-only", *extra]) == 1
        capsys.readouterr()
    assert not out.exists()
    with pytest.raises(SystemExit):  # argparse: one or the other
        sprdiff_cli(["encode-job", "--input", "a", "--output", "b", "--rate", "0", "--target-bpp", "0.1"])
    with pytest.raises(ValueError, match="not both"):
        EncodeJobConfig(input="a", output="b", rate=0, target_bpp=0.1)


@pytest.fixture(scope="module")
def bucket(s3_endpoint) -> str:
    name = f"rates-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


def test_encode_job_on_ray_codes_at_the_rate_asked_and_one_decode_job_decodes_every_rate(
        ray_two_cpus, bucket, multi_rate, small_images, tmp_path, capsys):
    model_dir, model = multi_rate
    s3 = fs()
    images = {rate: {f"r{rate}-{i}": np.ascontiguousarray(small_images[f"img-0{i}"][:32, :48]) for i in (1, 2)}
              for rate in (0, 2)}
    for rate, chosen in images.items():
        for key, pixels in chosen.items():
            s3.pipe_file(f"{bucket}/photos-{rate}/{key}.png", png_bytes(pixels))
        s3.pipe_file(f"{bucket}/photos-{rate}/broken-{rate}.png", b"not an image")
        assert sprdiff_cli(["encode-job", "--input", f"s3://{bucket}/photos-{rate}", "--output",
                            f"s3://{bucket}/archives/r{rate}", "--model", model_dir, "--rate", str(rate),
                            *ENCODE_JOB]) == 0
        assert f"rates       rate {rate}: 2\n" in capsys.readouterr().out  # the job's summary
        rows = read_archive(f"s3://{bucket}/archives/r{rate}")
        assert (rows[f"broken-{rate}"]["status"], rows[f"broken-{rate}"]["rate_id"],
                rows[f"broken-{rate}"]["warning"]) == ("not_image", None, None)
        for key, pixels in chosen.items():
            row = rows[key]
            assert row["record"] == model.compress([pixels], rate=rate, colour_correction=False)[0], key
            assert row["rate_id"] == read_header(row["record"])[0].rate_id == rate and row["warning"] is None

    # a rerun with another rate would mix two rates' bytes in one archive: refused
    assert sprdiff_cli(["encode-job", "--input", f"s3://{bucket}/photos-0", "--output", f"s3://{bucket}/archives/r0",
                        "--model", model_dir, "--rate", "2", *ENCODE_JOB]) == 1
    assert "rate: 0 then, 2 now" in capsys.readouterr().err

    # both archives, each model found by its fingerprint in the archive's _models/: one model, every rate
    stats = run_decode_job(DecodeJobConfig(input=f"s3://{bucket}/archives", output=str(tmp_path / "decoded"),
                                           compute=COMPUTE), ray_runner.stream_decode, log=quiet)
    assert stats["counts"] == {"ok": 4, "not_encoded": 2}
    for rate, chosen in images.items():
        rows = read_archive(f"s3://{bucket}/archives/r{rate}")
        for key in chosen:
            [want] = model.decompress([rows[key]["record"]])
            got = np.asarray(Image.open(tmp_path / "decoded" / f"{key}.png"))
            assert got.shape == want.shape and np.abs(got.astype(int) - want).max() <= 1  # 1 thread there, 2 here


def test_target_bpp_keeps_each_record_within_its_budget_or_warns(multi_rate, crops, tmp_path):
    model_dir, model = multi_rate
    sizes = {key: [len(model.compress([pixels], rate=r, colour_correction=False)[0]) for r in model.rate_ids]
             for key, pixels in crops.items()}
    h, w = crops["big"].shape[:2]
    target = (8 * sizes["big"][1] + 4) / (w * h)  # the big image's rate 1 fits exactly
    out = tmp_path / "archive"
    stats = run_encode_job(EncodeJobConfig(input=str(_folder(tmp_path / "photos", crops)), output=str(out),
                                           model=model_dir, target_bpp=target,
                                           colour_correction=False, rows_per_part=2),
                           partial(local_runner.stream_encode, model=model), log=quiet)
    rows = {r["key"]: r for r in pq.read_table(out).to_pylist()}
    assert len(rows) == 3 and rows["broken"]["status"] == "not_image"  # no row lost
    assert (rows["broken"]["rate_id"], rows["broken"]["warning"]) == (None, None)
    fitted = []
    for key, pixels in crops.items():
        row, budget = rows[key], budget_bytes(target, pixels.shape[1], pixels.shape[0])
        assert row["status"] == "ok" and row["rate_id"] == read_header(row["record"])[0].rate_id
        fitting = [r for r, size in enumerate(sizes[key]) if size <= budget]
        fitted.append(bool(fitting))
        if fitting:  # the largest record within the budget
            assert row["rate_id"] == max(fitting, key=lambda r: sizes[key][r]) and row["num_bytes"] <= budget
            assert row["warning"] is None
        else:  # none fits: the fewest bytes, and a warning
            assert row["rate_id"] == int(np.argmin(sizes[key])) and row["num_bytes"] > budget
            assert row["warning"].startswith(f"no rate fits {target:g} bpp")
        assert row["num_bytes"] == sizes[key][row["rate_id"]]
    assert fitted == [True, False]  # both cases happened
    chosen = Counter(rows[key]["rate_id"] for key in crops)
    assert stats["rate_counts"] == {str(rate): n for rate, n in sorted(chosen.items())}
    assert stats["budget_warnings"] == 1


def test_an_archive_of_layout_2_reads_its_new_columns_as_null_and_still_decodes(tmp_path, tiny_model, capsys):
    archive = FIXTURES / "archive-v2"
    assert "rate_id" not in pq.read_schema(archive / "part-00000.parquet").names
    found = find(str(archive), ["img-1", "notes"], columns=["key", "status", "rate_id", "warning"]).to_pylist()
    assert found == [{"key": "img-1", "status": "ok", "rate_id": None, "warning": None},
                     {"key": "notes", "status": "not_image", "rate_id": None, "warning": None}]
    stats = run_decode_job(DecodeJobConfig(input=str(archive), output=str(tmp_path / "decoded"),
                                           where="rate_id is null"),  # a filter on a column the parts lack
                           partial(local_runner.stream_decode, loaded=tiny_model), log=quiet)
    assert stats["counts"] == {"ok": 3, "not_encoded": 1}
    rows = {r["key"]: r for part in sorted(archive.glob("part-*.parquet")) for r in pq.read_table(part).to_pylist()}
    for key in ("img-0", "img-1", "img-2"):
        [want] = tiny_model.decompress([rows[key]["record"]])
        assert np.array_equal(np.asarray(Image.open(tmp_path / "decoded" / f"{key}.png")), want), key
    assert sprdiff_cli(["get", str(archive), "img-1", "-o", str(tmp_path / "got.png")]) == 0
    assert "48x48, a record of 70 bytes at rate 0 from part-00000" in capsys.readouterr().out
    report = verify_archive(str(archive), full=True, model_stores=("tiny",))  # its shared store was not kept
    assert not report.damaged and report.decoded == 3, format_report(report)
    # layout 1 too: the added columns read as nulls there, in a filter as well
    v1 = find(str(FIXTURES / "archive-v1"), ["img-1"], columns=["key", "record", "rate_id"]).to_pylist()
    assert v1[0]["record"] and v1[0]["rate_id"] is None
