"""Training samples from shards: each reader reads its own part in an order that a saved position
can continue exactly; damaged samples and shards are skipped and counted."""

from __future__ import annotations

import itertools
import json
import logging
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from webdataset import TarWriter

from pipeline.shards import make_shards
from pipeline.training.data import (
    DataPosition,
    ShardCrops,
    crop_batches,
    list_shards,
    read_samples,
    reader_slice,
    resume_position,
)
from sprdiff.images import encode_png


def write_tar(path, samples: list[dict]) -> str:
    with open(path, "wb") as f, TarWriter(f, encoder=False) as tar:
        for sample in samples:
            tar.write(sample)
    return str(path)


def photo(seed: int) -> bytes:
    """A small noisy PNG: every crop of it differs from every other."""
    return encode_png(np.random.default_rng(seed).integers(0, 256, (72, 88, 3), dtype=np.uint8))


CORPUS_KEYS = [f"s{i:02d}" for i in range(16) if i != 2]  # the usable samples of ``corpus``


@pytest.fixture
def corpus(tmp_path) -> list[str]:
    """8 tars of 2 samples (s00..s15, s02 a broken PNG), then a garbage "shard" (shard-8.tar)."""
    shards = []
    for shard in range(8):
        samples = [{"__key__": f"s{i:02d}", "png": photo(i) if i != 2 else b"\x89PNG cut", "json": b"{}"}
                   for i in (2 * shard, 2 * shard + 1)]
        shards.append(write_tar(tmp_path / f"shard-{shard}.tar", samples))
    (tmp_path / "shard-8.tar").write_bytes(b"not a tar at all" * 100)
    return [*shards, str(tmp_path / "shard-8.tar")]


def take(batches, n: int) -> list:
    return [next(batches) for _ in range(n)]


def test_shards_go_round_robin_and_samples_when_shards_are_few():
    shards = [f"s{i}.tar" for i in range(5)]
    assert reader_slice(shards, 0, 2).shards == ("s0.tar", "s2.tar", "s4.tar")
    assert reader_slice(shards, 1, 2).shards == ("s1.tar", "s3.tar")
    few = reader_slice(shards[:1], 1, 2)
    assert few.shards == ("s0.tar",) and (few.sample_stride, few.sample_offset) == (2, 1)
    with pytest.raises(ValueError):
        reader_slice(shards, 2, 2)


@pytest.mark.parametrize("per_shard", [1, 10])  # 4 shards (shard split), 1 shard (sample split)
def test_two_workers_read_disjoint_samples_covering_the_corpus(tmp_path, image_folder, expected_keys, per_shard):
    out = tmp_path / "shards"
    make_shards(str(image_folder), str(out), crop=64, per_shard=per_shard, threads=2)
    shards = list_shards(str(out))
    seen = []
    for rank in range(2):
        part = reader_slice(shards, rank, 2)
        samples = itertools.islice(read_samples(part.shards), part.sample_offset, None, part.sample_stride)
        seen.append({s["__key__"] for s in samples})
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == set(expected_keys)


@pytest.mark.parametrize("used", [slice(0, 5), slice(3, 5)])  # more shards than the 4 readers, and fewer
def test_every_epoch_each_sample_goes_to_exactly_one_reader(corpus, used):
    shards = corpus[used]
    readers = [iter(ShardCrops(shards, crop=64, rank=rank, world_size=4, seed=3, shuffle_buffer=3))
               for rank in range(4)]
    keys = {0: [], 1: []}
    for stream in readers:
        for crop in stream:
            if crop.epoch == 2:
                break
            keys[crop.epoch].append(crop.key)
    usable = [key for key in CORPUS_KEYS if used.start * 2 <= int(key[1:]) < used.stop * 2]
    assert sorted(keys[0]) == sorted(keys[1]) == usable  # no key twice, none missing


def test_crops_are_random_float_patches(local_shards):
    stream = iter(ShardCrops(list_shards(local_shards), crop=64, rank=0, world_size=1, seed=1, shuffle_buffer=2))
    crops = [next(stream) for _ in range(10)]  # more than the corpus: the stream goes on epoch after epoch
    assert all(c.image.shape == (3, 64, 64) and c.image.dtype == torch.float32 for c in crops)
    assert all(0 <= c.image.min() and c.image.max() <= 1 for c in crops)
    assert len({c.image.sum().item() for c in crops}) > 5
    assert [(c.epoch, c.index) for c in crops[:5]] == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0)]


def test_the_same_seed_gives_the_same_sequence_and_another_seed_another(corpus):
    def run(seed):
        batches = take(crop_batches(corpus, crop=64, batch_size=3, rank=0, world_size=1, seed=seed,
                                    shuffle_buffer=4), 12)
        return [k for b in batches for k in b.keys], torch.cat([b.images for b in batches])

    keys, images = run(seed=5)
    again_keys, again_images = run(seed=5)
    assert keys == again_keys and torch.equal(images, again_images)
    assert run(seed=6)[0] != keys


@pytest.mark.parametrize(("world_size", "rank", "loader_workers"), [(1, 0, 0), (1, 0, 2), (2, 1, 2)])
def test_a_reader_started_from_a_saved_position_yields_the_rest_of_the_sequence(corpus, world_size, rank,
                                                                                loader_workers):
    def batches(start=None):
        return crop_batches(corpus, crop=64, batch_size=2, rank=rank, world_size=world_size, seed=7,
                            loader_workers=loader_workers, shuffle_buffer=3, start=start)

    whole = take(batches(), 19)  # several epochs of each reader
    assert {b.reader for b in whole} == set(range(rank * max(loader_workers, 1), (rank + 1) * max(loader_workers, 1)))
    position = DataPosition.start(world_size, loader_workers, batch_size=2)
    consumed = 7  # odd: with two loader processes the resumed run must begin with the second one
    for batch in whole[:consumed]:
        position.consumed(batch)
    saved = json.loads(json.dumps(position.to_dict()))  # as a checkpoint stores it
    start, warning = resume_position(saved, world_size, loader_workers, batch_size=2)
    assert warning is None

    rest = take(batches(start), len(whole) - consumed)
    assert [b.keys for b in rest] == [b.keys for b in whole[consumed:]]
    assert all(torch.equal(a.images, b.images) for a, b in zip(rest, whole[consumed:]))  # the same crops too
    assert [(b.reader, b.epoch, b.index, b.skipped) for b in rest] == [
        (b.reader, b.epoch, b.index, b.skipped) for b in whole[consumed:]]
    assert max(b.epoch for b in whole) >= 2 and max(b.skipped for b in whole) >= 2


def test_a_position_of_another_layout_starts_afresh_with_a_warning():
    saved = DataPosition.start(2, 2, 1)
    saved.readers[3] = saved.readers[3].__class__(epoch=4, next_index=9, skipped=1)
    position, warning = resume_position(saved.to_dict(), world_size=1, loader_workers=2, batch_size=1)
    assert position == DataPosition.start(1, 2, 1)
    assert "world_size 2 -> 1" in warning and "starts afresh" in warning
    same, none = resume_position(saved.to_dict(), world_size=2, loader_workers=2, batch_size=1)
    assert none is None and same == saved


def test_damaged_samples_and_shards_are_skipped_counted_and_the_stream_goes_on(tmp_path, corpus, caplog):
    with tarfile.open(corpus[0]) as tar:
        second = tar.getmember("s01.png")
    cut = tmp_path / "cut.tar"
    cut.write_bytes(Path(corpus[0]).read_bytes()[:second.offset_data + second.size // 2])  # s00 whole, s01 cut
    mixed = write_tar(tmp_path / "mixed.tar", [
        {"__key__": "m0", "png": b"\x89PNG broken"},
        {"__key__": "m1", "txt": b"no image member"},
        {"__key__": "m2", "png": photo(99)}])
    missing = str(tmp_path / "never-written.tar")
    shards = [str(cut), corpus[-1], missing, mixed, corpus[3]]  # 5 damaged: cut, garbage, missing, m0, m1

    with caplog.at_level(logging.WARNING, logger="pipeline.training.data"):
        stream = iter(ShardCrops(shards, crop=64, rank=0, world_size=1, seed=0, shuffle_buffer=4))
        crops = list(itertools.takewhile(lambda c: c.epoch < 3, stream))
    per_epoch = {e: [c for c in crops if c.epoch == e] for e in range(3)}
    for epoch, epoch_crops in per_epoch.items():
        assert sorted(c.key for c in epoch_crops) == ["m2", "s00", "s06", "s07"]
        damaged_indices = set(range(9)) - {c.index for c in epoch_crops}  # 4 usable + 5 damaged per epoch
        for c in epoch_crops:  # the count at each crop: every damaged index before it, all epochs
            assert c.skipped == 5 * epoch + sum(i < c.index for i in damaged_indices)
    assert f"skipping the rest of damaged shard {cut}" in caplog.text
    assert "never-written.tar" in caplog.text and "shard-8.tar" in caplog.text
    assert "skipping sample m0" in caplog.text and "skipping sample m1" in caplog.text


def test_a_damaged_shard_raises_where_samples_are_read_without_skipping(corpus):
    with pytest.raises(Exception, match="invalid header|empty"):
        list(read_samples([corpus[-1]]))


def test_an_epoch_without_a_usable_image_is_an_error(tmp_path):
    shard = write_tar(tmp_path / "bad.tar", [{"__key__": "a", "png": b"\x89PNG broken"}])
    with pytest.raises(RuntimeError, match="no usable image"):
        next(iter(ShardCrops([shard], crop=64, rank=0, world_size=1, seed=0)))


def test_batches_stream_from_s3(s3_bucket, image_folder):
    make_shards(str(image_folder), f"{s3_bucket}/shards", crop=64, per_shard=2, threads=2)
    shards = list_shards(f"{s3_bucket}/shards") + [f"{s3_bucket}/shards/deleted-meanwhile.tar"]
    batches = crop_batches(shards, crop=64, batch_size=2, rank=0, world_size=1, seed=0, shuffle_buffer=2)
    seen = take(batches, 3)  # more than an epoch (4 samples)
    assert [b.images.shape for b in seen] == [(2, 3, 64, 64)] * 3
    assert seen[-1].skipped >= 1  # the missing object counted as a damaged shard, the stream went on


def test_no_shards_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no training data"):
        list_shards(str(tmp_path / "absent"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="no .tar shards"):
        list_shards(str(tmp_path))


def test_loader_processes_take_turns_and_split_the_shards(local_shards):
    batches = crop_batches(list_shards(local_shards), crop=64, batch_size=2, rank=0, world_size=1, seed=0,
                           loader_workers=2, shuffle_buffer=2)
    seen = take(batches, 4)
    assert [b.images.shape for b in seen] == [(2, 3, 64, 64)] * 4
    assert [b.reader for b in seen] == [0, 1, 0, 1]
    assert not set(seen[0].keys) & set(seen[1].keys)  # one epoch of each reader: disjoint halves
    del batches  # stops the two loader processes
