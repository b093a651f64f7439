"""make-shards: image folders or prefixes -> sorted, deterministic WebDataset shards, local and on S3."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import fsspec

from jobs.cli import main
from pipeline.shards import find_images, make_shards, sample_key
from pipeline.training.data import list_shards, read_samples
from sprdiff import load_image


def _members(path: str) -> list[str]:
    with fsspec.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
        return [member.name for member in tar]


def test_keys_come_from_relative_paths():
    assert sample_key("cats/tabby.1.jpg") == "cats_tabby_1"
    assert sample_key("a b/ü.png") == "a_b__"


def test_colliding_keys_get_a_hash_of_their_path(tmp_path, sample_images):
    from PIL import Image

    for name in ("a.b.png", "a_b.png", "a_b.jpg"):
        Image.fromarray(sample_images["chelsea"]).save(tmp_path / name)
    keys = [image.key for image in find_images(str(tmp_path))]
    assert len(set(keys)) == 3 and all(k.startswith("a_b_") for k in keys)
    assert keys == [image.key for image in find_images(str(tmp_path))]  # stable


def test_local_shards(tmp_path, image_folder, expected_keys):
    out = tmp_path / "shards"
    stats = make_shards(str(image_folder), str(out), crop=64, per_shard=3, threads=2)
    assert stats.written == 4 and stats.upscaled == 1
    assert dict(stats.skipped) == {"not_image": 1}
    assert [e["key"] for e in stats.errors] == ["broken"]
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "shard-000000.tar", "shard-000001.tar"]

    shards = list_shards(str(out))
    samples = list(read_samples(shards))
    assert [s["__key__"] for s in samples] == expected_keys  # sorted across shards
    for shard in shards:
        names = _members(shard)
        assert names == sorted(names)
    by_key = {s["__key__"]: s for s in samples}
    # the original bytes are stored as they are...
    assert by_key["photos_coffee"]["jpg"] == (image_folder / "photos" / "coffee.jpg").read_bytes()
    assert by_key["astronaut"]["png"] == (image_folder / "astronaut.png").read_bytes()
    # ...except images shorter than the crop, upscaled so the short side is the crop
    tiny = load_image(by_key["tiny"]["png"])
    assert min(tiny.shape[:2]) == 64 and json.loads(by_key["tiny"]["json"])["upscaled"] is True

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["samples"] == 4 and manifest["skipped"] == {"not_image": 1}
    assert [s["samples"] for s in manifest["shards"]] == [3, 1]


def test_same_input_gives_identical_shards_and_reruns_drop_stale_ones(tmp_path, image_folder):
    out = tmp_path / "shards"
    make_shards(str(image_folder), str(out), crop=64, per_shard=1, threads=2)
    first = (out / "shard-000000.tar").read_bytes()
    assert len(list(out.glob("shard-*.tar"))) == 4
    make_shards(str(image_folder), str(out), crop=64, per_shard=2, threads=1)
    assert sorted(p.name for p in out.glob("shard-*.tar")) == ["shard-000000.tar", "shard-000001.tar"]
    make_shards(str(image_folder), str(out), crop=64, per_shard=1, threads=3)
    assert (out / "shard-000000.tar").read_bytes() == first


def test_s3_to_s3(s3_bucket, image_folder, expected_keys):
    fs = fsspec.filesystem("s3")
    source = f"{s3_bucket}/raw/images"
    for path in Path(image_folder).rglob("*"):
        if path.is_file():
            fs.put_file(str(path), f"{source}/{path.relative_to(image_folder)}")
    output = f"{s3_bucket}/shards/train"
    stats = make_shards(source, output, crop=64, per_shard=2, threads=4)
    assert stats.written == 4 and dict(stats.skipped) == {"not_image": 1}
    shards = list_shards(output)
    assert shards == [f"{output}/shard-000000.tar", f"{output}/shard-000001.tar"]
    samples = list(read_samples(shards))
    assert [s["__key__"] for s in samples] == expected_keys
    assert json.loads(samples[0]["json"])["source_uri"] == f"{source}/astronaut.png"
    assert fs.exists(f"{output}/manifest.json")


def test_cli(tmp_path, image_folder, capsys):
    assert main(["make-shards", "--input", str(image_folder), "--output", str(tmp_path / "out"), "--crop", "64",
                 "--per-shard", "10"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out.strip().splitlines()[-1])["samples"] == 4
    assert "broken.jpg: not_image" in captured.err


def test_exclude_leaves_out_held_out_files(tmp_path, image_folder, capsys):
    """Held-out validation images never reach the shards: ``--exclude`` globs on relative paths."""
    assert main(["make-shards", "--input", str(image_folder), "--output", str(tmp_path / "out"), "--crop", "64",
                 "--exclude", "astronaut.png", "--exclude", "photos/*.jpg", "--exclude", "broken.*"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["samples"] == 2 and summary["skipped"] == {}
    members = _members(str(tmp_path / "out" / "shard-000000.tar"))
    assert not any(m.startswith(("astronaut.", "photos_coffee.")) for m in members)
    assert any(m.startswith("photos_chelsea_v2.") for m in members)
