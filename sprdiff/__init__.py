"""SPRDiff: an ultra-low-bitrate (<0.03 bpp) one-step diffusion image codec.

>>> from sprdiff import SPRDiff, load_image
>>> model = SPRDiff.from_pretrained("tiny")
>>> records = model.compress([load_image(open("photo.png", "rb").read())])
>>> images = model.decompress(records)
"""

from sprdiff.bitstream import FORMAT_VERSION
from sprdiff.config import SPRDiffConfig
from sprdiff.errors import BitstreamError, ImageError, SPRDiffError
from sprdiff.images import load_image
from sprdiff.model import SPRDiff

__all__ = ["FORMAT_VERSION", "BitstreamError", "ImageError", "SPRDiff", "SPRDiffConfig", "SPRDiffError",
           "load_image"]
__version__ = "0.1.0"
