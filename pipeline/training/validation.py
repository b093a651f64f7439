"""Validation during training: real bytes and decoded pixels of a fixed image set, and the best
checkpoint by one score.

Every ``validation.every`` steps (and at the last step) rank 0 encodes the first
``validation.max_images`` samples of the validation shards, centre-cropped to ``validation.crop``,
with the model's own ``compress`` (default settings: colour-correction side information on, the
precision ``sprdiff encode`` picks for the device), decodes them with ``decompress`` and scores
what a user would get:

    bpp        mean over images of 8·len(record)/(H·W)      (bpp_total: 8·Σbytes/Σpixels)
    psnr       mean over images of PSNR on 8-bit RGB         (sprdiff.evaluation.metrics)
    ms_ssim    mean over images of MS-SSIM                   (NaN, written null, below 161 px)
    mse        mean over images of the 8-bit MSE on [0, 1] values
    rd_cost    weights.mse_x_hat·mse + λ_b·bpp               (stages 1-2)

A model trained at several rate points (``rate_points``) is validated at each: ``<score>_rate<r>``
per rate (``rd_cost_rate<r>`` at that rate's λ_b), and the plain names the mean over the rates.

``rd_cost`` is the rate-distortion part of the training loss (``w·‖x̂ − x‖² + λ_b·R``) measured
on real bytes and rounded pixels; the perceptual, coarse-image and adversarial terms are left out.
Stage 0 has no λ_b for the codec (it pretrains the parts around it), so there is no ``rd_cost``
and an ``rd_cost`` criterion picks the best by ``psnr``.

Validation leaves training as it was: every module's train/eval flag, every buffer (the entropy
coder's tables, rebuilt from the parameters for the validation) and the RNG state are restored,
and gradients are off. Other ranks go on and wait at the next all-reduce.

Output (rank 0)::

    OUTPUT/validation.jsonl                  one line per validation (a resumed run drops later ones)
    OUTPUT/best/best.json                    step, criterion, value, scores, checkpoint: the best so far
    OUTPUT/best/step-000020/{tensors.safetensors,state.json}   its trainer state (``checkpoint.py``)
    OUTPUT/best-model/pointer.json           -> models/<fingerprint>: the best exported at the end

``best.json`` is written after its checkpoint is complete and older ``step-*`` directories are
removed after it, so it always names a whole checkpoint. A resumed run reads the value to beat
from it (even when its step is past the checkpoint resumed from: that model was validated), unless
the criterion changed, in which case the first validation replaces it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import numpy as np
import torch
from fsspec.implementations.local import LocalFileSystem

from pipeline.training.checkpoint import STATE_NAME, TENSORS_NAME, read_checkpoint, write_checkpoint
from pipeline.training.config import VALIDATION_CRITERIA, ValidationConfig
from pipeline.training.data import cover, list_shards, read_samples, sample_pixels
from pipeline.training.export import export_model
from pipeline.training.metrics import MetricsLog
from pipeline.training.paths import output_path
from sprdiff import SPRDiff
from sprdiff.evaluation.metrics import MS_SSIM_MIN_SIDE, ms_ssim, mse, psnr
from sprdiff.evaluation.summary import json_safe, metric_stats
from sprdiff.precision import default_precision

log = logging.getLogger(__name__)

VALIDATION_NAME = "validation.jsonl"
BEST_DIR = "best"
BEST_NAME = "best.json"
BEST_POINTER_DIR = "best-model"  # OUTPUT/best-model: a pointer to the export of the best checkpoint


def validation_due(config: ValidationConfig, step: int, total_steps: int) -> bool:
    """Whether ``step`` is validated; every rank can ask (Ray Train reports at those steps too)."""
    return config.data is not None and (step % config.every == 0 or step == total_steps)


def check_validation(config: ValidationConfig) -> None:
    """Fail before training starts: the shards exist and the criterion can be computed at the crop."""
    if config.data is None:
        return
    if config.criterion == "ms_ssim" and config.crop < MS_SSIM_MIN_SIDE:
        raise ValueError(f"validation.criterion ms_ssim needs validation.crop >= {MS_SSIM_MIN_SIDE} "
                         f"(MS-SSIM's 5 scales), got {config.crop}")
    list_shards(config.data)


# ---- the fixed validation set

def centre_crop(pixels: np.ndarray, crop: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (crop, crop, 3) uint8 from the centre; upscales first if a side is short
    (bicubic, as the training crops do)."""
    pixels = cover(pixels, crop)
    h, w = pixels.shape[:2]
    top, left = (h - crop) // 2, (w - crop) // 2
    return np.ascontiguousarray(pixels[top:top + crop, left:left + crop])


def load_images(uri: str, max_images: int, crop: int) -> list[np.ndarray]:
    """The first ``max_images`` readable samples of the shards under ``uri``, centre-cropped.
    ``make-shards`` writes samples sorted by key across and within shards, so this is key order."""
    images = []
    for sample in read_samples(list_shards(uri)):
        pixels = sample_pixels(sample)  # None (with a warning) for a damaged sample
        if pixels is None:
            continue
        images.append(centre_crop(pixels, crop))
        if len(images) == max_images:
            break
    if not images:
        raise ValueError(f"no readable image in the validation shards under {uri}")
    return images


# ---- one validation

@contextlib.contextmanager
def kept_training_state(model: torch.nn.Module) -> Iterator[None]:
    """Restore every module's train/eval flag, every buffer and the RNG state afterwards, so a run
    that validates trains bit-identically to one that does not; no gradients inside.

    Buffers matter beyond rank 0: the entropy coder's ``update()`` replaces its CDF tables with
    tables of another size, and DDP broadcasts rank 0's buffers at every forward, so tables left
    changed on rank 0 alone would break that broadcast."""
    modes = [(module, module.training) for module in model.modules()]
    buffers = [(module, name, buffer, buffer.clone()) for module in model.modules()
               for name, buffer in module._buffers.items() if buffer is not None]
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
        try:
            yield
        finally:
            for module, training in modes:
                module.training = training
            for module, name, buffer, value in buffers:
                buffer.copy_(value)  # in case it was changed in place
                module._buffers[name] = buffer  # in case it was replaced


def validate(model: SPRDiff, images: list[np.ndarray], rate: int | None = None) -> dict[str, float]:
    """Encode ``images`` to records with the model's default settings (at ``rate``: default the
    model's), decode them and score the result (see the module docstring); ``model``'s training
    state is left as it was."""
    precision = default_precision(model.device)  # what `sprdiff encode` uses on this device
    with kept_training_state(model):
        model.eval()
        model.entropy.update()  # integer tables of the current parameters (export does the same)
        model.invalidate_fingerprint()
        try:
            records = model.compress(images, precision=precision, rate=rate)
            decoded = model.decompress(records, precision=precision)
        finally:
            model.entropy.invalidate_tables()  # drop the cached tables and integer networks: the weights move on
            model.invalidate_fingerprint()
    pixels = [image.shape[0] * image.shape[1] for image in images]
    bpps = [8 * len(record) / n for record, n in zip(records, pixels, strict=True)]
    return {
        "bpp": sum(bpps) / len(bpps),
        "bpp_total": 8 * sum(len(record) for record in records) / sum(pixels),
        "psnr": metric_stats([psnr(a, b) for a, b in zip(images, decoded, strict=True)])["mean"],
        "ms_ssim": metric_stats([ms_ssim(a, b) for a, b in zip(images, decoded, strict=True)])["mean"],
        "mse": sum(mse(a, b) for a, b in zip(images, decoded, strict=True)) / len(images) / 255.0**2,
    }


def rd_cost(scores: dict[str, float], mse_weight: float, lambda_rate: float) -> float:
    """The training loss's rate-distortion terms on real bytes: ``w·MSE + λ_b·bpp`` (MSE on [0, 1])."""
    return mse_weight * scores["mse"] + lambda_rate * scores["bpp"]


def validate_rate_points(model: SPRDiff, images: list[np.ndarray], mse_weight: float,
                         rate_lambdas: tuple[float, ...]) -> dict[str, float]:
    """Every rate point scored (``<score>_rate<r>``, each with its own ``rd_cost`` at its λ_b), and
    the plain names the mean over the rates: the criterion weighs every rate point equally."""
    scores: dict[str, float] = {}
    per_rate = []
    for rate, lambda_rate in enumerate(rate_lambdas):
        one = validate(model, images, rate)
        one["rd_cost"] = rd_cost(one, mse_weight, lambda_rate)
        per_rate.append(one)
        scores.update({f"{name}_rate{rate}": value for name, value in one.items()})
    for name in per_rate[0]:
        scores[name] = float(np.mean([one[name] for one in per_rate]))
    return scores


def criterion_for(stage: int, criterion: str) -> str:
    return "psnr" if stage == 0 and criterion == "rd_cost" else criterion


def better(value: float, best: float | None, criterion: str) -> bool:
    if value is None or math.isnan(value):
        return False
    if best is None:
        return True
    return value < best if VALIDATION_CRITERIA[criterion] == "min" else value > best


# ---- during a run (rank 0)

class Validator:
    """Validates a trainer on rank 0, logs ``validation.jsonl`` and keeps the best checkpoint."""

    def __init__(self, config: ValidationConfig, output_uri: str, stage: int, start_step: int):
        self.config, self.output_uri, self.stage = config, output_uri, stage
        self.criterion = criterion_for(stage, config.criterion)
        self.images = load_images(config.data, config.max_images, config.crop)
        self.log = MetricsLog(output_uri, keep_until_step=start_step, name=VALIDATION_NAME)
        best = read_best(output_uri)
        self.best_value = best["value"] if best and best["criterion"] == self.criterion else None

    def run(self, trainer, run_info: dict) -> dict[str, float | None]:
        """Validate ``trainer``'s model now; returns the scores as ``val_<name>`` for the step's record."""
        rate_lambdas = getattr(trainer, "rate_lambdas", ())
        if rate_lambdas:
            scores = validate_rate_points(trainer.exportable(), self.images, trainer.stage.weights.mse_x_hat,
                                          rate_lambdas)
        else:
            scores = validate(trainer.exportable(), self.images)
        if self.stage != 0 and not rate_lambdas:
            scores["rd_cost"] = rd_cost(scores, trainer.stage.weights.mse_x_hat, trainer.lambda_rate)
        self.log.write({"step": trainer.step, **json_safe(scores)})
        value = scores[self.criterion]
        if better(value, self.best_value, self.criterion):
            write_best(self.output_uri, {"trainer": trainer.state_dict(), "run": run_info},
                       {"step": trainer.step, "criterion": self.criterion, "value": value,
                        "scores": json_safe(scores)})
            self.best_value = value
        return {f"val_{k}": v for k, v in json_safe(scores).items()}

    def sync(self) -> None:
        self.log.sync()

    def close(self) -> None:
        self.log.close()


def read_best(output_uri: str) -> dict | None:
    """``OUTPUT/best/best.json``, or None before any best was kept."""
    fs, path = fsspec.core.url_to_fs(output_path(output_uri, BEST_DIR, BEST_NAME))
    return json.loads(fs.cat_file(path)) if fs.exists(path) else None


def write_best(output_uri: str, state: dict, best: dict) -> None:
    """Store ``state`` as the checkpoint ``best/step-N/``, then name it in ``best.json`` (one atomic
    write), then remove the other ``best/step-*`` directories."""
    name = f"step-{best['step']:06d}"
    fs, root = fsspec.core.url_to_fs(output_path(output_uri, BEST_DIR))
    if fs.exists(f"{root}/{name}"):  # a killed run's best at this step: never rewrite what best.json names
        name += f"-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="sprdiff-best-") as tmp:
        write_checkpoint(Path(tmp), state)
        fs.makedirs(f"{root}/{name}", exist_ok=True)
        for file in sorted(Path(tmp).iterdir()):
            fs.put_file(str(file), f"{root}/{name}/{file.name}")
    body = (json.dumps({**best, "checkpoint": name}, indent=1, sort_keys=True) + "\n").encode()
    if isinstance(fs, LocalFileSystem):  # a rename: readers see the old or the new file
        fs.pipe_file(f"{root}/{BEST_NAME}.tmp", body)
        fs.mv(f"{root}/{BEST_NAME}.tmp", f"{root}/{BEST_NAME}")
    else:  # one PUT is atomic on object stores
        fs.pipe_file(f"{root}/{BEST_NAME}", body)
    for path in fs.ls(root, detail=False):
        other = path.rstrip("/").rsplit("/", 1)[-1]
        if other.startswith("step-") and other != name:
            fs.rm(path, recursive=True)


def export_best(trainer, output_uri: str, **card) -> str | None:
    """Load the best checkpoint into ``trainer`` and export it like the final model, pointed at by
    ``OUTPUT/best-model``; returns its fingerprint (None when no best was kept). Call it last:
    it replaces the trainer's state."""
    best = read_best(output_uri)
    if best is None:
        return None
    fs, root = fsspec.core.url_to_fs(output_path(output_uri, BEST_DIR, best["checkpoint"]))
    with tempfile.TemporaryDirectory(prefix="sprdiff-best-") as tmp:
        for name in (STATE_NAME, TENSORS_NAME):
            fs.get_file(f"{root}/{name}", f"{tmp}/{name}")
        saved = read_checkpoint(Path(tmp), device=trainer.device)
    trainer.load_state_dict(saved["trainer"])
    return export_model(trainer.exportable(), output_uri, trainer.rate_id, pointer=BEST_POINTER_DIR,
                        steps=best["step"], **card)
