"""The image bytes of a request: the raw body, or the one file of a multipart form.

A raw body may be sent as any ``image/*`` type, as ``application/octet-stream`` or with no
Content-Type at all (the decoder tells what it is). ``multipart/form-data`` must hold exactly
one file field: a part whose Content-Disposition has a ``filename``, or whose Content-Type
is an ``image/*`` type; other fields are ignored. Any other Content-Type is a 415.
"""

from __future__ import annotations

from email import policy
from email.message import Message
from email.parser import BytesParser

from runtime import Event, HTTPError

FORM_TYPE = "multipart/form-data"
RAW_TYPES = ("application/octet-stream",)

_HEADERS = BytesParser(policy=policy.HTTP)


def image_bytes(event: Event) -> bytes:
    """The encoded image sent with ``event``; 415 for a type that cannot hold one."""
    header = event.headers.get("content-type", "").strip()
    if not header:
        return event.body
    parsed = Message()
    parsed["content-type"] = header
    media_type = parsed.get_content_type()  # lower case; text/plain when malformed
    if media_type == FORM_TYPE:
        boundary = parsed.get_param("boundary")
        if not isinstance(boundary, str) or not boundary:
            raise HTTPError(400, "multipart/form-data without a boundary parameter")
        return one_file(form_files(event.body, boundary))
    if media_type.startswith("image/") or media_type in RAW_TYPES:
        return event.body
    raise HTTPError(
        415,
        f"Content-Type {header.split(';')[0]!r} cannot carry an image; send image/jpeg, "
        f"image/png (or another image/* type) or {FORM_TYPE} with one file",
    )


def one_file(files: list[bytes]) -> bytes:
    if len(files) != 1:
        found = "no file field" if not files else f"{len(files)} file fields"
        raise HTTPError(400, f"{FORM_TYPE} body has {found}; send exactly one image file")
    return files[0]


def form_files(body: bytes, boundary: str) -> list[bytes]:
    """The contents of the file fields of a multipart body (RFC 7578), in order."""
    delimiter = b"--" + boundary.encode("latin-1", "replace")
    separator = b"\r\n" + delimiter
    if body.startswith(delimiter):
        position = len(delimiter)
    else:  # a preamble before the first part
        found = body.find(separator)
        if found < 0:
            raise HTTPError(400, f"{FORM_TYPE} body has no part (boundary not found)")
        position = found + len(separator)
    files = []
    while not body.startswith(b"--", position):  # "--" after a delimiter closes the body
        line_end = body.find(b"\r\n", position)
        headers_end = body.find(b"\r\n\r\n", line_end)
        part_end = body.find(separator, headers_end + 4)
        if min(line_end, headers_end, part_end) < 0:
            raise HTTPError(400, f"{FORM_TYPE} body is truncated (no closing boundary)")
        if is_file(body[line_end + 2 : headers_end]):
            files.append(body[headers_end + 4 : part_end])
        position = part_end + len(separator)
    return files


def is_file(header_block: bytes) -> bool:
    headers = _HEADERS.parsebytes(header_block + b"\r\n\r\n", headersonly=True)
    if headers.get_param("filename", header="content-disposition") is not None:
        return True
    return "content-type" in headers and headers.get_content_type().startswith("image/")
