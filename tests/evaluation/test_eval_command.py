"""``sprdiff eval`` end to end on the tiny model: the real byte format, matched-bytes baselines, report files."""

from __future__ import annotations

import base64
import contextlib
import csv
import io
import json
import math
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio

from jobs.cli import main
from sprdiff.evaluation import metrics

BASELINES = ("webp", "avif", "jpeg")


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    return status, out.getvalue(), err.getvalue()


def strict_json(path: Path) -> dict:
    def refuse(name):
        raise ValueError(f"{path} holds {name}, which is not JSON")

    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def run(image_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval-run")
    status, stdout, stderr = run_cli(["eval", "--model", "tiny", "--device", "cpu", "--input", str(image_dir),
                                      "--output", str(out), "--baselines", ",".join(BASELINES),
                                      "--scales", "1,1/2,1/4"])
    return {"out": out, "status": status, "stdout": stdout, "stderr": stderr,
            "rows": read_rows(out / "per_image.csv"), "summary": strict_json(out / "summary.json")}


def test_every_input_gets_rows_and_bad_files_are_reported(run):
    assert run["status"] == 0, run["stderr"]
    rows = run["rows"]
    keys = sorted({r["key"] for r in rows})
    assert keys == ["astronaut.png", "broken.png", "chelsea.png", "coffee.png"]  # README.md is not an image
    [broken] = [r for r in rows if r["key"] == "broken.png"]
    assert broken["method"] == "sprdiff" and broken["status"] == "not_image" and broken["error"]
    assert run["summary"]["n_failed"] == 1 and run["summary"]["failures"][0]["key"] == "broken.png"
    assert "broken.png" in run["stderr"] or "1 of 4" in run["stderr"]
    for key in ("astronaut.png", "chelsea.png", "coffee.png"):
        assert sorted(r["method"] for r in rows if r["key"] == key) == sorted(("sprdiff", *BASELINES))


def test_bpp_is_from_the_real_record_bytes(run, small_images, tiny_model):
    for row in (r for r in run["rows"] if r["method"] == "sprdiff" and r["status"] == "ok"):
        pixels = small_images[row["key"]]
        [record] = tiny_model.compress([pixels])
        assert int(row["num_bytes"]) == len(record)
        assert (int(row["width"]), int(row["height"])) == (pixels.shape[1], pixels.shape[0])
        assert float(row["bpp"]) == 8 * len(record) / (pixels.shape[0] * pixels.shape[1])
        # the quality columns are of the decoded record
        [decoded] = tiny_model.decompress([record])
        assert float(row["psnr"]) == pytest.approx(peak_signal_noise_ratio(pixels, decoded, data_range=255), abs=1e-9)
        if min(pixels.shape[:2]) >= 161:
            assert float(row["ms_ssim"]) == pytest.approx(metrics.ms_ssim(pixels, decoded), abs=1e-12)


def test_baselines_never_exceed_our_bytes(run):
    ours = {r["key"]: int(r["num_bytes"]) for r in run["rows"] if r["method"] == "sprdiff" and r["status"] == "ok"}
    baseline_rows = [r for r in run["rows"] if r["method"] in BASELINES]
    assert len(baseline_rows) == 3 * len(BASELINES)
    assert any(r["status"] == "ok" for r in baseline_rows)  # WebP's small container fits the tiny records
    for row in baseline_rows:
        assert int(row["budget_bytes"]) == ours[row["key"]]
        assert row["status"] in ("ok", "cannot_meet_budget")
        if row["status"] == "ok":
            assert int(row["num_bytes"]) <= ours[row["key"]]
            assert float(row["bpp"]) == 8 * int(row["num_bytes"]) / (int(row["width"]) * int(row["height"]))
            assert float(row["scale"]) in (1.0, 0.5, 0.25)


def test_small_image_has_no_ms_ssim_and_says_why(run):
    [row] = [r for r in run["rows"] if r["key"] == "chelsea.png" and r["method"] == "sprdiff"]
    assert row["ms_ssim"] == "" and "161" in row["notes"]
    assert run["summary"]["methods"]["sprdiff"]["metrics"]["ms_ssim"]["n_nan"] == 1


def test_metrics_without_weights_are_skipped_not_faked(run):
    summary = run["summary"]
    for name, flag in (("lpips", "--lpips-weights"), ("dists", "--dists-weights")):
        assert summary["metrics"][name]["status"] == "skipped"
        assert flag in summary["metrics"][name]["reason"]
        assert name not in summary["methods"]["sprdiff"]["metrics"]
        assert f"{name.upper()}: skipped" in run["stdout"]
        assert all(r[name] == "" for r in run["rows"])
    assert summary["fid"]["status"] == "skipped" and "--fid-weights" in summary["fid"]["reason"]
    assert "FID/KID: skipped" in run["stdout"]
    assert summary["metrics"]["haarpsi"]["status"] == "computed"  # a perceptual score without weights


def test_summary_means_and_pairs_match_the_csv(run):
    summary = run["summary"]
    for method in ("sprdiff", *BASELINES):
        ok = [r for r in run["rows"] if r["method"] == method and r["status"] == "ok"]
        entry = summary["methods"][method]
        assert entry["n_ok"] == len(ok)
        if not ok:  # e.g. no JPEG file is as small as a tiny record: nothing to average, and no number made up
            assert entry["bpp_mean"] is None and entry["metrics"] == {} and entry["pairs"] == []
            assert entry["statuses"] == {"cannot_meet_budget": 3}
            continue
        assert entry["bpp_mean"] == pytest.approx(np.mean([float(r["bpp"]) for r in ok]), rel=1e-12)
        assert entry["num_bytes_total"] == sum(int(r["num_bytes"]) for r in ok)
        assert entry["metrics"]["psnr"]["mean"] == pytest.approx(np.mean([float(r["psnr"]) for r in ok]), rel=1e-12)
        assert [p["key"] for p in entry["pairs"]] == [r["key"] for r in ok]
        assert entry["rd_point"]["bpp"] == entry["bpp_mean"]
    assert summary["model"]["model_id"] == "sprdiff-tiny"
    assert summary["reference_points"]["points"]["SPRDiff (paper)"]["bpp"] == 0.0285


def test_one_rate_keeps_the_one_rate_summary(run):
    summary = run["summary"]
    assert summary["model"]["rate_id"] == 0 and summary["model"]["model_rates"] == [0]
    assert "methods" in summary and not {"rates", "rate_ids", "curves", "bd_rate"} & set(summary)
    assert {r["rate_id"] for r in run["rows"] if r["key"] != "broken.png"} == {"0"}
    assert [r["rate_id"] for r in run["rows"] if r["key"] == "broken.png"] == [""]  # never coded: no rate


def test_plot_and_html_are_well_formed(run):
    with Image.open(run["out"] / "rd.png") as img:
        assert img.format == "PNG" and img.width > 400 and img.height > 200

    class Collect(HTMLParser):
        def __init__(self):
            super().__init__()
            self.images, self.text = [], []

        def handle_starttag(self, tag, attrs):
            if tag == "img":
                self.images.append(dict(attrs)["src"])

        def handle_data(self, data):
            self.text.append(data)

    page = Collect()
    page.feed((run["out"] / "report.html").read_text(encoding="utf-8"))
    page.close()
    with_baseline = {r["key"] for r in run["rows"] if r["method"] in BASELINES and r["status"] == "ok"}
    # the plot + original and ours for each evaluated image + the best baseline where one met the budget
    assert len(page.images) == 1 + 3 * 2 + len(with_baseline)
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as img:
            img.verify()
    text = " ".join(page.text)
    assert "skipped" in text and "broken.png" in text and "best baseline" in text


def test_compare_combines_runs_into_one_plot(run, tmp_path):
    second = tmp_path / "second"
    second.mkdir()
    summary = json.loads((run["out"] / "summary.json").read_text())
    summary["model"]["rate_id"] = 1
    summary["methods"]["sprdiff"]["rd_point"]["bpp"] *= 2
    (second / "summary.json").write_text(json.dumps(summary))
    status, stdout, _ = run_cli(["eval", "--compare", str(run["out"]), str(second), "--output", str(tmp_path / "c")])
    assert status == 0
    combined = strict_json(tmp_path / "c" / "compare.json")
    assert [r["rate_id"] for r in combined["runs"]] == [0, 1]  # ordered by our bpp
    assert combined["same_input"] is True
    with Image.open(tmp_path / "c" / "rd.png") as img:
        assert img.format == "PNG"
    assert str(second) in stdout


def test_compare_refuses_a_directory_without_a_summary(tmp_path):
    status, _, err = run_cli(["eval", "--compare", str(tmp_path), "--output", str(tmp_path / "c")])
    assert status == 1 and "summary.json" in err


def test_learned_metrics_and_fid_with_local_weights(image_dir, tmp_path, random_lpips_weights, random_dists_weights,
                                                    random_inception_weights):
    out = tmp_path / "weighted"
    status, stdout, stderr = run_cli([
        "eval", "--model", "tiny", "--device", "cpu", "--input", str(image_dir / "chel*.png"), "--output", str(out),
        "--baselines", "webp", "--scales", "1,1/2,1/8", "--lpips-weights", str(random_lpips_weights),
        "--dists-weights", str(random_dists_weights), "--fid-weights", str(random_inception_weights),
        "--patch", "64"])
    assert status == 0, stderr
    summary = strict_json(out / "summary.json")
    assert summary["metrics"]["lpips"]["status"] == summary["metrics"]["dists"]["status"] == "computed"
    assert summary["fid"]["status"] == "computed" and summary["fid"]["patch"] == 64
    for method in ("sprdiff", "webp"):
        entry = summary["methods"][method]
        if method == "webp" and not entry["n_ok"]:
            assert "fid" not in entry  # no reconstruction, no patches
            continue
        assert entry["metrics"]["lpips"]["n"] == entry["metrics"]["dists"]["n"] == 1
        assert entry["fid"]["n_patches"] == 5 and entry["fid"]["fid"] is not None
    rows = [r for r in read_rows(out / "per_image.csv") if r["status"] == "ok"]
    assert rows[0]["method"] == "sprdiff"
    assert all(math.isfinite(float(r["lpips"])) and math.isfinite(float(r["dists"])) for r in rows)
    assert "skipped" not in stdout


def test_bad_weights_fail_before_any_image_is_encoded(image_dir, tmp_path):
    status, stdout, err = run_cli(["eval", "--model", "tiny", "--device", "cpu", "--input", str(image_dir),
                                   "--output", str(tmp_path / "o"), "--lpips-weights", str(tmp_path / "none.pth")])
    assert status == 1 and "not found" in err
    assert "[1/" not in stdout and not (tmp_path / "o").exists()


def test_limit_and_missing_input(image_dir, tmp_path):
    status, _, err = run_cli(["eval", "--model", "tiny", "--output", str(tmp_path / "o")])
    assert status == 2 and "--input" in err
    status, _, err = run_cli(["eval", "--model", "tiny", "--input", str(tmp_path / "nothing"),
                              "--output", str(tmp_path / "o")])
    assert status == 1 and "no images" in err
    shutil.rmtree(tmp_path / "o", ignore_errors=True)
