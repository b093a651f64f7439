"""Everything ``sprdiff eval`` does, as one function: inputs -> evaluation -> the four output files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sprdiff import bitstream
from sprdiff.evaluation.fid import InceptionFeatures, PatchFID
from sprdiff.evaluation.inputs import list_images
from sprdiff.evaluation.report import write_outputs
from sprdiff.evaluation.run import EvalOptions, evaluate, rates_to_evaluate
from sprdiff.evaluation.suite import MetricSuite
from sprdiff.evaluation.summary import summarise

FID_SKIPPED = ("skipped: no --fid-weights given (FID/KID need torch-fidelity's Inception-v3 weights, "
               "weights-inception-2015-12-05-6726825d.pth, from a local file; nothing is downloaded)")


def model_info(model, name: str, rates: tuple[int, ...]) -> dict:
    """The model evaluated at ``rates``. With one rate, ``rate_id`` is the rate of every record of the
    run (with several, the summary's ``rate_ids`` lists them); ``model_rates`` and ``model_default_rate``
    are what the model has."""
    info = {"name": name, "model_id": model.model_id, "fingerprint": model.fingerprint}
    if len(rates) == 1:
        info["rate_id"] = rates[0]
    return {**info, "timestep": model.config.timestep, "format_version": bitstream.FORMAT_VERSION,
            "model_rates": list(model.rate_ids), "model_default_rate": model.config.rate_id}


def run_evaluation(model, *, model_name: str, input_uri: str, output_dir: str | Path,
                   options: EvalOptions | None = None, lpips_weights: str | None = None,
                   dists_weights: str | None = None, fid_weights: str | None = None, patch: int = 256,
                   limit: int | None = None, device: str = "cpu",
                   log: Callable[[str], None] | None = None) -> tuple[dict, dict[str, Path]]:
    """Evaluate ``model`` on the images at ``input_uri`` and write the report files to ``output_dir``.

    Rates the model lacks are refused and weights files are loaded before any image is touched, so a
    wrong rate or path fails in seconds. Returns the summary dict and the paths written.
    """
    options = options or EvalOptions()
    rates = rates_to_evaluate(model.config, options.rates)
    say = log or (lambda _line: None)
    sources = list_images(input_uri, limit=limit)
    suite = MetricSuite.from_paths(lpips_weights, dists_weights, device=device)
    for name, reason in suite.skipped.items():
        say(f"{name.upper()}: {reason}")
    fid = None
    if fid_weights:
        fid = PatchFID(InceptionFeatures(fid_weights, device=device), patch)
        fid_status = {"status": "computed", "patch": patch, "weights": str(fid_weights),
                      "protocol": "non-overlapping patch grid + the grid shifted by patch/2 (HiFiC)"}
    else:
        fid_status = {"status": "skipped", "reason": FID_SKIPPED, "patch": patch}
        say(f"FID/KID: {FID_SKIPPED}")
    at_rates = f" at rates {', '.join(map(str, rates))}" if len(rates) > 1 else ""
    say(f"evaluating {len(sources)} image(s) from {input_uri}{at_rates}")
    result = evaluate(model, sources, suite, options, fid=fid, log=say)
    for name, reason in result.skipped_baselines.items():
        say(f"baseline {name}: skipped: {reason}")
    summary = summarise(result, model_info=model_info(model, model_name, rates), input_uri=input_uri,
                        metric_status=suite.status(), fid_status=fid_status,
                        baseline_info={"requested": list(options.baselines), "scales": list(options.scales),
                                       "selection": "best PSNR among settings within our record's bytes"})
    paths = write_outputs(result, summary, output_dir)
    return summary, paths
