"""Numeric precision of the neural stages, and device-specific speed-ups that keep records valid.

``bf16`` runs the VAE, DINOv2, the UNet, the fusion and the latent networks under bfloat16
autocast; everything that decides a probability stays exact (the entropy parameters are integer
networks on the quantised latent, ``sprdiff/exact.py``), so a bf16 record decodes with fp32 and
the other way round. Only the pixels (and, through rounding at a quantisation boundary, the
bytes) change, as any other device change would: see the determinism contract in
``docs/codec.md``. ``bf16`` is the default on CUDA devices that support it, ``fp32`` elsewhere.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from sprdiff.run_settings import PRECISIONS, check_precision_name  # noqa: F401 (PRECISIONS re-exported)


def device_type(device: torch.device | str) -> str:
    return torch.device(device).type


def default_precision(device: torch.device | str) -> str:
    """bf16 on a CUDA device that runs it, fp32 everywhere else."""
    if device_type(device) == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def check_precision(precision: str, device: torch.device | str) -> str:
    """``precision`` if ``device`` can run it; otherwise a ``ValueError`` that says what can. Call it
    before any work starts."""
    check_precision_name(precision)
    kind = device_type(device)
    if precision == "bf16" and kind == "cuda" and not (torch.cuda.is_available() and torch.cuda.is_bf16_supported()):
        raise ValueError("this CUDA device has no bfloat16 support (it needs compute capability 8.0 or newer, e.g. "
                         "A100, L4, H100): use --precision fp32")
    if precision == "bf16" and kind not in ("cuda", "cpu"):
        raise ValueError(f"bf16 autocast is supported here on cuda and cpu devices, not {kind}: use --precision fp32")
    return precision


@contextlib.contextmanager
def autocast(precision: str, device: torch.device | str) -> Iterator[None]:
    """The neural stages' numeric context: bfloat16 autocast for ``bf16``, nothing for ``fp32``."""
    if precision == "bf16":
        with torch.autocast(device_type=device_type(device), dtype=torch.bfloat16):
            yield
    else:
        yield


def prepare_for_inference(model, *, channels_last: bool | None = None, compile_modules: bool = False):
    """Speed-ups for a codec actor: channels-last convolutions (default: on CUDA) and, behind a flag,
    ``torch.compile`` of the UNet and the VAE decoder (for long jobs of few image sizes: it compiles for
    every new input size, about 80 s on a 2-core CPU, then runs 1.1-1.2x faster there; docs/performance.md).
    The entropy model is left alone: its exact integer path must see the same
    tensors everywhere."""
    _ = model.fingerprint_bytes  # computed (and kept) from the plain modules, before any wrapping
    if channels_last is None:
        channels_last = device_type(model.device) == "cuda"
    heavy = [model.vae, model.unet, model.distortion, model.fusion, model.latent_encoder, model.latent_decoder,
             model.transform, model.projector]
    if channels_last:
        for module in heavy:
            module.to(memory_format=torch.channels_last)
    if compile_modules:
        model.unet = torch.compile(model.unet, dynamic=False)
        model.vae.decoder = torch.compile(model.vae.decoder, dynamic=False)
    return model
