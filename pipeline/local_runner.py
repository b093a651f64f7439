"""The jobs' stages run one after another in this process, without Ray.

Same stages, same batches as ``pipeline.ray_runner``; for tests of the job logic, debugging, and
machines without Ray. One model is loaded per call, unless a loaded one is given.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from pipeline.config import DecodeJobConfig, EncodeJobConfig
from pipeline.decode_stages import ArchiveShard, DecodeRecords, read_archive_rows, write_images
from pipeline.encode_stages import EncodeImages, read_and_decode
from pipeline.inputs import WorkShard


def _table(batch: dict[str, np.ndarray]) -> pa.Table:
    return pa.table({k: pa.array(list(v)) if v.dtype == object else pa.array(v) for k, v in batch.items()})


def stream_encode(shards: list[WorkShard], config: EncodeJobConfig, *, model=None) -> Iterator[pa.Table]:
    compute = config.compute
    encoder = EncodeImages(model or config.model, device=compute.actor_device, threads=compute.threads_per_actor,
                           colour_correction=config.colour_correction)
    for shard in shards:
        for batch in read_and_decode({"shard": np.array([shard.to_json()])}, max_pixels=config.max_pixels):
            yield _table(encoder(batch))


def stream_decode(shards: list[ArchiveShard], config: DecodeJobConfig, model: str, *,
                  loaded=None) -> Iterator[pa.Table]:
    compute = config.compute
    decoder = DecodeRecords(loaded or model, device=compute.actor_device, threads=compute.threads_per_actor)
    for shard in shards:
        spec = {"shard": np.array([shard.to_json()])}
        for batch in read_archive_rows(spec, keys=config.keys, where=config.where):
            yield _table(write_images(decoder(batch), output=config.output, image_format=config.image_format,
                                      quality=config.quality))
