"""How a run's images are stored: the originals, or pre-resized at the training size.

`data.storage` is `original` (the data set's own encoded images, decoded and resized by
every run) or a pre-resized encoding of images already `size x size` after the training
resize (`preprocessing.resize`: PIL bilinear, aspect ratio ignored):

- `jpeg<q>`: JPEG at quality q (PIL's 4:2:0 chroma subsampling): small, lossy;
- `raw`: binary PPM, a 15-byte header and the pixels: 3 bytes per pixel, exactly the pixels
  a run decoding the originals computes.

Both decode with `preprocessing.decode`, so a run reads either kind the same way.
Imports no TensorFlow (the config checks use it).
"""

import io
import re
from typing import NamedTuple

from PIL import Image

from lln_jax.data import preprocessing

ORIGINAL = "original"
_PATTERN = re.compile(r"raw|jpeg([1-9][0-9]?|100)")


class Storage(NamedTuple):
    """How a pre-resized store encodes its images.

    Attributes:
      size: the side of the square images.
      encoding: `raw` or `jpeg<quality>`.
    """

    size: int
    encoding: str

    @property
    def name(self) -> str:
        return f"resized-{self.size}-{self.encoding}"

    @property
    def quality(self) -> int | None:
        match = _PATTERN.fullmatch(self.encoding)
        return int(match.group(1)) if match.group(1) else None


def is_valid(storage: str) -> bool:
    """Whether `storage` names original storage or a pre-resized encoding."""
    return storage == ORIGINAL or _PATTERN.fullmatch(storage) is not None


def parse(storage: str, size: int) -> Storage | None:
    """`data.storage` and `data.image_size` -> the store to read (None: the originals)."""
    if not is_valid(storage):
        raise ValueError(f"storage {storage!r}: give {ORIGINAL!r}, 'raw' or 'jpeg<1..100>'")
    return None if storage == ORIGINAL else Storage(size, storage)


def encode(encoded: bytes, storage: Storage, *, name: str) -> bytes:
    """One original image -> its pre-resized bytes."""
    pixels = preprocessing.resize(preprocessing.decode(encoded, name=name), storage.size)
    buffer = io.BytesIO()
    if storage.quality is None:
        Image.fromarray(pixels).save(buffer, format="PPM")
    else:
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=storage.quality)
    return buffer.getvalue()
