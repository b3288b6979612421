"""Per-example image transforms in numpy/PIL: decode, resize, flip.

The pixels stay uint8 (the model normalises on the device). Resizing is PIL's bilinear
resize to a square, ignoring the aspect ratio, as torchvision's `Resize((s, s))` does on the
PIL images of the official code.
"""

import io

import numpy as np
from PIL import Image, UnidentifiedImageError


def decode(encoded: bytes, *, name: str) -> Image.Image:
    """Decodes an encoded image to RGB; a corrupt image raises an error that names it."""
    try:
        image = Image.open(io.BytesIO(encoded))
        image.load()
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise ValueError(f"cannot decode image {name}: {error}") from error
    return image.convert("RGB")


def resize(image: Image.Image, size: int) -> np.ndarray:
    """`size x size` bilinear resize (aspect ratio ignored) -> `[size, size, 3]` uint8."""
    if image.size != (size, size):
        image = image.resize((size, size), Image.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def flip_horizontally(pixels: np.ndarray) -> np.ndarray:
    """Mirrors `[H, W, 3]` pixels left to right."""
    return np.ascontiguousarray(pixels[:, ::-1])


def load_image(encoded: bytes, *, size: int, flip: bool, name: str) -> np.ndarray:
    """decode -> resize -> optional flip: `[size, size, 3]` uint8."""
    pixels = resize(decode(encoded, name=name), size)
    return flip_horizontally(pixels) if flip else pixels
