"""Decode an uploaded image and turn it into one input of the model.

Decoding is guarded, since the bytes come from the network: only the formats in ``FORMATS``
are tried (never EPS, whose plugin runs Ghostscript), the pixel count is read from the header
and checked against ``MAX_PIXELS`` before a single pixel is decoded, and every decoder failure
becomes an ``HTTPError(400)`` with the decoder's words in the message.

Then, as every camera pipeline does: EXIF orientation is applied, the image is converted to
the model's mode ("L" or "RGB"; alpha is dropped), resized to the model's size (ignoring the
aspect ratio: a camera sends frames of one shape), scaled, normalised per channel and laid
out as the model wants (CHW or HWC; the batch axis is added by the caller).
"""

from __future__ import annotations

import io
import struct
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageOps

from runtime import HTTPError

FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
MAX_PIXELS = 40_000_000  # a 40 MP frame decodes to 120 MB of RGB; cameras send far less

# What Pillow's plugins raise on bytes they cannot make sense of; every one is the caller's.
DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    TypeError,
    EOFError,
    IndexError,
    KeyError,
    struct.error,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)

WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # 16-bit grayscale, e.g. from a PNG

Layout = Literal["NCHW", "NHWC"]
Mode = Literal["L", "RGB"]

RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class Preprocessing:
    """How a decoded image becomes the model's input: ``(pixel * scale - mean) / std``."""

    size: tuple[int, int]  # (height, width) in pixels
    mode: Mode
    layout: Layout
    resample: str  # a key of RESAMPLING
    scale: float
    mean: tuple[float, ...]  # one per channel
    std: tuple[float, ...]

    @property
    def channels(self) -> int:
        return 1 if self.mode == "L" else 3

    @property
    def shape(self) -> tuple[int, int, int]:
        """The shape of one input, without the batch axis."""
        height, width = self.size
        if self.layout == "NCHW":
            return (self.channels, height, width)
        return (height, width, self.channels)


def load_input(data: bytes, preprocessing: Preprocessing) -> np.ndarray:
    """The model input (float32, ``preprocessing.shape``) for an encoded image."""
    return to_input(decode(data, preprocessing.size), preprocessing)


def decode(data: bytes, size: tuple[int, int] = (0, 0)) -> Image.Image:
    """Decode ``data`` with EXIF orientation applied; 400 when it is not a usable image.

    ``size`` (height, width) lets a JPEG decode at a reduced scale (1/2, 1/4 or 1/8, by
    Pillow's ``draft``) that is still at least that size in both directions: the DCT does the
    first step of the downscaling, and decoding a camera frame gets two to four times faster.
    """
    if not data:
        raise HTTPError(400, "request body is empty; expected an image")
    with warnings.catch_warnings():
        # Pillow warns, rather than fails, on some odd files and on images over its own
        # bomb limit; the first is noise for a caller, the second an error for us.
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=FORMATS)
            check_pixels(image.size)
            if size != (0, 0):
                side = max(size)  # the EXIF rotation may swap height and width
                image.draft(image.mode, (side, side))
            image.load()
            ImageOps.exif_transpose(image, in_place=True)
            return image
        except HTTPError:
            raise
        except Image.UnidentifiedImageError:
            raise HTTPError(400, f"request body is not an image ({', '.join(FORMATS)})") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise HTTPError(400, f"image has more than {MAX_PIXELS:,} pixels") from None
        except DECODE_ERRORS as exc:
            raise HTTPError(400, f"image cannot be decoded: {exc or type(exc).__name__}") from None


def check_pixels(size: tuple[int, int]) -> None:
    width, height = size
    if width * height > MAX_PIXELS:
        raise HTTPError(
            400,
            f"image is {width}×{height} = {width * height:,} pixels; the limit is {MAX_PIXELS:,}",
        )
    if width < 1 or height < 1:
        raise HTTPError(400, f"image is {width}×{height} pixels; it has no pixels")


def to_input(image: Image.Image, preprocessing: Preprocessing) -> np.ndarray:
    """Convert, resize, normalise and lay out one decoded image."""
    height, width = preprocessing.size
    if image.mode in WIDE_MODES:  # Pillow's convert would clip 16-bit levels at 255
        wide = np.clip(np.asarray(image), 0, 65535).astype(np.uint32)
        image = Image.fromarray((wide >> 8).astype(np.uint8))
    if image.mode != preprocessing.mode:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # palette transparency given as bytes, and such
            image = image.convert(preprocessing.mode)
    if image.size != (width, height):
        image = image.resize((width, height), RESAMPLING[preprocessing.resample])
    pixels = np.asarray(image).reshape(height, width, preprocessing.channels)
    channels_first = preprocessing.layout == "NCHW"
    if channels_first:
        pixels = pixels.transpose(2, 0, 1)
    inputs = pixels.astype(np.float32)  # a contiguous copy, normalised in place
    std = np.asarray(preprocessing.std, dtype=np.float32)
    mean = np.asarray(preprocessing.mean, dtype=np.float32)
    per_channel = (-1, 1, 1) if channels_first else (-1,)
    inputs *= (preprocessing.scale / std).reshape(per_channel)
    inputs -= (mean / std).reshape(per_channel)
    return inputs
