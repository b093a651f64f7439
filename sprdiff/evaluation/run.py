"""One evaluation: every image through our real byte format at each rate evaluated, the classical
baselines at the bytes of each of those records.

``evaluate`` returns rows (one per image and method, failures included) and a few crops for the
report; it writes nothing. The writers live in :mod:`sprdiff.evaluation.report`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from sprdiff.errors import SPRDiffError
from sprdiff.evaluation.baselines import CODECS, DEFAULT_BASELINES, DEFAULT_SCALES, encode_at_budget
from sprdiff.evaluation.fid import PatchFID
from sprdiff.evaluation.inputs import ImageSource
from sprdiff.evaluation.metrics import bits_per_pixel
from sprdiff.evaluation.suite import METRICS, MetricSuite
from sprdiff.images import DEFAULT_MAX_PIXELS, load_image
from sprdiff.rate_choice import check_rate, describe

OURS = "sprdiff"
COLUMNS = ["key", "source", "method", "rate_id", "status", "error", "width", "height", "num_bytes", "budget_bytes",
           "bpp", "scale", "quality", "coded_width", "coded_height", *METRICS, "encode_s", "decode_s", "notes"]


@dataclass(frozen=True)
class EvalOptions:
    baselines: tuple[str, ...] = DEFAULT_BASELINES
    scales: tuple[float, ...] = DEFAULT_SCALES  # downscale factors the baselines search
    max_pixels: int = DEFAULT_MAX_PIXELS
    crops: int = 4  # images shown side by side in report.html
    crop_size: int = 256
    rates: tuple[int, ...] = ()  # the model's rate ids to evaluate; empty: its default rate

    def __post_init__(self):
        unknown = [b for b in self.baselines if b not in CODECS]
        if unknown:
            raise ValueError(f"unknown baseline(s) {', '.join(unknown)}: choose from {', '.join(CODECS)}")
        if not self.scales or any(not 0 < s <= 1 for s in self.scales):
            raise ValueError(f"baseline scales must be in (0, 1], got {self.scales}")


@dataclass
class CropSet:
    """Centre crops of one image for the report: the original, then at each rate ours and the best
    baseline (by PSNR)."""

    key: str
    panels: list[tuple[str, np.ndarray]]  # (caption, (h, w, 3) uint8)


@dataclass
class EvalResult:
    rows: list[dict] = field(default_factory=list)
    crops: list[CropSet] = field(default_factory=list)
    skipped_baselines: dict[str, str] = field(default_factory=dict)  # codec -> reason
    rate_ids: tuple[int, ...] = ()  # the rates evaluated (rates_to_evaluate)
    fid: dict[tuple[int, str], dict] | None = None  # (rate id, method) -> FID/KID entry, None when not computed


def centre_crop(image: np.ndarray, size: int) -> np.ndarray:
    h, w = image.shape[:2]
    ch, cw = min(size, h), min(size, w)
    top, left = (h - ch) // 2, (w - cw) // 2
    return image[top:top + ch, left:left + cw].copy()


def _row(source: ImageSource, method: str, rate: int | None = None, **values) -> dict:
    """One row of per_image.csv; ``rate``: the rate id of our record it belongs to (None: no record made)."""
    row = dict.fromkeys(COLUMNS)
    row.update(key=source.key, source=source.uri, method=method, rate_id=rate, status="ok", error="")
    row.update(values)
    return row


def _caption(row: dict, with_rate: bool) -> str:
    psnr = row.get("psnr")
    psnr_text = "inf" if psnr == float("inf") else f"{psnr:.2f}"
    rate = f" (rate {row['rate_id']})" if with_rate else ""
    return f"{row['method']}{rate}: {row['num_bytes']} B, {row['bpp']:.4f} bpp, PSNR {psnr_text} dB"


def rates_to_evaluate(config, rates: Sequence[int]) -> tuple[int, ...]:
    """The rate ids an evaluation codes at: ``rates`` in order of id, or the model's default rate when
    empty. A rate the model lacks is refused (ValueError naming its rates) before any image is read."""
    if not rates:
        return (check_rate(config, None),)
    chosen = set()
    for rate in rates:
        try:
            chosen.add(check_rate(config, rate))
        except ValueError:  # check_rate's advice is for encoding; say what eval offers instead
            raise ValueError(f"cannot evaluate rate {rate!r}: model {config.model_id!r} codes at {describe(config)} "
                             f"(--rates all evaluates each of them)") from None
    return tuple(sorted(chosen))


def evaluate(model, sources: list[ImageSource], suite: MetricSuite, options: EvalOptions | None = None,
             fid: PatchFID | None = None, log: Callable[[str], None] | None = None) -> EvalResult:
    """Encode/decode each image with ``model`` (``compress``/``decompress``) at each rate of
    ``options.rates``, run the baselines at each record's bytes, measure."""
    options = options or EvalOptions()
    result = EvalResult(rate_ids=rates_to_evaluate(model.config, options.rates))
    codecs = []
    for name in options.baselines:
        reason = CODECS[name].available()
        if reason:
            result.skipped_baselines[name] = reason
        else:
            codecs.append(CODECS[name])
    several = len(result.rate_ids) > 1
    for index, source in enumerate(sources, 1):
        prefix = f"[{index}/{len(sources)}] {source.key}"
        try:
            pixels = load_image(source.read(), max_pixels=options.max_pixels)
        except SPRDiffError as e:
            result.rows.append(_row(source, OURS, status=e.status, error=str(e)))
            _say(log, f"{prefix}: skipped ({e.status}): {e}")
            continue
        except OSError as e:
            result.rows.append(_row(source, OURS, status="read_error", error=f"{type(e).__name__}: {e}"))
            _say(log, f"{prefix}: skipped (read_error): {e}")
            continue
        if fid is not None:
            fid.add_reference(source.key, pixels)
        height, width = pixels.shape[:2]
        panels = [(f"original: {width}x{height}", centre_crop(pixels, options.crop_size))]
        for rate in result.rate_ids:
            panels += _evaluate_at_rate(model, rate, source, pixels, codecs, suite, options, fid, result,
                                        prefix=f"{prefix} rate {rate}" if several else prefix, log=log)
        if len(panels) > 1 and len(result.crops) < options.crops:
            result.crops.append(CropSet(source.key, panels))
    if fid is not None:
        result.fid = fid.results()
    return result


def _evaluate_at_rate(model, rate: int, source: ImageSource, pixels: np.ndarray, codecs: list, suite: MetricSuite,
                      options: EvalOptions, fid: PatchFID | None, result: EvalResult, *, prefix: str,
                      log: Callable[[str], None] | None) -> list[tuple[str, np.ndarray]]:
    """Our record of one image at ``rate`` and the baselines at its bytes: appends their rows to
    ``result`` and returns the crop panels (ours, the best baseline) for the report."""
    several = len(result.rate_ids) > 1
    height, width = pixels.shape[:2]
    try:
        start = time.perf_counter()
        [record] = model.compress([pixels], rate=rate)
        encode_s = time.perf_counter() - start
        start = time.perf_counter()
        [recon] = model.decompress([record])
        decode_s = time.perf_counter() - start
    except SPRDiffError as e:
        result.rows.append(_row(source, OURS, rate, status=f"codec_{e.status}", error=str(e), width=width,
                                height=height))
        _say(log, f"{prefix}: codec failed ({e.status}): {e}")
        return []
    if recon.shape != pixels.shape:
        raise RuntimeError(f"{source.key}: decoded {recon.shape}, expected {pixels.shape}: a codec bug")
    budget = len(record)
    values, notes = suite.measure(pixels, recon)
    ours = _row(source, OURS, rate, width=width, height=height, num_bytes=budget, budget_bytes=budget,
                bpp=bits_per_pixel(budget, width, height), scale=1.0, coded_width=width, coded_height=height,
                encode_s=encode_s, decode_s=decode_s, notes="; ".join(notes), **values)
    result.rows.append(ours)
    if fid is not None:
        fid.add((rate, OURS), source.key, recon)
    parts = [f"{OURS} {budget} B {ours['bpp']:.4f} bpp PSNR {ours['psnr']:.2f}"]
    best_baseline: tuple[dict, np.ndarray] | None = None
    for codec in codecs:
        found = encode_at_budget(pixels, codec, budget, options.scales)
        if found.status != "ok":
            result.rows.append(_row(source, codec.name, rate, status=found.status, error=found.message,
                                    width=width, height=height, budget_bytes=budget))
            parts.append(f"{codec.name} cannot meet budget")
            continue
        values, notes = suite.measure(pixels, found.reconstruction)
        row = _row(source, codec.name, rate, width=width, height=height, num_bytes=found.num_bytes,
                   budget_bytes=budget, bpp=bits_per_pixel(found.num_bytes, width, height), scale=found.scale,
                   quality=found.quality, coded_width=found.coded_size[0], coded_height=found.coded_size[1],
                   notes="; ".join(notes), **values)
        result.rows.append(row)
        parts.append(f"{codec.name} {found.num_bytes} B PSNR {row['psnr']:.2f}")
        if fid is not None:
            fid.add((rate, codec.name), source.key, found.reconstruction)
        if best_baseline is None or row["psnr"] > best_baseline[0]["psnr"]:
            best_baseline = (row, found.reconstruction)
    _say(log, f"{prefix}: " + " | ".join(parts))
    panels = [(_caption(ours, several), centre_crop(recon, options.crop_size))]
    if best_baseline is not None:
        panels.append((f"best baseline by PSNR, {_caption(best_baseline[0], several)}",
                       centre_crop(best_baseline[1], options.crop_size)))
    return panels


def _say(log: Callable[[str], None] | None, line: str) -> None:
    if log is not None:
        log(line)
