"""Pictures and requests for the classify function's tests, and a way to start it.

The function's handler imports its sibling modules (images, uploads, classifier) by name, as
the runtime's loader allows by putting the function's folder on ``sys.path``; ``start_classify``
does the same before loading it.
"""

from __future__ import annotations

import io
import os
import struct
import sys
import zlib
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image

from runtime import Context, Event
from tests.functions.conftest import FUNCTIONS_DIR, load_handler
from tests.functions.events import make_event

FOLDER = FUNCTIONS_DIR / "classify"
BOUNDARY = "----edgefaas-test-7MA4YWxkTrZu0gW"
FORM_TYPE = f"multipart/form-data; boundary={BOUNDARY}"
ORIENTATION = 0x0112  # the EXIF tag


def add_function_folder() -> None:
    if str(FOLDER) not in sys.path:
        sys.path.insert(0, str(FOLDER))


def start_classify(root: Path = FOLDER, env: dict[str, str] | None = None) -> ModuleType:
    """A fresh copy of the handler after ``init`` with a real Context."""
    add_function_folder()
    module = load_handler("classify")
    context = Context("classify", root, os.getpid(), 5.0, 512, env=env or {})
    module.init(context)
    return module


def heldout() -> tuple[np.ndarray, np.ndarray]:
    """The shipped held-out digits (uint8 N×8×8, 0-255) and their labels."""
    with np.load(FOLDER / "heldout.npz") as data:
        return data["images"], data["labels"]


def render(pixels: np.ndarray, side: int = 32) -> Image.Image:
    """An 8×8 digit drawn ``side`` pixels square, blocky, as train.py draws them."""
    return Image.fromarray(pixels).resize((side, side), Image.Resampling.NEAREST)


def encode(image: Image.Image, kind: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, kind, **options)
    return buffer.getvalue()


def exif_jpeg(upright: Image.Image, orientation: int) -> bytes:
    """A JPEG whose pixels are stored turned so that EXIF ``orientation`` shows ``upright``."""
    stored = {
        1: upright,
        3: upright.transpose(Image.Transpose.ROTATE_180),
        6: upright.transpose(Image.Transpose.ROTATE_90),  # viewer turns it 90° clockwise
        8: upright.transpose(Image.Transpose.ROTATE_270),
    }[orientation]
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return encode(stored, "JPEG", quality=95, exif=exif.tobytes())


def image_event(data: bytes, content_type: str | None = "image/png", query: str = "") -> Event:
    headers = {} if content_type is None else {"content-type": content_type}
    pairs = [tuple(pair.split("=", 1)) for pair in query.split("&") if pair]
    return make_event(data, headers=headers, query=pairs)  # type: ignore[arg-type]


def form(*parts: tuple[dict[str, str], bytes], preamble: bytes = b"") -> bytes:
    """A multipart/form-data body (boundary ``BOUNDARY``) of (headers, content) parts."""
    body = preamble
    for headers, content in parts:
        lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        body += f"--{BOUNDARY}\r\n{lines}\r\n".encode() + content + b"\r\n"
    return body + f"--{BOUNDARY}--\r\n".encode()


def file_part(
    data: bytes, name: str = "image", filename: str | None = "frame.png", kind: str = "image/png"
) -> tuple[dict[str, str], bytes]:
    disposition = f'form-data; name="{name}"'
    if filename is not None:
        disposition += f'; filename="{filename}"'
    return {"Content-Disposition": disposition, "Content-Type": kind}, data


def text_part(name: str, value: str) -> tuple[dict[str, str], bytes]:
    return {"Content-Disposition": f'form-data; name="{name}"'}, value.encode()


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width``×``height`` grayscale pixels but holds almost no data: what
    a decompression bomb looks like until its pixels are decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )
