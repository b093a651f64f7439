"""A content-addressed model store: weights kept by fingerprint, so archives outlive their models.

A record can only be decoded by the exact weights that wrote it. A *store* is a prefix (local
folder or any fsspec URI: an archive's own ``_models/``, or one store shared by many archives)
holding every such model once, under its fingerprint (``SPRDiff.fingerprint``)::

    <store>/<fingerprint>/config.json
    <store>/<fingerprint>/model.safetensors
    <store>/<fingerprint>/README.md          model card (sprdiff.model_card), written last

Nothing in a store is ever overwritten: a fingerprint names one set of bytes forever. A directory
counts as stored only once it is complete: on a local disk it is built under a temporary name and
renamed into place; on an object store its card is written last, after the weights were read
back and checked, so a half-copied directory is never taken as stored.

:func:`resolve_model` finds the weights for a fingerprint in a list of *places*: a store, a model
directory (local or URI), or a shipped or seeded model name (``demo``, ``tiny``). Every load is
checked against the fingerprint asked for.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import fsspec
from safetensors import safe_open

from sprdiff import storage, weight_layout
from sprdiff.config import CONFIG_NAME, WEIGHTS_NAME, SPRDiffConfig
from sprdiff.model_card import CARD_NAME, ModelCard, read_model_card, write_model_card

if TYPE_CHECKING:
    import torch

    from sprdiff.model import SPRDiff

ARCHIVE_STORE = "_models"  # an archive's own store, beside its parts (names starting with _ stay out of globs)
STORED_FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME)
_HASH_CHUNK = 8 << 20
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")


class ModelNotFoundError(FileNotFoundError):
    """No place holds the weights a record was written with."""

    def __init__(self, fingerprint: str, looked: Sequence[str]):
        self.fingerprint = fingerprint
        self.looked = tuple(looked)
        where = "; ".join(looked) if looked else "nowhere (no places given)"
        super().__init__(f"no stored weights for model fingerprint {fingerprint}: looked in {where}. Pass the "
                         f"store or model directory that holds them (--model-store URI or --model DIR)")


# ---- fingerprints

# safetensors' dtype codes that numpy reads, by the torch dtype the fingerprint names (bfloat16 and
# the float8 types have no numpy dtype: files holding them are hashed through torch)
_NUMPY_DTYPES = {"F64": "torch.float64", "F32": "torch.float32", "F16": "torch.float16", "I64": "torch.int64",
                 "I32": "torch.int32", "I16": "torch.int16", "I8": "torch.int8", "U8": "torch.uint8",
                 "BOOL": "torch.bool"}


def _digest(config_json: str, entries: Iterable[tuple[str, str, tuple[int, ...], bytes]]) -> bytes:
    """SHA-256 of the config, then of each (name, dtype, shape, little-endian bytes) in the order given."""
    h = hashlib.sha256(config_json.encode())
    for name, dtype, shape, data in entries:
        h.update(f"{name}:{dtype}:{shape}".encode())
        h.update(data)
    return h.digest()


def fingerprint_digest(config_json: str, tensors: Iterable[tuple[str, torch.Tensor]]) -> bytes:
    """SHA-256 of a model's config and every weight, in name order: the one definition of a
    fingerprint (``SPRDiff.fingerprint_bytes`` calls it; :func:`directory_fingerprint` hashes the
    same bytes from the file)."""
    import torch  # here, not at the top: archive readers use this module's paths without torch

    def entries():
        for name, tensor in sorted(tensors, key=lambda item: item[0]):
            t = tensor.detach().cpu().contiguous()
            yield name, str(t.dtype), tuple(t.shape), t.view(torch.uint8).numpy().tobytes() if t.numel() else b""

    return _digest(config_json, entries())


def directory_fingerprint(directory: str | Path) -> str:
    """The fingerprint of a saved model directory (local), from its files, without building the
    model: one tensor in memory at a time. Read through numpy where every dtype allows, so a job's
    driver names its model without importing torch (about 1.5 s of its start)."""
    path = Path(directory)
    config_json = SPRDiffConfig.from_json((path / CONFIG_NAME).read_text()).to_json()
    with safe_open(str(path / WEIGHTS_NAME), framework="np") as f:
        names = list(f.keys())
        dtypes = {name: f.get_slice(name).get_dtype() for name in names}
        if all(dtype in _NUMPY_DTYPES for dtype in dtypes.values()):
            copies = weight_layout.copies_in(f.metadata())

            def entries():
                for name, array in weight_layout.all_tensors(names, copies, f.get_tensor):
                    stored = copies.get(name, name)
                    yield name, _NUMPY_DTYPES[dtypes[stored]], tuple(array.shape), array.tobytes()

            return _digest(config_json, entries()).hex()
    with safe_open(str(path / WEIGHTS_NAME), framework="pt") as f:
        tensors = weight_layout.all_tensors(list(f.keys()), weight_layout.copies_in(f.metadata()), f.get_tensor)
        return fingerprint_digest(config_json, tensors).hex()


# ---- storing

def _join(*parts: str) -> str:
    return "/".join([parts[0].rstrip("/"), *(p.strip("/") for p in parts[1:])])


def place_in(base_uri: str, place: str) -> str:
    """A place as an archive names it, made usable: relative ones (``_models``) are under ``base_uri``."""
    from sprdiff.presets import PRESETS, SHIPPED_MODELS

    if place in PRESETS or place in SHIPPED_MODELS or "://" in place or place.startswith(("/", "~")):
        return place
    return _join(base_uri, place)


def stored_uri(fingerprint: str, store_uri: str) -> str:
    return _join(store_uri, fingerprint)


def is_stored(fingerprint: str, store_uri: str) -> bool:
    """Whether ``<store_uri>/<fingerprint>/`` is complete: weights, config, and a card naming it."""
    directory = stored_uri(fingerprint, store_uri)
    fs, root = fsspec.core.url_to_fs(directory)
    if not all(fs.exists(f"{root}/{name}") for name in (CONFIG_NAME, WEIGHTS_NAME)):
        return False
    try:
        card = read_model_card(directory)
    except (ValueError, TypeError):  # a card cut short or damaged: not (yet) stored
        return False
    return card is not None and card.fingerprint == fingerprint


def stored_fingerprints(store_uri: str) -> list[str]:
    """The fingerprints a store holds completely, sorted (a missing store holds none)."""
    fs, root = fsspec.core.url_to_fs(store_uri)
    if not fs.exists(root):
        return []
    names = [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)]
    return sorted(n for n in names if _FINGERPRINT.fullmatch(n) and is_stored(n, store_uri))


def place_fingerprints(place: str, *, cache_dir: Path | None = None) -> list[str]:
    """Every fingerprint one place holds: a store's, a model directory's, a shipped or seeded name's."""
    from sprdiff.presets import PRESETS, SHIPPED_MODELS

    if place in SHIPPED_MODELS or place in PRESETS:
        found = _name_fingerprint(place)
        return [found] if found else []
    local = _local_model_directory(place, cache_dir)
    return [directory_fingerprint(local)] if local is not None else stored_fingerprints(place)


def record_fingerprint(record: bytes, candidates: Iterable[str]) -> str | None:
    """Which of ``candidates`` wrote ``record``: a record carries only the first byte of its
    fingerprint, but its CRC is keyed by all 32, so one candidate matches (1 in 2^32 by chance)."""
    from sprdiff import bitstream
    from sprdiff.errors import BitstreamError

    header, _ = bitstream.read_header(record)
    for fingerprint in candidates:
        key = bytes.fromhex(fingerprint)
        if key[0] != header.fingerprint_tag:
            continue
        try:
            bitstream.unpack(record, key, num_strings=len(header.string_lengths))
        except BitstreamError:
            continue
        return fingerprint
    return None


def store_model(model: SPRDiff, store_uri: str, *, card: ModelCard | None = None) -> str:
    """Store ``model`` once under ``<store_uri>/<fingerprint>/`` and return that directory's URI.

    Idempotent (an already stored fingerprint is left as it is) and atomic; the files are checked
    against the fingerprint after writing. ``card``: the model card to store (default: one made
    from the model's config)."""
    fingerprint = model.fingerprint
    if is_stored(fingerprint, store_uri):
        return stored_uri(fingerprint, store_uri)
    with tempfile.TemporaryDirectory(prefix="sprdiff-store-") as tmp:
        model.save_pretrained(tmp)
        return _store_directory(Path(tmp), fingerprint, store_uri, card or _default_card(model.config, fingerprint))


def store_model_source(source: str, store_uri: str, *, cache_dir: Path | None = None) -> tuple[str, str]:
    """Store the model a job was given (``--model``): ``(fingerprint, stored directory URI)``.

    A saved model directory (local or URI) is copied file for file, its fingerprint computed from
    the files, so a job driver never builds the model; anything else (a preset, a pointer) is
    loaded and stored with :func:`store_model`. A card already beside the weights travels with them.
    """
    from sprdiff.presets import PRESETS, SHIPPED_MODELS

    known = _NAME_FINGERPRINTS.get(source)  # a model name this process has built already
    if known is not None and is_stored(known, store_uri):
        return known, stored_uri(known, store_uri)
    location = str(SHIPPED_MODELS[source]) if source in SHIPPED_MODELS else source
    local = _local_model_directory(location, cache_dir)
    if local is None:
        from sprdiff.model import SPRDiff

        model = SPRDiff.from_pretrained(source, cache_dir=cache_dir)
        if source in PRESETS:
            _NAME_FINGERPRINTS[source] = model.fingerprint
        return model.fingerprint, store_model(model, store_uri)
    fingerprint = directory_fingerprint(local)
    if is_stored(fingerprint, store_uri):
        return fingerprint, stored_uri(fingerprint, store_uri)
    card = read_model_card(str(local))
    if card is None or card.fingerprint != fingerprint:
        config = SPRDiffConfig.from_json((local / CONFIG_NAME).read_text())
        card = _default_card(config, fingerprint)
    with tempfile.TemporaryDirectory(prefix="sprdiff-store-") as tmp:
        for name in (CONFIG_NAME, WEIGHTS_NAME):
            shutil.copyfile(local / name, Path(tmp) / name)
        return fingerprint, _store_directory(Path(tmp), fingerprint, store_uri, card)


def _default_card(config: SPRDiffConfig, fingerprint: str) -> ModelCard:
    """A card for weights that came without one: what the config says, nothing more."""
    return ModelCard(model_id=config.model_id, fingerprint=fingerprint, config=json.loads(config.to_json()))


def _local_model_directory(location: str, cache_dir: Path | None) -> Path | None:
    """A local copy of ``location`` if it is a saved model directory (config + weights), else None."""
    path = storage.local_path(location)
    if path is None and storage.is_remote_uri(location):
        fs, root = fsspec.core.url_to_fs(location)
        if not (fs.exists(f"{root.rstrip('/')}/{CONFIG_NAME}") and fs.exists(f"{root.rstrip('/')}/{WEIGHTS_NAME}")):
            return None
        path = storage.fetch(location, cache_dir)
    if path is None or not ((path / CONFIG_NAME).is_file() and (path / WEIGHTS_NAME).is_file()):
        return None
    return path


def _store_directory(files: Path, fingerprint: str, store_uri: str, card: ModelCard) -> str:
    """Publish the config and weights in ``files`` (checked against ``fingerprint``) with their card."""
    found = directory_fingerprint(files)
    if found != fingerprint:
        raise ValueError(f"the weights to store have fingerprint {found}, not {fingerprint}: they changed while "
                         f"being copied; rerun")
    if card.fingerprint != fingerprint:
        raise ValueError(f"the model card names fingerprint {card.fingerprint}, the weights are {fingerprint}")
    target = stored_uri(fingerprint, store_uri)
    if not storage.is_remote_uri(store_uri):
        store = Path(urlparse(store_uri).path) if store_uri.startswith("file://") else Path(store_uri).expanduser()
        _store_local(files, store, fingerprint, card)
        return target
    fs, root = fsspec.core.url_to_fs(target)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        fs.put_file(str(files / name), f"{root}/{name}")
        if _sha256_remote(fs, f"{root}/{name}") != _sha256_local(files / name):
            raise OSError(f"{target}/{name} does not read back as written: the store is not keeping bytes")
    write_model_card(target, card)  # last: it marks the directory as stored
    return target


def _store_local(files: Path, store: Path, fingerprint: str, card: ModelCard) -> None:
    store.mkdir(parents=True, exist_ok=True)
    building = store / f".{fingerprint}.{uuid.uuid4().hex[:12]}.tmp"
    shutil.copytree(files, building)
    write_model_card(str(building), card)
    for name in STORED_FILES:
        _fsync(building / name)
    _fsync(building)
    try:
        os.rename(building, store / fingerprint)  # atomic; fails if another process stored it first
    except OSError:
        if not (store / fingerprint / CARD_NAME).is_file():
            raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    _fsync(store)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256_local(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _sha256_remote(fs, path: str) -> str:
    h = hashlib.sha256()
    with fs.open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


# ---- resolving

@dataclass(frozen=True)
class Located:
    """Where a fingerprint's weights were found: a loadable source and how it was found."""

    source: str  # a directory (local path or URI) or a model name, for SPRDiff.from_pretrained
    place: str  # the place it came from


_NAME_FINGERPRINTS: dict[str, str] = {}  # model name -> fingerprint, per process (building tiny takes a second)


def _name_fingerprint(name: str) -> str | None:
    """The fingerprint of a shipped or seeded model name; None for names that would download."""
    from sprdiff.presets import PRESETS, SHIPPED_MODELS

    if name not in _NAME_FINGERPRINTS:
        if name in SHIPPED_MODELS:
            _NAME_FINGERPRINTS[name] = directory_fingerprint(SHIPPED_MODELS[name])
        elif name in PRESETS and PRESETS[name]().init_seed is not None:
            from sprdiff.model import SPRDiff

            _NAME_FINGERPRINTS[name] = SPRDiff.from_pretrained(name).fingerprint
        else:
            return None
    return _NAME_FINGERPRINTS[name]


def locate_model(fingerprint: str, places: Sequence[str], *, cache_dir: Path | None = None) -> Located:
    """The first place holding ``fingerprint``'s weights, without loading them; raises
    :class:`ModelNotFoundError` naming the fingerprint and every place looked."""
    from sprdiff.presets import PRESETS, SHIPPED_MODELS

    looked: list[str] = []
    for place in dict.fromkeys(p for p in places if p):  # in order, once each
        if place in SHIPPED_MODELS or place in PRESETS:
            found = _name_fingerprint(place)
            if found == fingerprint:
                return Located(place, place)
            looked.append(f"{place} (the {'shipped' if place in SHIPPED_MODELS else 'preset'} model: "
                          f"{'fingerprint ' + found[:16] + '...' if found else 'not built here, it downloads'})")
            continue
        if is_stored(fingerprint, place):
            return Located(stored_uri(fingerprint, place), place)
        local = _local_model_directory(place, cache_dir)
        if local is not None:
            found = directory_fingerprint(local)
            if found == fingerprint:
                return Located(place, place)
            looked.append(f"{place} (a model directory with fingerprint {found[:16]}...)")
            continue
        looked.append(f"{stored_uri(fingerprint, place)}/ (absent)")
    raise ModelNotFoundError(fingerprint, looked)


def resolve_model(fingerprint: str, places: Sequence[str], *, device: str | torch.device = "cpu",
                  cache_dir: Path | None = None) -> SPRDiff:
    """Load the model with this fingerprint from the first place that has it (a store holding
    ``<fingerprint>/``, a model directory, a shipped or seeded model name), checked after loading;
    raises :class:`ModelNotFoundError` naming the fingerprint and every place looked."""
    from sprdiff.model import SPRDiff

    located = locate_model(fingerprint, places, cache_dir=cache_dir)
    model = SPRDiff.from_pretrained(located.source, cache_dir=cache_dir, device=device)
    if model.fingerprint != fingerprint:
        raise ValueError(f"{located.source} loads as fingerprint {model.fingerprint}, not {fingerprint}: the stored "
                         f"weights were changed after they were stored; restore them from a copy")
    return model


class ModelCache:
    """The models one process (a decode actor) has loaded, by fingerprint, at most ``max_models``
    at once (least recently used goes first). A fingerprint not found is remembered too, so a
    missing model costs one search per process, not one per record."""

    def __init__(self, places: Sequence[str], *, device: str | torch.device = "cpu", cache_dir: Path | None = None,
                 max_models: int = 2, prepare: Callable[[SPRDiff], SPRDiff] | None = None):
        """``prepare``: applied to each model as it is loaded (a codec actor's precision check and speed-ups)."""
        if max_models < 1:
            raise ValueError(f"max_models must be >= 1, got {max_models}")
        self.places = tuple(places)
        self.device, self.cache_dir, self.max_models = device, cache_dir, max_models
        self.prepare = prepare
        self._models: OrderedDict[str, SPRDiff] = OrderedDict()
        self._missing: dict[tuple[str, tuple[str, ...]], Exception] = {}  # by fingerprint and places searched
        self.loads = 0  # models loaded so far (a model evicted and needed again loads again)

    def get(self, fingerprint: str, extra_places: Sequence[str] = ()) -> SPRDiff:
        if fingerprint in self._models:
            self._models.move_to_end(fingerprint)
            return self._models[fingerprint]
        places = (*self.places, *extra_places)
        if (fingerprint, places) in self._missing:
            raise self._missing[fingerprint, places]
        try:
            model = resolve_model(fingerprint, list(places), device=self.device, cache_dir=self.cache_dir)
        except (ModelNotFoundError, ValueError) as e:  # not found, or found changed: same answer next time
            self._missing[fingerprint, places] = e  # (a codec server's cache serves jobs with other places)
            raise
        self.loads += 1
        model = self._models[fingerprint] = self.prepare(model) if self.prepare else model
        while len(self._models) > self.max_models:
            self._models.popitem(last=False)
        return model

    def add(self, model: SPRDiff) -> None:
        """Put an already loaded model in the cache (it counts against ``max_models``)."""
        self._models[model.fingerprint] = model
        while len(self._models) > self.max_models:
            self._models.popitem(last=False)
