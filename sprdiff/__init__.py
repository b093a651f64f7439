"""SPRDiff: an ultra-low-bitrate (<0.03 bpp) one-step diffusion image codec.

>>> from sprdiff import SPRDiff, load_image
>>> model = SPRDiff.from_pretrained("tiny")
>>> records = model.compress([load_image(open("photo.png", "rb").read())])
>>> images = model.decompress(records)

The model is imported lazily: ``sprdiff.images``, ``sprdiff.errors`` and ``sprdiff.bitstream``
stay light (no torch/diffusers), which keeps CPU tasks that only read images cheap to start.
"""

from sprdiff.bitstream import FORMAT_VERSION
from sprdiff.errors import BitstreamError, ImageError, SPRDiffError
from sprdiff.images import load_image

__all__ = ["FORMAT_VERSION", "BitstreamError", "ImageError", "SPRDiff", "SPRDiffConfig", "SPRDiffError",
           "load_image"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "SPRDiff":
        from sprdiff.model import SPRDiff

        return SPRDiff
    if name == "SPRDiffConfig":
        from sprdiff.config import SPRDiffConfig

        return SPRDiffConfig
    raise AttributeError(f"module 'sprdiff' has no attribute {name!r}")
