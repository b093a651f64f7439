"""Ray Data jobs over object storage: encode corpora to Parquet archives and decode them back.

For a Ray Data pipeline of your own, :func:`encode_dataset` and :func:`decode_dataset` apply the
jobs' stages to a Dataset (``docs/archive-format.md`` has an example); they import Ray on call.
"""


def encode_dataset(ds, *, model, image_column: str = "image", key_column: str = "key", **kwargs):
    """A Ray Dataset of image bytes -> a Ray Dataset of archive rows (see ``pipeline.ray_runner.encode_dataset``)."""
    from pipeline.ray_runner import encode_dataset as encode

    return encode(ds, model=model, image_column=image_column, key_column=key_column, **kwargs)


def decode_dataset(ds, *, model, record_column: str = "record", key_column: str = "key", **kwargs):
    """A Ray Dataset of records -> a Ray Dataset of decoded PNGs (see ``pipeline.ray_runner.decode_dataset``)."""
    from pipeline.ray_runner import decode_dataset as decode

    return decode(ds, model=model, record_column=record_column, key_column=key_column, **kwargs)
