"""Input listing: directories (recursively, images only), globs, single files, object-store prefixes."""

from __future__ import annotations

import fsspec
import pytest

from sprdiff.evaluation.inputs import list_images


def test_directory_lists_image_files_sorted_and_limited(image_dir):
    keys = [s.key for s in list_images(str(image_dir))]
    assert keys == ["astronaut.png", "broken.png", "chelsea.png", "coffee.png"]
    assert [s.key for s in list_images(str(image_dir), limit=2)] == ["astronaut.png", "broken.png"]
    assert list_images(str(image_dir))[0].read()[:8] == b"\x89PNG\r\n\x1a\n"


def test_glob_and_single_file(image_dir):
    assert [s.key for s in list_images(str(image_dir / "c*.png"))] == ["chelsea.png", "coffee.png"]
    [one] = list_images(str(image_dir / "coffee.png"))
    assert one.key == "coffee.png" and one.uri == str(image_dir / "coffee.png")


def test_nothing_there_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        list_images(str(tmp_path / "missing"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="no image files"):
        list_images(str(tmp_path))


def test_s3_prefix(s3_bucket, image_dir):
    fs = fsspec.filesystem("s3")
    for name in ("astronaut.png", "coffee.png"):
        fs.pipe(f"{s3_bucket}/photos/sub/{name}", (image_dir / name).read_bytes())
    sources = list_images(f"{s3_bucket}/photos/")
    assert [s.key for s in sources] == ["sub/astronaut.png", "sub/coffee.png"]
    assert sources[0].uri.startswith("s3://") and sources[0].read() == (image_dir / "astronaut.png").read_bytes()
