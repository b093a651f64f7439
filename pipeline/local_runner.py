"""The jobs' stages run one after another in this process, without Ray.

Same stages, same batches as ``pipeline.ray_runner``, the part writer included; for tests of the
job logic, debugging, and machines without Ray. One model is loaded per call, unless a loaded one
is given.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np

from pipeline.config import DecodeJobConfig, EncodeJobConfig
from pipeline.decode_stages import DecodeRecords, read_archive_rows, write_images
from pipeline.encode_stages import EncodeImages, read_and_decode
from pipeline.part_writer import SUMMARY_COLUMN, PartWriter
from pipeline.parts import PartTask


def _spec(task: PartTask) -> dict[str, np.ndarray]:
    column = np.empty(1, dtype=object)
    column[0] = task.to_json()
    return {"task": column}


def _summaries(batch: dict[str, np.ndarray]) -> Iterator[dict]:
    for text in batch[SUMMARY_COLUMN]:
        yield json.loads(text)


def stream_encode(tasks: list[PartTask], config: EncodeJobConfig, shared: dict, *, model=None) -> Iterator[dict]:
    compute = config.compute
    encoder = EncodeImages(model or config.model, device=compute.actor_device, threads=compute.threads_per_actor,
                           colour_correction=config.colour_correction, rate=config.rate,
                           target_bpp=config.target_bpp, codec=compute.codec)
    writer = PartWriter(shared, {t.index: t.payload for t in tasks})
    for task in tasks:
        for batch in read_and_decode(_spec(task), max_pixels=config.max_pixels, batch_size=compute.codec.batch_size):
            yield from _summaries(writer(encoder(batch)))


def stream_decode(tasks: list[PartTask], config: DecodeJobConfig, shared: dict, *, loaded=None) -> Iterator[dict]:
    """``shared["model"]``: an explicit --model, or None (each record's weights by its fingerprint);
    ``loaded``: a model already in memory, used for the records it wrote."""
    compute = config.compute
    decoder = DecodeRecords(shared.get("model"), places=config.model_stores,
                            loaded=[loaded] if loaded is not None else (), device=compute.actor_device,
                            threads=compute.threads_per_actor, codec=compute.codec)
    writer = PartWriter(shared, {t.index: t.payload for t in tasks})
    for task in tasks:
        for batch in read_archive_rows(_spec(task)):
            images = write_images(decoder(batch), output=config.output, image_format=config.image_format,
                                  quality=config.quality)
            yield from _summaries(writer(images))
