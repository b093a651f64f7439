"""The single-file CLI, run as users run it: the installed ``sprdiff`` console script."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SPRDIFF = shutil.which("sprdiff", path=str(Path(sys.executable).parent))


def run(*args: str, default_model: bool = False) -> subprocess.CompletedProcess:
    """The console script; encode/decode use ``tiny`` unless ``--model`` is given or ``default_model``."""
    assert SPRDIFF, "the sprdiff console script is not installed in this environment (bash scripts/setup.sh)"
    if args[0] in ("encode", "decode") and "--model" not in args and not default_model:
        args = (*args, "--model", "tiny")
    return subprocess.run([SPRDIFF, *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def images(tmp_path_factory, sample_images) -> Path:
    d = tmp_path_factory.mktemp("imgs")
    Image.fromarray(sample_images["coffee"][:80, :120]).save(d / "coffee.png")
    Image.fromarray(sample_images["chelsea"][:64, :48]).convert("L").save(d / "gray.png")
    return d


def test_encode_info_decode(images, tmp_path, tiny_model):
    r = run("encode", str(images / "coffee.png"), str(images / "gray.png"), "-o", str(tmp_path / "enc"))
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "enc").iterdir()) == ["coffee.sprd", "gray.sprd"]
    assert "bpp" in r.stdout

    r = run("info", str(tmp_path / "enc" / "coffee.sprd"))
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    size = (tmp_path / "enc" / "coffee.sprd").stat().st_size
    assert (info["width"], info["height"], info["num_bytes"]) == (120, 80, size)
    assert info["bpp"] == 8 * size / (120 * 80)
    assert info["fingerprint_tag"] == tiny_model.fingerprint[:2]

    r = run("info", str(tmp_path / "enc" / "coffee.sprd"), "--model", "tiny")
    assert json.loads(r.stdout)["model_fingerprint"] == tiny_model.fingerprint

    r = run("decode", str(tmp_path / "enc" / "coffee.sprd"), str(tmp_path / "enc" / "gray.sprd"),
            "-o", str(tmp_path / "dec"))
    assert r.returncode == 0, r.stderr
    assert np.asarray(Image.open(tmp_path / "dec" / "coffee.png")).shape == (80, 120, 3)
    assert np.asarray(Image.open(tmp_path / "dec" / "gray.png")).shape == (64, 48, 3)
    # The CLI's bytes are the library's bytes.
    pixels = np.asarray(Image.open(images / "coffee.png").convert("RGB"))
    assert (tmp_path / "enc" / "coffee.sprd").read_bytes() == tiny_model.compress([pixels])[0]


def test_errors_are_one_line_and_non_zero(images, tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not an image")
    r = run("encode", str(tmp_path / "bad.png"), str(images / "coffee.png"), "-o", str(tmp_path / "enc"))
    assert r.returncode == 1
    assert [ln for ln in r.stderr.splitlines() if ln.startswith("sprdiff: error:")] == \
        [f"sprdiff: error: {tmp_path / 'bad.png'}: not an image: no decoder recognises the bytes"]
    assert (tmp_path / "enc" / "coffee.sprd").exists()  # the good input was still encoded

    rec = (tmp_path / "enc" / "coffee.sprd").read_bytes()
    (tmp_path / "cut.sprd").write_bytes(rec[:-5])
    r = run("decode", str(tmp_path / "cut.sprd"), "-o", str(tmp_path / "dec"))
    assert r.returncode == 1 and "truncated" in r.stderr

    r = run("decode", str(tmp_path / "missing.sprd"), "-o", str(tmp_path / "dec"))
    assert r.returncode == 1 and "missing.sprd" in r.stderr

    r = run("encode", str(images / "coffee.png"), "-o", str(tmp_path / "x"), "--model", "/no/such/model")
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0 and "not a preset" in r.stderr


def test_stem_collisions_are_refused_before_writing(images, tmp_path):
    other = tmp_path / "sub"
    other.mkdir()
    shutil.copy(images / "coffee.png", other / "coffee.png")
    r = run("encode", str(images / "coffee.png"), str(other / "coffee.png"), "-o", str(tmp_path / "enc"))
    assert r.returncode == 1 and "rename one" in r.stderr
    assert not (tmp_path / "enc").exists()


def test_the_default_model_is_the_shipped_demo(images, tmp_path):
    from sprdiff import SPRDiff

    r = run("encode", str(images / "coffee.png"), "-o", str(tmp_path / "enc"), default_model=True)
    assert r.returncode == 0, r.stderr
    r = run("info", str(tmp_path / "enc" / "coffee.sprd"), "--model", "demo")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["model_fingerprint"] == SPRDiff.from_pretrained("demo").fingerprint
    r = run("decode", str(tmp_path / "enc" / "coffee.sprd"), "-o", str(tmp_path / "dec"), default_model=True)
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "dec" / "coffee.png").size == (120, 80)


def test_tile_size_and_precision_reach_the_codec(tmp_path, sample_images, tiny_model):
    pixels = np.ascontiguousarray(sample_images["astronaut"][:320, :384])
    Image.fromarray(pixels).save(tmp_path / "big.png")
    r = run("encode", str(tmp_path / "big.png"), "-o", str(tmp_path / "enc"), "--tile-size", "128",
            "--precision", "fp32", "--no-colour-correction")
    assert r.returncode == 0, r.stderr
    record = (tmp_path / "enc" / "big.sprd").read_bytes()
    assert record == tiny_model.compress([pixels], colour_correction=False, tile_size=128)[0]
    r = run("decode", str(tmp_path / "enc" / "big.sprd"), "-o", str(tmp_path / "dec"), "--tile-size", "128")
    assert r.returncode == 0, r.stderr
    got = np.asarray(Image.open(tmp_path / "dec" / "big.png"))
    assert np.array_equal(got, tiny_model.decompress([record], tile_size=128)[0])
    r = run("encode", str(tmp_path / "big.png"), "-o", str(tmp_path / "bad"), "--tile-size", "100")
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0 and "multiple of 64" in r.stderr


def test_encode_at_a_rate_or_a_budget_and_info_lists_the_rates(images, tmp_path, rate_points_model_dir):
    model = str(rate_points_model_dir)
    coffee = str(images / "coffee.png")
    sizes = {}
    for rate in ("0", "2"):
        r = run("encode", coffee, "-o", str(tmp_path / rate), "--model", model, "--rate", rate)
        assert r.returncode == 0, r.stderr
        assert f", rate {rate}, " in r.stdout
        sizes[rate] = (tmp_path / rate / "coffee.sprd").stat().st_size
        assert json.loads(run("info", str(tmp_path / rate / "coffee.sprd")).stdout)["rate_id"] == int(rate)
    assert sizes["0"] < sizes["2"]
    info = json.loads(run("info", str(tmp_path / "2" / "coffee.sprd"), "--model", model).stdout)
    assert (info["model_rates"], info["model_default_rate"], info["verified"]) == ([0, 1, 2], 1, True)

    (tmp_path / "0" / "coffee.sprd").rename(tmp_path / "2" / "coffee-rate0.sprd")
    r = run("decode", str(tmp_path / "2" / "coffee-rate0.sprd"), str(tmp_path / "2" / "coffee.sprd"), "--model", model,
            "-o", str(tmp_path / "dec"))
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "dec").iterdir()) == ["coffee-rate0.png", "coffee.png"]

    budget = 8 * sizes["2"] / (120 * 80)  # rate 2's record fits exactly
    r = run("encode", coffee, "-o", str(tmp_path / "budget"), "--model", model, "--target-bpp", str(budget))
    assert r.returncode == 0 and ", rate 2, " in r.stdout and "warning" not in r.stdout, r.stdout + r.stderr
    r = run("encode", coffee, "-o", str(tmp_path / "tiny-budget"), "--model", model, "--target-bpp", "0.0001")
    assert r.returncode == 0 and ", rate 0, " in r.stdout and "warning: no rate fits 0.0001 bpp" in r.stdout


@pytest.mark.parametrize("flags, message", [
    (["--rate", "3"], "has no rate 3: it codes at rates 0, 1, 2"),
    (["--target-bpp", "-0.02"], "positive number of bits per pixel, got -0.02"),
    (["--target-bpp", "nan"], "positive number"),
])
def test_encode_refuses_a_rate_or_budget_before_reading_images(tmp_path, rate_points_model_dir, flags, message):
    r = run("encode", str(tmp_path / "missing.png"), "-o", str(tmp_path / "out"), "--model",
            str(rate_points_model_dir), *flags)
    assert r.returncode != 0
    assert message in r.stderr
    assert "missing.png" not in r.stderr  # refused before any image was read
