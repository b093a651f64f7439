"""Training samples streamed from WebDataset tar shards on any fsspec URI (local, ``s3://``...).

Readers. Each Ray worker reads with ``max(loader_workers, 1)`` readers (DataLoader processes);
reader ``rank * W + worker`` of R = world size × W. Every epoch shuffles the whole shard list
(seeded by seed and epoch) and deals it round robin: shard i of that order goes to reader
i mod R. When there are fewer shards than readers, every reader walks all shards in that shared
order and keeps every R-th sample instead, so small corpora still feed every reader without
overlap. Tars are opened with fsspec and streamed (never downloaded whole); WebDataset's tar
iterator groups members into samples and its shuffle buffer mixes them.

Positions. A reader's sample order is a function of (seed, reader, epoch) only, and each crop's
randomness of (seed, reader, epoch, index), where index counts the reader's post-shuffle stream
in that epoch (damaged samples included). So a reader told to start at (epoch, next_index)
walks the tar stream up to there, reading bytes but decoding nothing, and then yields exactly
what an uninterrupted reader would have: that is how a resumed run continues the data order
(:class:`DataPosition`, stored in checkpoints).

Damage. A sample whose image fails ``sprdiff.load_image`` is skipped and counted. A shard that
cannot be opened, is not a tar, or breaks off (truncated, a member that fails to read) ends
where the damage starts: the samples completed before it are used, the rest of the shard counts
as one skip, and the reader goes on with the next shard. Counts travel with the batches (``Batch.skipped``).
"""

from __future__ import annotations

import functools
import itertools
import logging
import random
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass

import fsspec
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from webdataset.filters import shuffle as shuffle_filter
from webdataset.handlers import reraise_exception
from webdataset.tariterators import group_by_keys, tar_file_expander

from sprdiff import ImageError, load_image

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff", "ppm", "gif")
DAMAGED = "__damaged__"  # key of the marker sample that stands for the unread rest of a damaged shard


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


def read_samples(shards: tuple[str, ...] | list[str], skip_damaged: bool = False) -> Iterator[dict]:
    """Raw samples (``{"__key__", "png"|"jpg"|..., ...}``) of the tars, in order, streamed.

    Without ``skip_damaged`` a damaged shard raises. With it, the shard ends with the last sample
    completed before the damage, and a marker sample ``{"__key__", "__url__", DAMAGED: "what went
    wrong"}`` stands for the rest.
    """
    for url in shards:
        errors: list[Exception] = []
        handler = functools.partial(_end_shard, errors) if skip_damaged else reraise_exception
        # one tar per group_by_keys, so a sample cut off by damage never merges with the next shard's
        for sample in group_by_keys(tar_file_expander(_opened(url, handler), handler=handler), handler=handler):
            if errors:
                break  # group_by_keys flushes the sample it was assembling when the damage came: maybe partial
            yield sample
        if errors:
            yield {"__key__": f"{url}#damaged", "__url__": url,
                   DAMAGED: f"{type(errors[0]).__name__}: {errors[0].args[0] if errors[0].args else ''}"}


def _end_shard(errors: list[Exception], exn: Exception) -> bool:
    """A webdataset handler: note the damage, and stop reading this tar (False); ``read_samples``
    goes on with the next one."""
    errors.append(exn)
    return False


def _opened(url: str, handler: Callable[[Exception], bool]) -> Iterator[dict]:
    """The one stream of ``url`` in webdataset's ``{"url", "stream"}`` form; a URL that cannot be
    opened goes to ``handler`` like a damaged tar (webdataset's own opener does not use fsspec)."""
    try:
        stream = fsspec.open(url, "rb").open()
    except Exception as exn:  # noqa: BLE001 - missing object, denied, network: the handler decides
        handler(exn)  # raises, or counts the shard as damaged
        return
    with stream:
        yield {"url": url, "stream": stream}


def image_bytes(sample: dict) -> bytes | None:
    for ext in IMAGE_EXTENSIONS:
        if ext in sample:
            return sample[ext]
    return None


def cover(pixels: np.ndarray, crop: int) -> np.ndarray:
    """``pixels`` upscaled (bicubic) so the short side is at least ``crop``; as they are if it is."""
    h, w = pixels.shape[:2]
    if min(h, w) >= crop:
        return pixels
    scale = crop / min(h, w)
    size = (max(crop, round(w * scale)), max(crop, round(h * scale)))
    return np.asarray(Image.fromarray(pixels).resize(size, Image.Resampling.BICUBIC))


def random_crop(pixels: np.ndarray, crop: int, rng: random.Random) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, crop, crop) float in [0, 1]; upscales first if a side is short."""
    pixels = cover(pixels, crop)
    h, w = pixels.shape[:2]
    top, left = rng.randint(0, h - crop), rng.randint(0, w - crop)
    patch = np.require(pixels[top:top + crop, left:left + crop], requirements=["C", "W"])  # a read-only crop is copied
    return torch.from_numpy(patch).permute(2, 0, 1).float().div_(255.0)


# ---- positions

@dataclass(frozen=True)
class ReaderPosition:
    epoch: int = 0
    next_index: int = 0  # first index of the epoch's post-shuffle stream not yet consumed
    skipped: int = 0  # damaged samples and shards among the consumed indices, all epochs


@dataclass
class DataPosition:
    """What the training loop has consumed, per reader; JSON-able for checkpoints.

    The guarantee (each sample once per epoch across a kill and resume) holds for the reader
    layout it was written with: the same world size, ``loader_workers`` and batch size.
    """

    world_size: int
    loader_workers: int
    batch_size: int
    readers: list[ReaderPosition]  # index: reader = rank * max(loader_workers, 1) + DataLoader worker
    batches: int = 0  # batches each rank has consumed: says which DataLoader worker's batch comes next

    @classmethod
    def start(cls, world_size: int, loader_workers: int, batch_size: int) -> DataPosition:
        readers = [ReaderPosition() for _ in range(world_size * max(loader_workers, 1))]
        return cls(world_size, loader_workers, batch_size, readers)

    @property
    def workers(self) -> int:
        return max(self.loader_workers, 1)

    def readers_of(self, rank: int) -> range:
        return range(rank * self.workers, (rank + 1) * self.workers)

    def consumed(self, batch: Batch) -> None:
        self.readers[batch.reader] = ReaderPosition(batch.epoch, batch.index + 1, batch.skipped)
        self.batches += 1

    def skipped(self, rank: int) -> int:
        """Damaged samples and shards skipped in what ``rank`` has consumed."""
        return sum(self.readers[r].skipped for r in self.readers_of(rank))

    def rows(self) -> torch.Tensor:
        """(readers, 3) int64: epoch, next_index, skipped (for gathering across ranks)."""
        return torch.tensor([[p.epoch, p.next_index, p.skipped] for p in self.readers], dtype=torch.int64)

    def with_rows(self, rows: torch.Tensor) -> DataPosition:
        readers = [ReaderPosition(*(int(v) for v in row)) for row in rows.tolist()]
        return DataPosition(self.world_size, self.loader_workers, self.batch_size, readers, self.batches)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> DataPosition:
        return cls(data["world_size"], data["loader_workers"], data["batch_size"],
                   [ReaderPosition(**r) for r in data["readers"]], data["batches"])


def resume_position(saved: dict | None, world_size: int, loader_workers: int,
                    batch_size: int) -> tuple[DataPosition, str | None]:
    """Where this run's readers start: the saved position when its layout matches this run's,
    otherwise the start of a fresh order, with a warning line that says why."""
    fresh = DataPosition.start(world_size, loader_workers, batch_size)
    if saved is None:
        return fresh, None
    position = DataPosition.from_dict(saved)
    layout = ("world_size", "loader_workers", "batch_size")
    then, now = [getattr(position, k) for k in layout], [getattr(fresh, k) for k in layout]
    if then != now:
        changed = ", ".join(f"{k} {a} -> {b}" for k, a, b in zip(layout, then, now) if a != b)
        return fresh, (f"warning: the checkpoint's data position is for another reader layout ({changed}): "
                       f"the data order starts afresh, so samples of the current epoch may repeat or be missed")
    return position, None


# ---- streams

@dataclass(frozen=True)
class Crop:
    """One random crop and where it came from in its reader's stream."""

    image: torch.Tensor  # (3, crop, crop) float in [0, 1]
    key: str
    reader: int
    epoch: int
    index: int  # in the reader's post-shuffle stream of this epoch
    skipped: int  # the reader's damaged samples and shards up to here


@dataclass(frozen=True)
class Batch:
    """Crops of one reader (a DataLoader batch always comes from one worker process)."""

    images: torch.Tensor  # (B, 3, crop, crop)
    keys: list[str]
    reader: int
    epoch: int  # of the last crop
    index: int  # of the last crop
    skipped: int  # the reader's damaged samples and shards up to the last crop


def collate(crops: list[Crop]) -> Batch:
    last = crops[-1]
    assert all(c.reader == last.reader for c in crops), "a batch mixes readers"
    return Batch(torch.stack([c.image for c in crops]), [c.key for c in crops], last.reader, last.epoch,
                 last.index, last.skipped)


class ShardCrops(IterableDataset):
    """An endless stream of :class:`Crop` for one Ray worker, starting at ``start`` (a
    :class:`DataPosition`; default the beginning)."""

    def __init__(self, shards: list[str], crop: int, rank: int, world_size: int, seed: int,
                 shuffle_buffer: int = 64, start: DataPosition | None = None):
        super().__init__()
        self.shards, self.crop, self.rank, self.world_size = list(shards), crop, rank, world_size
        self.seed, self.shuffle_buffer, self.start = seed, shuffle_buffer, start

    def epoch_samples(self, reader: int, readers: int, epoch: int) -> Iterator[dict]:
        """Raw samples of ``reader`` in ``epoch``, shuffled: a function of (seed, reader, epoch)."""
        order = list(self.shards)
        random.Random(f"{self.seed}/shards/{epoch}").shuffle(order)  # the same for every reader
        part = reader_slice(order, reader, readers)
        samples = itertools.islice(read_samples(part.shards, skip_damaged=True), part.sample_offset, None,
                                   part.sample_stride)
        rng = random.Random(f"{self.seed}/buffer/{reader}/{epoch}")
        return shuffle_filter(self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng)(samples)

    def __iter__(self) -> Iterator[Crop]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        reader, readers = self.rank * workers + worker, self.world_size * workers
        begin = self.start.readers[reader] if self.start is not None else ReaderPosition()
        skipped, ahead = begin.skipped, begin.next_index
        for epoch in itertools.count(begin.epoch):
            usable = 0
            # islice walks past the consumed indices: tar bytes are read, nothing is decoded
            for index, sample in itertools.islice(enumerate(self.epoch_samples(reader, readers, epoch)), ahead, None):
                pixels = sample_pixels(sample)
                if pixels is None:
                    skipped += 1
                    continue
                usable += 1
                rng = random.Random(f"{self.seed}/crop/{reader}/{epoch}/{index}")
                yield Crop(random_crop(pixels, self.crop, rng), sample["__key__"], reader, epoch, index, skipped)
            if usable == 0 and ahead == 0:
                raise RuntimeError(f"reader {reader} of {readers} found no usable image in a whole epoch of "
                                   f"{len(self.shards)} shard(s) starting with {self.shards[:1]}")
            ahead = 0



def sample_pixels(sample: dict) -> np.ndarray | None:
    """The decoded image, or None (with a warning) for a damaged sample or shard."""
    if DAMAGED in sample:
        log.warning("skipping the rest of damaged shard %s: %s", sample["__url__"], sample[DAMAGED])
        return None
    data = image_bytes(sample)
    try:
        if data is None:
            raise ImageError(f"no image member (one of {', '.join(IMAGE_EXTENSIONS)})", status="not_image")
        return load_image(data)
    except ImageError as e:
        log.warning("skipping sample %s of %s: %s (%s)", sample.get("__key__"), sample.get("__url__"), e,
                    e.status)
        return None


def crop_batches(shards: list[str], crop: int, batch_size: int, rank: int, world_size: int, seed: int,
                 loader_workers: int = 0, shuffle_buffer: int = 64,
                 start: DataPosition | None = None) -> Iterator[Batch]:
    """Endless :class:`Batch` es of (batch_size, 3, crop, crop) for this worker, continuing from
    ``start`` (a position of the same world size, loader workers and batch size)."""
    if start is not None:
        assert (start.world_size, start.loader_workers, start.batch_size) == (world_size, loader_workers,
                                                                              batch_size), "see resume_position"
    dataset = ShardCrops(shards, crop, rank, world_size, seed, shuffle_buffer, start)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=loader_workers, collate_fn=collate,
                        persistent_workers=loader_workers > 0, prefetch_factor=2 if loader_workers else None)
    workers = max(loader_workers, 1)
    return _in_turn(iter(loader), first=rank * workers + (start.batches if start else 0) % workers,
                    readers=range(rank * workers, (rank + 1) * workers))


def _in_turn(batches: Iterator[Batch], first: int, readers: range) -> Iterator[Batch]:
    """The batches with their readers taking turns from ``first`` on. The DataLoader always begins
    with its worker 0; a run resumed after k batches must begin with worker k mod W to repeat the
    uninterrupted order, so batches that come early wait here (at most one round)."""
    waiting: dict[int, deque[Batch]] = {r: deque() for r in readers}
    for turn in itertools.count(first - readers.start):
        reader = readers[turn % len(readers)]
        while not waiting[reader]:
            batch = next(batches)
            waiting[batch.reader].append(batch)
        yield waiting[reader].popleft()
