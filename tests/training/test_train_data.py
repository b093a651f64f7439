"""Training samples from shards: each worker reads its own part, crops, bad samples skipped."""

from __future__ import annotations

import itertools

import pytest
import torch
from webdataset import TarWriter

from pipeline.shards import make_shards
from pipeline.training.data import ShardCrops, crop_batches, list_shards, read_samples, reader_slice


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


def test_crops_are_random_float_patches(local_shards):
    stream = iter(ShardCrops(list_shards(local_shards), crop=64, rank=0, world_size=1, seed=1, shuffle_buffer=2))
    crops = [next(stream) for _ in range(10)]  # more than the corpus: the stream goes on epoch after epoch
    assert all(c.shape == (3, 64, 64) and c.dtype == torch.float32 for c in crops)
    assert all(0 <= c.min() and c.max() <= 1 for c in crops)
    assert len({c.sum().item() for c in crops}) > 5
    again = iter(ShardCrops(list_shards(local_shards), crop=64, rank=0, world_size=1, seed=1, shuffle_buffer=2))
    assert torch.equal(next(again), crops[0])  # seeded


def test_bad_samples_are_skipped_and_counted(tmp_path, sample_images):
    from sprdiff.images import encode_png

    path = tmp_path / "mixed.tar"
    with open(path, "wb") as f, TarWriter(f, encoder=False) as tar:
        tar.write({"__key__": "a", "png": b"\x89PNG broken"})
        tar.write({"__key__": "b", "txt": b"no image member"})
        tar.write({"__key__": "c", "png": encode_png(sample_images["chelsea"])})
    dataset = ShardCrops([str(path)], crop=64, rank=0, world_size=1, seed=0, shuffle_buffer=1)
    first = next(iter(dataset))
    assert first.shape == (3, 64, 64) and dataset.skipped == 2


def test_batches_stream_from_s3(s3_bucket, image_folder):
    make_shards(str(image_folder), f"{s3_bucket}/shards", crop=64, per_shard=2, threads=2)
    batches = crop_batches(list_shards(f"{s3_bucket}/shards"), crop=64, batch_size=2, rank=1, world_size=2, seed=0,
                           shuffle_buffer=2)
    batch = next(batches)
    assert batch.shape == (2, 3, 64, 64)


def test_no_shards_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no training data"):
        list_shards(str(tmp_path / "absent"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="no .tar shards"):
        list_shards(str(tmp_path))


def test_loader_processes_split_the_shards_too(local_shards):
    batches = crop_batches(list_shards(local_shards), crop=64, batch_size=2, rank=0, world_size=1, seed=0,
                           loader_workers=2, shuffle_buffer=2)
    assert [next(batches).shape for _ in range(3)] == [(2, 3, 64, 64)] * 3
    del batches  # stops the two loader processes
