"""``sprdiff eval --rate`` / ``--rates``: one rate point of a model, or several as RD curves with BD-rates."""

from __future__ import annotations

import csv
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image
from test_eval_command import run_cli, strict_json  # tests/evaluation is on sys.path (pytest's rootdir import)

from sprdiff.evaluation.bd_rate import bd_rate

RATES = (0, 1, 2)
GAINS = (0.5, 1.0, 2.0)  # rate 0 codes the latent at half its scale: fewer bytes; rate 2 at twice


@pytest.fixture(scope="module")
def rates_model_dir(tmp_path_factory) -> Path:
    """tiny with three rate points, saved so the command loads it by path like any model."""
    import sprdiff.rates
    from sprdiff import SPRDiff

    model = SPRDiff.from_pretrained("tiny")
    sprdiff.rates.add_rate_points(model, GAINS, default_rate=1)
    path = tmp_path_factory.mktemp("tiny-rates")
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def two_images(small_images, tmp_path_factory) -> Path:
    """One image large enough for MS-SSIM (192x192) and one small one (96x96), to keep the run short."""
    from sprdiff.images import encode_png

    root = tmp_path_factory.mktemp("two-images")
    (root / "astronaut.png").write_bytes(encode_png(small_images["astronaut.png"]))
    (root / "chelsea.png").write_bytes(encode_png(small_images["chelsea.png"][16:112, 16:112].copy()))
    return root


@pytest.fixture(scope="module")
def curves_run(rates_model_dir, two_images, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval-rates")
    status, stdout, stderr = run_cli(["eval", "--model", str(rates_model_dir), "--device", "cpu",
                                      "--input", str(two_images), "--output", str(out), "--rates", "0,1,2",
                                      "--baselines", "webp", "--scales", "1,1/2"])
    with open(out / "per_image.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return {"out": out, "status": status, "stdout": stdout, "stderr": stderr, "rows": rows,
            "summary": strict_json(out / "summary.json")}


def test_each_rate_codes_its_own_records_and_baselines_match_their_bytes(curves_run):
    assert curves_run["status"] == 0, curves_run["stderr"]
    rows = curves_run["rows"]
    assert sorted((r["key"], r["rate_id"], r["method"]) for r in rows) == sorted(
        (key, str(rate), method) for key in ("astronaut.png", "chelsea.png") for rate in RATES
        for method in ("sprdiff", "webp"))
    ours = {(r["key"], int(r["rate_id"])): int(r["num_bytes"]) for r in rows if r["method"] == "sprdiff"}
    # the gains make the rates differ in bytes: a run that ignored --rates would code one size three times
    assert ours[("astronaut.png", 0)] < ours[("astronaut.png", 1)] < ours[("astronaut.png", 2)]
    for row in (r for r in rows if r["method"] == "webp"):
        assert int(row["budget_bytes"]) == ours[(row["key"], int(row["rate_id"]))]
        if row["status"] == "ok":
            assert int(row["num_bytes"]) <= int(row["budget_bytes"])


def test_summary_has_a_section_per_rate_and_the_curves_built_from_them(curves_run):
    summary = curves_run["summary"]
    assert summary["rate_ids"] == list(RATES) and "methods" not in summary
    assert summary["model"]["model_rates"] == list(RATES) and summary["model"]["model_default_rate"] == 1
    assert "rate_id" not in summary["model"]  # several rates were evaluated: no single one to name
    assert summary["n_images"] == summary["n_evaluated"] == 2 and summary["n_failed"] == 0
    assert sorted(summary["rates"]) == ["0", "1", "2"]
    for rate in RATES:
        section = summary["rates"][str(rate)]
        rows = [r for r in curves_run["rows"] if r["rate_id"] == str(rate) and r["method"] == "sprdiff"]
        ours = section["methods"]["sprdiff"]
        assert section["n_evaluated"] == ours["n_ok"] == 2
        assert ours["bpp_mean"] == pytest.approx(sum(float(r["bpp"]) for r in rows) / 2, rel=1e-12)
        assert ours["metrics"]["ms_ssim"]["n"] == 1  # the 96 px image has none
        [point] = [p for p in summary["curves"]["sprdiff"] if p["rate_id"] == rate]
        assert point == {"rate_id": rate, **ours["rd_point"]}
    curve = summary["reference_points"]["curve"]
    assert [(p["bpp"], p["psnr"], p["ms_ssim"]) for p in curve] == [
        (0.014, 21.98, 0.752), (0.020, 22.60, 0.787), (0.028, 22.98, 0.806)]


def test_bd_rate_of_ours_against_each_baseline_or_the_reason_there_is_none(curves_run):
    summary = curves_run["summary"]
    assert set(summary["bd_rate"]) == {"webp"} and set(summary["bd_rate"]["webp"]) == {"psnr", "ms_ssim"}
    # the numbers are those of the per-rate points the summary shows (like for like: ours on the same images)
    webp = [summary["rates"][str(r)]["methods"]["webp"] for r in RATES]
    webp = [entry for entry in webp if entry["n_ok"]]
    for metric in ("psnr", "ms_ssim"):
        expected = bd_rate([_point(e["rd_point"], metric) for e in webp],
                           [_point(e["ours_on_same_images"], metric) for e in webp], anchor_name="webp",
                           test_name="sprdiff")
        value = summary["bd_rate"]["webp"][metric]
        if expected.percent is None:
            assert value is None and summary["bd_rate_reasons"]["webp"][metric] == expected.reason
        else:
            assert value == pytest.approx(expected.percent, rel=1e-12)
            assert metric not in summary["bd_rate_reasons"].get("webp", {})
    assert "BD-rate of sprdiff against webp" in curves_run["stdout"]
    assert "Bjøntegaard" in summary["protocol"]["bd_rate"]


def _point(rd_point: dict, metric: str) -> tuple[float, float]:
    quality = rd_point[metric]  # NaN is null in the JSON
    return rd_point["bpp"], float("nan") if quality is None else quality


def test_plot_and_report_show_the_curves_and_the_papers_rate_points(curves_run):
    with Image.open(curves_run["out"] / "rd.png") as img:
        assert img.format == "PNG" and img.width > 400

    class Collect(HTMLParser):
        def __init__(self):
            super().__init__()
            self.images, self.text = 0, []

        def handle_starttag(self, tag, attrs):
            self.images += tag == "img"

        def handle_data(self, data):
            self.text.append(data)

    page_html = (curves_run["out"] / "report.html").read_text(encoding="utf-8")
    page = Collect()
    page.feed(page_html)
    text = " ".join(page.text)
    assert "<th>rate</th>" in page_html and "BD-rate of ours against each baseline" in text
    assert "the paper's three rate points" in text
    with_baseline = {(r["key"], r["rate_id"]) for r in curves_run["rows"]
                     if r["method"] == "webp" and r["status"] == "ok"}
    # the plot + per image its original, and ours at each rate + the baseline where it met the budget
    assert page.images == 1 + 2 * (1 + len(RATES)) + len(with_baseline)


def test_compare_takes_each_rate_of_a_run_as_a_point(curves_run, tmp_path):
    status, stdout, _ = run_cli(["eval", "--compare", str(curves_run["out"]), "--output", str(tmp_path)])
    assert status == 0
    combined = json.loads((tmp_path / "compare.json").read_text())
    assert sorted(r["rate_id"] for r in combined["runs"]) == list(RATES)
    bpps = [r["points"]["sprdiff"]["bpp"] for r in combined["runs"]]
    assert bpps == sorted(bpps)


def test_one_rate_of_a_model_with_several_is_a_one_rate_report(rates_model_dir, two_images, curves_run, tmp_path):
    status, _, stderr = run_cli(["eval", "--model", str(rates_model_dir), "--device", "cpu", "--input",
                                 str(two_images), "--output", str(tmp_path), "--rate", "2", "--baselines", "none"])
    assert status == 0, stderr
    summary = strict_json(tmp_path / "summary.json")
    assert summary["model"]["rate_id"] == 2 and summary["model"]["model_default_rate"] == 1
    assert "methods" in summary and "rates" not in summary and "bd_rate" not in summary
    with open(tmp_path / "per_image.csv", newline="", encoding="utf-8") as f:
        rows = {r["key"]: r for r in csv.DictReader(f)}
    # the same records as the rate-2 ones of the run over all rates: the rate is the one asked for
    for row in curves_run["rows"]:
        if row["method"] == "sprdiff" and row["rate_id"] == "2":
            assert rows[row["key"]]["rate_id"] == "2" and rows[row["key"]]["num_bytes"] == row["num_bytes"]


def test_a_rate_the_model_lacks_is_refused_before_any_image_is_read(rates_model_dir, two_images, tmp_path):
    out = tmp_path / "o"
    status, stdout, err = run_cli(["eval", "--model", str(rates_model_dir), "--device", "cpu", "--input",
                                   str(two_images), "--output", str(out), "--rates", "0,5"])
    assert status == 1 and "rate 5" in err and "rates 0, 1, 2" in err
    assert "[1/" not in stdout and not out.exists()
    status, stdout, err = run_cli(["eval", "--model", "tiny", "--device", "cpu", "--input", str(two_images),
                                   "--output", str(out), "--rate", "1"])
    assert status == 1 and "rate 1" in err and "codes at rate 0" in err
    assert "[1/" not in stdout and not out.exists()


def test_rate_and_rates_are_one_choice(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run_cli(["eval", "--model", "tiny", "--input", str(tmp_path), "--output", str(tmp_path / "o"),
                 "--rate", "0", "--rates", "0,1"])
    with pytest.raises(SystemExit):
        run_cli(["eval", "--model", "tiny", "--input", str(tmp_path), "--output", str(tmp_path / "o"),
                 "--rates", "low"])
