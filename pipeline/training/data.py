"""Training samples streamed from WebDataset tar shards on any fsspec URI (local, ``s3://``...).

Each Ray Train worker reads its own shards (shard i goes to worker i mod world size); when
there are fewer shards than readers, every reader walks all shards and keeps every n-th
sample instead, so small corpora still feed every worker without overlap. Tars are opened
with fsspec and streamed (never downloaded whole); WebDataset's tar iterator groups members
into samples and its shuffle buffer mixes them. Each sample's image is validated with
``sprdiff.load_image`` (bad ones are skipped and counted), upscaled if a side is shorter than
the crop, and randomly cropped.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass

import fsspec
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.filters import shuffle as shuffle_filter
from webdataset.tariterators import group_by_keys, tar_file_expander

from sprdiff import ImageError, load_image

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff", "ppm", "gif")


def list_shards(uri: str) -> list[str]:
    """Sorted URIs of the ``.tar`` files under ``uri`` (a prefix/folder, or one tar file)."""
    fs, root = fsspec.core.url_to_fs(uri)
    if root.endswith(".tar") and fs.isfile(root):
        paths = [root]
    else:
        if not fs.exists(root):
            raise FileNotFoundError(f"no training data at {uri}: run `sprdiff make-shards` first")
        paths = sorted(p for p in fs.find(root) if p.endswith(".tar"))
    if not paths:
        raise FileNotFoundError(f"no .tar shards under {uri}: run `sprdiff make-shards --output {uri}` first")
    return [fs.unstrip_protocol(p) for p in paths]


@dataclass(frozen=True)
class ReaderSlice:
    """What one reader (a worker, or a DataLoader process within it) reads."""

    shards: tuple[str, ...]
    sample_stride: int = 1  # keep every n-th sample...
    sample_offset: int = 0  # ...starting at this one


def reader_slice(shards: list[str], reader: int, num_readers: int) -> ReaderSlice:
    if not 0 <= reader < num_readers:
        raise ValueError(f"reader {reader} is outside 0..{num_readers - 1}")
    if len(shards) >= num_readers:
        return ReaderSlice(tuple(shards[reader::num_readers]))
    return ReaderSlice(tuple(shards), sample_stride=num_readers, sample_offset=reader)


def read_samples(shards: tuple[str, ...] | list[str]) -> Iterator[dict]:
    """Raw samples (``{"__key__", "png"|"jpg"|..., ...}``) of the tars, in order, streamed."""

    def opened():
        for url in shards:
            with fsspec.open(url, "rb") as stream:
                yield {"url": url, "stream": stream}

    return group_by_keys(tar_file_expander(opened()))


def image_bytes(sample: dict) -> bytes | None:
    for ext in IMAGE_EXTENSIONS:
        if ext in sample:
            return sample[ext]
    return None


def random_crop(pixels: np.ndarray, crop: int, rng: random.Random) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, crop, crop) float in [0, 1]; upscales first if a side is short."""
    h, w = pixels.shape[:2]
    if min(h, w) < crop:
        scale = crop / min(h, w)
        size = (max(crop, round(w * scale)), max(crop, round(h * scale)))
        pixels = np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BICUBIC))
        h, w = pixels.shape[:2]
    top, left = rng.randint(0, h - crop), rng.randint(0, w - crop)
    patch = np.require(pixels[top:top + crop, left:left + crop], requirements=["C", "W"])  # a read-only crop is copied
    return torch.from_numpy(patch).permute(2, 0, 1).float().div_(255.0)


class ShardCrops(IterableDataset):
    """An endless stream of random crops for one Ray worker.

    Every epoch reshuffles this worker's shards; the seed differs per worker, per DataLoader
    process and per run start (``start_step``), so a resumed run does not replay the first
    samples of the killed one.
    """

    def __init__(self, shards: list[str], crop: int, rank: int, world_size: int, seed: int, start_step: int = 0,
                 shuffle_buffer: int = 64):
        super().__init__()
        self.shards, self.crop, self.rank, self.world_size = list(shards), crop, rank, world_size
        self.seed, self.start_step, self.shuffle_buffer = seed, start_step, shuffle_buffer
        self.skipped = 0

    def __iter__(self) -> Iterator[torch.Tensor]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        part = reader_slice(self.shards, self.rank * workers + worker, self.world_size * workers)
        rng = random.Random(f"{self.seed}/{self.rank}/{worker}/{self.start_step}")
        yielded = 0
        for epoch in itertools.count():
            order = list(part.shards)
            rng.shuffle(order)
            samples = itertools.islice(read_samples(order), part.sample_offset, None, part.sample_stride)
            samples = shuffle_filter(self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng)(samples)
            for sample in samples:
                data = image_bytes(sample)
                try:
                    if data is None:
                        raise ImageError(f"no image member (one of {', '.join(IMAGE_EXTENSIONS)})",
                                         status="not_image")
                    pixels = load_image(data)
                except ImageError as e:
                    self.skipped += 1
                    log.warning("skipping sample %s of %s: %s (%s)", sample.get("__key__"), sample.get("__url__"),
                                e, e.status)
                    continue
                yielded += 1
                yield random_crop(pixels, self.crop, rng)
            if epoch == 0 and yielded == 0:
                raise RuntimeError(f"reader {self.rank}/{worker} found no usable image in {len(part.shards)} "
                                   f"shard(s) starting with {part.shards[:1]}")


def crop_batches(shards: list[str], crop: int, batch_size: int, rank: int, world_size: int, seed: int,
                 start_step: int = 0, loader_workers: int = 0, shuffle_buffer: int = 64) -> Iterator[torch.Tensor]:
    """Endless (batch_size, 3, crop, crop) batches for this worker."""
    dataset = ShardCrops(shards, crop, rank, world_size, seed, start_step, shuffle_buffer)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=loader_workers,
                        persistent_workers=loader_workers > 0, prefetch_factor=2 if loader_workers else None)
    return iter(loader)
