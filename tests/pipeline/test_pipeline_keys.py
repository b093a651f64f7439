"""Keys from input paths, and output names from keys that can never leave the output prefix."""

from __future__ import annotations

import posixpath

from hypothesis import given
from hypothesis import strategies as st

from pipeline.keys import file_keys, safe_relative_path, strip_extension


def test_keys_are_relative_paths_without_extension():
    assert file_keys(["a.png", "sub/b.jpeg", "sub/c", ".hidden"]) == ["a", "sub/b", "sub/c", ".hidden"]


def test_keys_that_would_collide_keep_their_extension():
    assert file_keys(["x/a.jpg", "x/a.png", "x/b.png"]) == ["x/a.jpg", "x/a.png", "x/b"]


def test_strip_extension_only_strips_the_last_suffix():
    assert strip_extension("a/b.tar.gz") == "a/b.tar"
    assert strip_extension("dir.v2/name") == "dir.v2/name"


def test_plain_keys_are_kept():
    assert safe_relative_path("photos/2024/img_001", ".png") == "photos/2024/img_001.png"
    assert safe_relative_path("shard-00001/000042", ".jpg") == "shard-00001/000042.jpg"
    assert safe_relative_path("ünïcode name", ".png") == "ünïcode name.png"


def _escapes(path: str) -> bool:
    normal = posixpath.normpath(path)
    return path.startswith("/") or normal == ".." or normal.startswith("../") or "\x00" in path


def test_hostile_keys_stay_inside_the_output():
    for key in ["../../etc/passwd", "/etc/passwd", "a/../../b", "..", ".", "", "a\x00b", "a\\..\\b", "//x//y//",
                "./../x", "a/\n/b"]:
        path = safe_relative_path(key, ".png")
        assert not _escapes(path), (key, path)
        assert path.endswith(".png") and path != ".png"
        assert all(part not in ("", ".", "..") for part in path[:-4].split("/")), (key, path)


def test_changed_keys_get_a_hash_so_they_stay_distinct():
    assert safe_relative_path("/a", ".png") != safe_relative_path("a", ".png")
    assert safe_relative_path("a/../b", ".png") != safe_relative_path("a/__/b", ".png")


def test_overlong_components_are_cut():
    path = safe_relative_path("d/" + "é" * 300, ".png")
    assert all(len(part.encode()) <= 255 for part in path.split("/"))
    assert path != safe_relative_path("d/" + "é" * 301, ".png")


@given(st.text(min_size=0, max_size=300))
def test_no_key_escapes_and_names_are_short(key):
    path = safe_relative_path(key, ".png")
    assert not _escapes(path)
    assert all(0 < len(part.encode("utf-8", "surrogatepass")) <= 255 for part in path.split("/"))


@given(st.lists(st.text(max_size=40), min_size=2, max_size=2, unique=True))
def test_distinct_keys_get_distinct_names(keys):
    a, b = keys
    assert safe_relative_path(a, ".png") != safe_relative_path(b, ".png")
