"""Archives that outlive their models: the jobs store the exact weights and find them again by
each record's fingerprint (sprdiff.model_store), with no --model."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from pipeline_testing import png_bytes

from jobs.cli import main as sprdiff_cli
from pipeline import local_runner
from pipeline.config import DecodeJobConfig, EncodeJobConfig
from pipeline.decode_job import run_decode_job
from pipeline.decode_stages import DecodeRecords, read_archive_rows
from pipeline.encode_job import run_encode_job
from pipeline.lookup import ArchiveIndex
from pipeline.parts import PartTask
from sprdiff import SPRDiff

FIXTURES = Path(__file__).parent / "fixtures"


def quiet(_: str) -> None:
    pass


def _retrained(shift: float) -> SPRDiff:
    """The tiny model with one weight moved: weights no preset or shipped model has."""
    model = SPRDiff.from_pretrained("tiny")
    with torch.no_grad():
        model.semantic_projection.bias.add_(shift)
    model.invalidate_fingerprint()
    return model


@pytest.fixture(scope="module")
def models() -> tuple[SPRDiff, SPRDiff]:
    return _retrained(0.25), _retrained(-0.25)


@pytest.fixture(scope="module")
def photos(tmp_path_factory, small_images) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for key in list(small_images)[:3]:
        (folder / f"{key}.png").write_bytes(png_bytes(small_images[key][:48, :64]))
    (folder / "broken.png").write_bytes(b"no image here")
    return folder


def _encode(photos: Path, out: Path, model: SPRDiff, tmp: Path, **kw) -> Path:
    """Encode with the model's weights in a directory of their own, then delete that directory."""
    model_dir = tmp / "model"
    model.save_pretrained(model_dir)
    config = EncodeJobConfig(input=str(photos), output=str(out), model=str(model_dir), rows_per_part=2,
                             colour_correction=False, **kw)
    run_encode_job(config, local_runner.stream_encode, log=quiet)
    shutil.rmtree(model_dir)
    return out


def _decode(archive: Path, out: Path, **kw) -> dict:
    return run_decode_job(DecodeJobConfig(input=str(archive), output=str(out), **kw), local_runner.stream_decode,
                          log=quiet)


def _manifest(out: Path) -> dict[str, dict]:
    return {r["key"]: r for r in pq.read_table(out / "_manifest").to_pylist()}


def test_an_archive_decodes_after_its_model_directory_is_deleted(photos, models, tmp_path, capsys, monkeypatch):
    model = models[0]
    archive = _encode(photos, tmp_path / "archive", model, tmp_path)
    assert (archive / "_models" / model.fingerprint / "README.md").is_file()
    rows = {r["key"]: r for r in pq.read_table(archive).to_pylist()}
    ok = {k: r for k, r in rows.items() if r["status"] == "ok"}
    assert len(ok) == 3 and rows["broken"]["status"] == "not_image"

    stats = _decode(archive, tmp_path / "decoded")
    assert stats["counts"] == {"ok": 3, "not_encoded": 1}
    for key, row in ok.items():
        [want] = model.decompress([row["record"]])
        assert np.array_equal(np.asarray(Image.open(tmp_path / "decoded" / f"{key}.png")), want), key

    monkeypatch.chdir(tmp_path)
    for key in ok:
        assert sprdiff_cli(["get", str(archive), key, "-o", f"got/{key}.png"]) == 0
        assert (tmp_path / "got" / f"{key}.png").read_bytes() == (tmp_path / "decoded" / f"{key}.png").read_bytes()
    assert "img-00 -> got/img-00.png: 64x48" in capsys.readouterr().out
    assert sprdiff_cli(["get", str(archive), "broken"]) == 1
    assert "no record: its status is not_image" in capsys.readouterr().err


def test_records_of_two_models_each_decode_with_their_own(photos, models, tmp_path):
    first, second = models
    parent = tmp_path / "archives"
    _encode(photos, parent / "monday", first, tmp_path)
    _encode(photos, parent / "tuesday", second, tmp_path)
    stats = _decode(parent, tmp_path / "decoded")
    assert stats["counts"] == {"ok": 6, "not_encoded": 2}

    index = ArchiveIndex.open(str(parent))
    decoder = DecodeRecords(max_models=1)
    statuses = []
    for part in index.parts:  # monday's parts, then tuesday's: each model loads once
        task = PartTask(part.index, part.rows, {"uri": part.uri, "keys": None, "where": None})
        for batch in read_archive_rows({"task": np.array([task.to_json()], dtype=object)}):
            statuses += list(decoder(batch)["status"])
    assert statuses.count("ok") == 6 and decoder.models.loads == 2


def test_missing_weights_fail_the_row_naming_the_fingerprint_and_every_place(photos, models, tmp_path):
    model = models[0]
    archive = _encode(photos, tmp_path / "archive", model, tmp_path)
    shutil.rmtree(archive / "_models")
    stats = _decode(archive, tmp_path / "decoded", model_stores=(str(tmp_path / "shared"),))
    assert stats["counts"] == {"model_not_found": 3, "not_encoded": 1}
    error = next(r["error"] for r in _manifest(tmp_path / "decoded").values() if r["status"] == "model_not_found")
    assert model.fingerprint in error
    for place in (tmp_path / "shared", archive / "_models"):
        assert f"{place}/{model.fingerprint}/ (absent)" in error
    assert f"{tmp_path / 'model'}/{model.fingerprint}/ (absent)" in error  # the source it was encoded from
    assert "demo (the shipped model" in error


def test_an_explicit_model_is_checked_against_each_record(photos, models, tmp_path, tiny_model):
    archive = _encode(photos, tmp_path / "archive", models[0], tmp_path)
    stats = _decode(archive, tmp_path / "wrong", model="tiny")
    assert stats["counts"] == {"model_mismatch": 3, "not_encoded": 1}
    assert "drop --model" in next(r["error"] for r in _manifest(tmp_path / "wrong").values() if r["error"]
                                  and r["status"] == "model_mismatch")
    stored = str(archive / "_models" / models[0].fingerprint)
    assert _decode(archive, tmp_path / "right", model=stored)["counts"] == {"ok": 3, "not_encoded": 1}


def test_a_rerun_with_weights_retrained_in_place_is_refused_before_any_part(photos, models, tmp_path):
    archive = _encode(photos, tmp_path / "archive", models[0], tmp_path)
    (archive / "part-00001.parquet").unlink()
    with pytest.raises(ValueError, match="does not match the archive's"):
        _encode(photos, archive, models[1], tmp_path)  # same --model path, other weights
    assert not (archive / "part-00001.parquet").exists()


def test_an_archive_of_layout_1_still_decodes_everywhere(tmp_path, capsys, tiny_model):
    archive = FIXTURES / "archive-v1"
    assert pq.read_schema(archive / "part-00000.parquet").names[6] == "bitstream"
    stats = _decode(archive, tmp_path / "decoded", where="status == 'ok'")
    assert stats["counts"] == {"ok": 3}
    row = next(r for r in pq.read_table(archive / "part-00001.parquet").to_pylist() if r["key"] == "img-1")
    [want] = tiny_model.decompress([row["bitstream"]])
    assert np.array_equal(np.asarray(Image.open(tmp_path / "decoded" / "img-1.png")), want)
    assert sprdiff_cli(["get", str(archive), "img-1", "-o", str(tmp_path / "got.png")]) == 0
    assert (tmp_path / "got.png").read_bytes() == (tmp_path / "decoded" / "img-1.png").read_bytes()


def test_single_records_decode_from_a_store_without_model(models, tmp_path, small_images, capsys):
    from sprdiff.model_store import store_model

    model = models[1]
    model.save_pretrained(tmp_path / "model")
    Image.fromarray(small_images["img-02"]).save(tmp_path / "photo.png")
    assert sprdiff_cli(["encode", str(tmp_path / "photo.png"), "-o", str(tmp_path / "enc"),
                        "--model", str(tmp_path / "model")]) == 0
    store_model(model, str(tmp_path / "store"))
    shutil.rmtree(tmp_path / "model")
    record = str(tmp_path / "enc" / "photo.sprd")
    assert sprdiff_cli(["decode", record, "-o", str(tmp_path / "dec"), "--model-store", str(tmp_path / "store")]) == 0
    [want] = model.decompress([(tmp_path / "enc" / "photo.sprd").read_bytes()])
    assert np.array_equal(np.asarray(Image.open(tmp_path / "dec" / "photo.png")), want)
    capsys.readouterr()
    assert sprdiff_cli(["decode", record, "-o", str(tmp_path / "dec2")]) == 1
    assert "no model in demo, demo-2026-12-07, demo-2026-12-03, tiny wrote this record" in capsys.readouterr().err


@pytest.mark.slow  # about 45 s on the shared 2-core machine; tests/pipeline/test_pipeline_ray_s3.py covers actors
def test_jobs_on_ray_share_one_model_store_on_s3(ray_two_cpus, photos, models, tmp_path, s3_bucket):
    import s3fs

    model = models[1]
    model.save_pretrained(tmp_path / "model")
    store = f"{s3_bucket}/models"
    for name in ("first", "second"):
        assert sprdiff_cli(["encode-job", "--input", str(photos), "--output", f"{s3_bucket}/{name}",
                            "--model", str(tmp_path / "model"), "--model-store", store, "--rows-per-part", "3",
                            "--actors", "1", "--threads-per-actor", "1"]) == 0
    shutil.rmtree(tmp_path / "model")
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    assert fs.ls(store.removeprefix("s3://"), detail=False) == [f"{store.removeprefix('s3://')}/{model.fingerprint}"]
    assert not fs.exists(f"{s3_bucket}/first/_models")
    assert sprdiff_cli(["decode-job", "--input", f"{s3_bucket}/second", "--output", str(tmp_path / "out"),
                        "--actors", "1", "--threads-per-actor", "1"]) == 0
    assert {r["status"] for r in _manifest(tmp_path / "out").values()} == {"ok", "not_encoded"}
    assert len(list((tmp_path / "out").glob("*.png"))) == 3
