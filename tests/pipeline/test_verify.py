"""``sprdiff verify``: passes on a clean archive; names the part or key of every kind of damage.

The archives are written by the real encode job (local runner, the tiny model's weights saved in
a temporary directory); the damage is done to their files as a disk or an operator would.
"""

from __future__ import annotations

import json
import shutil
from functools import partial
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from pipeline_testing import png_bytes

from jobs.cli import main as sprdiff_cli
from pipeline import local_runner
from pipeline.config import EncodeJobConfig
from pipeline.encode_job import run_encode_job
from pipeline.verify import DAMAGE, format_report, verify_archive

FIXTURES = Path(__file__).parent / "fixtures"


def damage(report) -> list[tuple[str, str | None, str | None]]:
    return [(f.check, f.part, f.key) for f in report.findings if f.severity == DAMAGE]


@pytest.fixture(scope="module")
def images(tmp_path_factory, small_images) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for key in list(small_images)[:6]:
        (folder / f"{key}.png").write_bytes(png_bytes(small_images[key][:64, :64]))
    (folder / "notes.png").write_bytes(b"not an image")
    return folder


def _encode(images: Path, out: Path, model_dir: Path, tiny_model) -> None:
    config = EncodeJobConfig(input=str(images), output=str(out), model=str(model_dir), rows_per_part=3)
    run_encode_job(config, partial(local_runner.stream_encode, model=tiny_model), log=lambda _: None)


@pytest.fixture(scope="module")
def clean_archive(tmp_path_factory, images, tiny_model) -> Path:
    """Three parts of 3, 3 and 1 rows (one of them not an image), the model stored in _models/."""
    root = tmp_path_factory.mktemp("clean")
    tiny_model.save_pretrained(root / "model")
    _encode(images, root / "archive", root / "model", tiny_model)
    shutil.rmtree(root / "model")  # the archive must stand on its own
    return root / "archive"


@pytest.fixture
def archive(clean_archive, tmp_path) -> Path:
    """A copy of the clean archive to damage."""
    copy = tmp_path / "archive"
    shutil.copytree(clean_archive, copy)
    return copy


def _a_record(archive: Path, part: str = "part-00001") -> tuple[str, bytes]:
    row = next(r for r in pq.read_table(archive / f"{part}.parquet").to_pylist() if r["record"])
    return row["key"], row["record"]


def test_a_clean_archive_verifies(clean_archive, capsys):
    report = verify_archive(str(clean_archive), full=True)
    assert not report.damaged, format_report(report)
    assert (report.parts, report.rows, report.records, report.decoded, report.fingerprints) == (3, 7, 6, 6, 1)
    assert report.findings == []  # the plan, sidecars, footers and stats all agree: nothing to note
    assert sprdiff_cli(["verify", str(clean_archive), "--decode-sample", "2"]) == 0
    assert "OK: 3 parts, 7 rows, 6 records checked, 1 model(s), 2 decoded" in capsys.readouterr().out


def test_a_flipped_byte_in_a_record_names_its_key(archive):
    key, record = _a_record(archive)
    path = archive / "part-00001.parquet"
    data = bytearray(path.read_bytes())
    at = data.find(record)
    assert at > 0 and data.find(record, at + 1) == -1  # records are stored as they are: the byte is in this one
    data[at + len(record) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    report = verify_archive(str(archive))
    assert ("digest", "part-00001", None) in damage(report)
    assert ("record", "part-00001", key) in damage(report), format_report(report)


def test_a_flipped_byte_outside_the_records_names_the_part(archive):
    path = archive / "part-00000.parquet"
    data = bytearray(path.read_bytes())
    data[len(data) - 200] ^= 0x40  # inside the footer's metadata, far from any record
    path.write_bytes(bytes(data))
    report = verify_archive(str(archive))
    assert report.damaged and {part for _, part, _ in damage(report)} == {"part-00000"}
    assert ("digest", "part-00000", None) in damage(report), format_report(report)


def test_a_truncated_part_is_named(archive):
    path = archive / "part-00002.parquet"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    report = verify_archive(str(archive))
    assert ("digest", "part-00002", None) in damage(report)
    assert ("footer", "part-00002", None) in damage(report), format_report(report)


def test_a_deleted_part_is_named_with_the_keys_it_held(archive):
    keys = pq.read_table(archive / "part-00001.parquet", columns=["key"]).column("key").to_pylist()
    (archive / "part-00001.parquet").unlink()
    report = verify_archive(str(archive))
    assert ("part", "part-00001", None) in damage(report)
    [missing] = [f for f in report.findings if f.check == "part"]
    assert repr(min(keys)) in missing.message and repr(max(keys)) in missing.message


def test_a_part_from_another_job_is_named(archive, images, tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path / "model")
    _encode(images, tmp_path / "other", tmp_path / "model", tiny_model)  # same inputs and model, another job
    other_part = tmp_path / "other" / "part-00001.parquet"
    assert other_part.read_bytes() != (archive / "part-00001.parquet").read_bytes()  # only the job id differs
    shutil.copy(other_part, archive / "part-00001.parquet")
    shutil.copy(tmp_path / "other" / "_parts" / "part-00001.json", archive / "_parts" / "part-00001.json")
    report = verify_archive(str(archive))
    assert ("job", "part-00001", None) in damage(report), format_report(report)
    assert {part for _, part, _ in damage(report)} == {"part-00001"}


def test_records_whose_weights_are_missing_are_named_by_fingerprint(archive, tiny_model):
    shutil.rmtree(archive / "_models")
    report = verify_archive(str(archive), decode_sample=2)
    [finding] = [f for f in report.findings if f.check == "weights"]
    assert finding.severity == DAMAGE and finding.part == "part-00000" and finding.key
    assert tiny_model.fingerprint in finding.message and str(archive / "_models") in finding.message
    assert report.decoded == 0


def test_the_cli_prints_the_table_and_exits_1(archive, capsys):
    (archive / "part-00002.parquet").unlink()
    assert sprdiff_cli(["verify", str(archive), "--decode-sample", "0"]) == 1
    out = capsys.readouterr().out
    assert "DAMAGED" in out and "part-00002" in out and "missing" in out


def test_stats_that_disagree_with_the_parts_are_damage(archive):
    stats = json.loads((archive / "_stats.json").read_text())
    stats["rows"] += 1
    (archive / "_stats.json").write_text(json.dumps(stats))
    assert ("stats", None, None) in damage(verify_archive(str(archive)))


def test_an_archive_of_layout_1_verifies_and_says_what_it_could_not_check():
    report = verify_archive(str(FIXTURES / "archive-v1"), full=True)
    assert not report.damaged, format_report(report)
    assert (report.rows, report.records, report.decoded) == (4, 3, 3)
    assert {f.check for f in report.findings} == {"job", "plan", "digest"}


def test_verify_reads_an_archive_on_s3(clean_archive, s3_bucket):
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    uri = f"{s3_bucket}/archive"
    fs.put(str(clean_archive), uri.removeprefix("s3://"), recursive=True)
    report = verify_archive(uri, decode_sample=1)
    assert not report.damaged, format_report(report)
    assert report.parts == 3 and report.decoded == 1
    key, record = _a_record(clean_archive)
    data = bytearray(fs.cat_file(f"{uri}/part-00001.parquet"))
    data[data.find(record) + 3] ^= 0x08
    fs.pipe_file(f"{uri}/part-00001.parquet", bytes(data))
    assert ("record", "part-00001", key) in damage(verify_archive(uri))


def _edit_plan(archive: Path, edit) -> None:
    """Rewrite the stored plan's part table (``_plan/shards.parquet``) through ``edit(rows) -> rows``."""
    import pyarrow as pa

    path = archive / "_plan" / "shards.parquet"
    table = pq.read_table(path)
    pq.write_table(pa.Table.from_pylist(edit(table.to_pylist()), table.schema), path)


def test_parts_are_checked_against_the_stored_plan(archive):
    def more_rows_and_a_fourth_part(rows: list[dict]) -> list[dict]:
        rows[1]["expected_rows"] += 1
        return [*rows, {**rows[-1], "shard": 3, "first_key": "img-zz", "last_key": "img-zz"}]

    _edit_plan(archive, more_rows_and_a_fourth_part)
    found = damage(verify_archive(str(archive)))
    assert ("plan", "part-00001", None) in found and ("part", "part-00003", None) in found


def test_without_a_complete_plan_parts_are_checked_against_the_job_file(archive):
    (archive / "_plan" / "plan.json").unlink()  # written last: without it the plan is incomplete
    report = verify_archive(str(archive))
    assert not report.damaged, format_report(report)
    assert "_job.json (3 parts)" in next(f.message for f in report.findings if f.check == "plan")
    (archive / "part-00002.parquet").unlink()
    assert ("part", "part-00002", None) in damage(verify_archive(str(archive)))
