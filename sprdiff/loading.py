"""Building, loading and saving SPRDiff models: one path for presets, directories and URIs.

A saved model is a directory (local or object store) with ``config.json`` and
``model.safetensors`` holding *every* weight, the pretrained components and the integer
entropy-coding tables included, so decoding never depends on recomputing floats (identical
tables stored once: ``sprdiff.weight_layout``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import fsspec
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sprdiff import components, storage, weight_layout
from sprdiff.config import CONFIG_NAME, WEIGHTS_NAME, SPRDiffConfig
from sprdiff.entropy import TABLE_BUFFERS
from sprdiff.model_pointer import MAX_POINTER_HOPS, read_pointer
from sprdiff.presets import PRESETS, RETRAIN_HINT, SHIPPED_MODELS

if TYPE_CHECKING:
    from sprdiff.model import SPRDiff


def build(model_class: type[SPRDiff], config: SPRDiffConfig, *, use_sources: bool,
          cache_dir: Path | None = None) -> SPRDiff:
    """Assemble a model: pretrained parts from their sources (``use_sources``) or built from
    their architecture configs; our modules random-initialised (from ``init_seed`` if set)."""
    with torch.random.fork_rng(devices=[]):
        if config.init_seed is not None:
            torch.manual_seed(config.init_seed)

        def pick(name: str, source: str | None, arch: dict):
            if use_sources and source:
                if name == "distortion":
                    return components.load_distortion(source, arch, cache_dir)
                return getattr(components, f"load_{name}")(source, cache_dir)
            if not arch:
                raise ValueError(f"config {config.model_id!r} has neither a {name}_source nor a {name}_config")
            return getattr(components, f"build_{name}")(arch), arch

        vae, vae_config = pick("vae", config.vae_source, config.vae_config)
        unet, unet_config = pick("unet", config.unet_source, config.unet_config)
        dino, dino_config = pick("dino", config.dino_source, config.dino_config)
        distortion, distortion_config = pick("distortion", config.distortion_source, config.distortion_config)
        config = config.replace(vae_config=vae_config, unet_config=unet_config, dino_config=dino_config,
                                distortion_config=distortion_config)
        components.add_lora(vae.encoder, config.lora_vae_rank, components.VAE_ENCODER_LORA_TARGETS,
                            config.lora_init)
        components.add_lora(unet, config.lora_unet_rank, components.UNET_LORA_TARGETS, config.lora_init)
        model = model_class(config, vae=vae, unet=unet, dino=dino, distortion=distortion)
        if config.latent_init_gain != 1.0:
            with torch.no_grad():
                last = model.latent_encoder[-1]
                last.weight.mul_(config.latent_init_gain)
                last.bias.mul_(config.latent_init_gain)
    model.entropy.update()
    model.freeze_pretrained()
    return model.eval()


def from_pretrained(model_class: type[SPRDiff], name_or_uri: str, *, cache_dir: Path | None = None,
                    device: str | torch.device = "cpu", _hops: int = 0) -> SPRDiff:
    """A preset name (``tiny``, ``sd-turbo``), a local directory, or a URI (``s3://...``); a model
    pointer (``sprdiff.model_pointer``) is followed, and the weights it finds must have its fingerprint."""
    if name_or_uri in PRESETS:
        config = PRESETS[name_or_uri]()
        return build(model_class, config, use_sources=config.init_seed is None, cache_dir=cache_dir).to(device)
    if name_or_uri in SHIPPED_MODELS:
        path = SHIPPED_MODELS[name_or_uri]
        if not (path / WEIGHTS_NAME).is_file():
            raise FileNotFoundError(f"the shipped model {name_or_uri!r} is missing from {path} (a partial checkout, or "
                                    f"an install without package data): reinstall, or retrain it with "
                                    f"`{RETRAIN_HINT[name_or_uri]}`")
        return _load_directory(model_class, path).to(device)
    pointer = read_pointer(name_or_uri) if storage.local_path(name_or_uri) or storage.is_remote_uri(name_or_uri) \
        else None
    if pointer is not None:
        if _hops >= MAX_POINTER_HOPS:
            raise ValueError(f"{name_or_uri}: more than {MAX_POINTER_HOPS} model pointers in a row (a cycle?)")
        model = from_pretrained(model_class, pointer.target, cache_dir=cache_dir, device=device, _hops=_hops + 1)
        if model.fingerprint != pointer.fingerprint:
            raise ValueError(f"the model pointer {name_or_uri} names weights {pointer.fingerprint[:16]}..., but "
                             f"{pointer.target} holds {model.fingerprint[:16]}...: the weights were changed in "
                             f"place; point it at the right directory again")
        return model
    path = storage.local_path(name_or_uri)
    if path is None and storage.is_remote_uri(name_or_uri):
        path = storage.fetch(name_or_uri, cache_dir)
    if path is None or not (path / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{name_or_uri!r} is not a preset ({', '.join([*PRESETS, *SHIPPED_MODELS])}) nor a "
                                f"directory with {CONFIG_NAME} and {WEIGHTS_NAME}")
    return _load_directory(model_class, path).to(device)


def _load_directory(model_class: type[SPRDiff], path: Path) -> SPRDiff:
    config = SPRDiffConfig.from_json((path / CONFIG_NAME).read_text())
    model = build(model_class, config, use_sources=False)
    load_weights(model, path / WEIGHTS_NAME)
    return model


def load_weights(model: SPRDiff, weights: Path) -> None:
    with safe_open(str(weights), framework="pt") as f:
        copies = weight_layout.copies_in(f.metadata())
    state = weight_layout.restore_copies(load_file(str(weights)), copies)
    # Entropy tables have data-dependent shapes: size the buffers to the saved ones first.
    for module_name, module in model.named_modules():
        for buffer_name in TABLE_BUFFERS:
            key = f"{module_name}.{buffer_name}" if module_name else buffer_name
            if key in state and buffer_name in module._buffers:
                module._buffers[buffer_name] = torch.empty_like(state[key])
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{weights} does not match the architecture in its config: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    model.entropy.invalidate_tables()
    model.invalidate_fingerprint()


def save_pretrained(model: SPRDiff, destination: str | Path) -> None:
    """Write ``config.json`` + ``model.safetensors`` to a local directory or an fsspec URI."""
    state, copies = weight_layout.share_tables(
        {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()})
    metadata = {"format": "pt", "model_id": model.model_id, "fingerprint": model.fingerprint,
                **weight_layout.shared_tables_metadata(copies)}
    destination = str(destination)
    if storage.is_remote_uri(destination):
        with tempfile.TemporaryDirectory() as tmp:
            _write(Path(tmp), model.config, state, metadata)
            fs, root = fsspec.core.url_to_fs(destination)
            for name in (CONFIG_NAME, WEIGHTS_NAME):
                fs.put_file(str(Path(tmp) / name), f"{root.rstrip('/')}/{name}")
    else:
        _write(Path(destination), model.config, state, metadata)


def _write(directory: Path, config: SPRDiffConfig, state: dict, metadata: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    save_file(state, str(directory / WEIGHTS_NAME), metadata=metadata)
    (directory / CONFIG_NAME).write_text(config.to_json() + "\n")
