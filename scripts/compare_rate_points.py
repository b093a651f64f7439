"""One model with rate points against separate one-rate models, at equal bytes, on a validation split.

    compare_rate_points.py --validation SHARDS --joint MODEL --separate [R=]M ... [--output F.json]

Every photo of the validation shards is coded whole (default settings: side channels on) by the
joint model at each of its rates and by separate model r at its one rate; bpp comes from the bytes
written, PSNR and MS-SSIM from the decoded pixels. The joint model's curve (mean PSNR and MS-SSIM
against mean bpp, piecewise linear in log bpp, extended linearly past its ends) is read at each
separate model's bpp: the difference is what sharing one model costs at that rate (positive: the
separate model is better). The issue's rule: separate models ship if that exceeds 0.2 dB.

The same difference is also taken photo by photo (each photo's own joint curve read at that photo's
bpp under the separate model) and printed as a mean with its standard error over the photos, so a
gap can be told from the spread between photos.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from pipeline.training.data import list_shards, read_samples, sample_pixels
from pipeline.training.validation import validate
from sprdiff import SPRDiff


def validation_photos(uri: str) -> list[np.ndarray]:
    photos = [sample_pixels(sample) for sample in read_samples(list_shards(uri))]
    return [p for p in photos if p is not None]


SCORES = ("bpp", "psnr", "ms_ssim")


def photo_scores(model: SPRDiff, photos: list[np.ndarray], rate: int | None) -> list[dict[str, float]]:
    """Each photo's bpp, PSNR and MS-SSIM from its real record: what training's validation measures."""
    return [{name: value for name, value in validate(model, [photo], rate).items() if name in SCORES}
            for photo in photos]


def mean_scores(per_photo: list[dict[str, float]]) -> dict[str, float]:
    return {name: float(np.mean([s[name] for s in per_photo])) for name in SCORES}


def read_curve(curve: list[dict], bpp: float, metric: str) -> float:
    """The curve's ``metric`` at ``bpp``: linear in log bpp between its points, extended past its ends."""
    points = sorted(curve, key=lambda s: s["bpp"])
    x = np.log([p["bpp"] for p in points])
    y = np.array([p[metric] for p in points])
    i = int(np.clip(np.searchsorted(x, np.log(bpp)) - 1, 0, len(x) - 2))
    return float(y[i] + (y[i + 1] - y[i]) * (np.log(bpp) - x[i]) / (x[i + 1] - x[i]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--validation", required=True)
    parser.add_argument("--joint", required=True)
    parser.add_argument("--separate", nargs="+", required=True,
                        help="one model per rate id, in order; or RATE=MODEL for some of the rates")
    parser.add_argument("--output")
    args = parser.parse_args()
    photos = validation_photos(args.validation)
    joint = SPRDiff.from_pretrained(args.joint)
    if all("=" in s for s in args.separate):
        separate = {int(s.split("=", 1)[0]): s.split("=", 1)[1] for s in args.separate}
    elif len(args.separate) == len(joint.rate_ids):
        separate = dict(zip(joint.rate_ids, args.separate))
    else:
        parser.error(f"the joint model has {len(joint.rate_ids)} rates: give as many models, or RATE=MODEL pairs")
    if not set(separate) <= set(joint.rate_ids):
        parser.error(f"the joint model's rates are {joint.rate_ids}, got {sorted(separate)}")
    joint_photos = {r: photo_scores(joint, photos, r) for r in joint.rate_ids}  # each photo coded once per rate
    curve = [{"rate": r, **mean_scores(joint_photos[r])} for r in joint.rate_ids]
    rows = []
    for rate, path in sorted(separate.items()):
        per_photo = photo_scores(SPRDiff.from_pretrained(path), photos, None)
        own = mean_scores(per_photo)
        # each photo's own joint curve read at its bpp under the separate model
        gaps = [mine["psnr"] - read_curve([joint_photos[r][i] for r in joint.rate_ids], mine["bpp"], "psnr")
                for i, mine in enumerate(per_photo)]
        stderr = float(np.std(gaps, ddof=1) / np.sqrt(len(gaps))) if len(gaps) > 1 else None
        rows.append({"rate": rate, "model": path, **own,
                     "psnr_gain_db": own["psnr"] - read_curve(curve, own["bpp"], "psnr"),
                     "ms_ssim_gain": own["ms_ssim"] - read_curve(curve, own["bpp"], "ms_ssim"),
                     "per_photo_gain_db": gaps, "per_photo_mean_db": float(np.mean(gaps)),
                     "per_photo_stderr_db": stderr})
    print(f"{len(photos)} validation photos, whole")
    print(f"{'':<12}{'rate':>5}{'bpp':>9}{'PSNR':>8}{'MS-SSIM':>9}{'Δ PSNR at equal bytes':>24}")
    for point in curve:
        print(f"{'joint':<12}{point['rate']:>5}{point['bpp']:>9.4f}{point['psnr']:>8.2f}{point['ms_ssim']:>9.3f}")
    for row in rows:
        print(f"{'separate':<12}{row['rate']:>5}{row['bpp']:>9.4f}{row['psnr']:>8.2f}{row['ms_ssim']:>9.3f}"
              f"{row['psnr_gain_db']:>+22.2f} dB")
    for row in rows:
        spread = "" if row["per_photo_stderr_db"] is None else f" ± {row['per_photo_stderr_db']:.2f} (standard error)"
        print(f"rate {row['rate']}: photo by photo {row['per_photo_mean_db']:+.2f} dB{spread}; per photo "
              + ", ".join(f"{g:+.2f}" for g in row["per_photo_gain_db"]))
    worst = max(row["psnr_gain_db"] for row in rows)
    verdict = "separate models" if worst > 0.2 else "one shared model"
    print(f"largest loss of the shared model: {worst:+.2f} dB -> {verdict} (rule: separate above 0.2 dB)")
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"photos": len(photos), "joint": curve, "separate": rows, "largest_loss_db": worst,
                       "verdict": verdict}, f, indent=1)


if __name__ == "__main__":
    main()
