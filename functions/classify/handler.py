"""Classify: a camera frame in, the best labels of an ONNX image classifier out.

Event: the image as the raw body (``image/jpeg``, ``image/png`` or another ``image/*`` type
that Pillow reads, ``application/octet-stream``, or no Content-Type), or as the one file field
of a ``multipart/form-data`` body (see uploads.py). ``?top_k=N`` (1-10) asks for N labels
instead of the model's ``top_k``.

Response, status 200, best label first (never more labels than the model has)::

    {"top": [{"label": "7", "score": 0.981}, {"label": "9", "score": 0.012}, ...],
     "model": "digits-mlp"}

Errors, each with a message; the worker stays up and serves the next call: an empty body, a
body that is not an image, a truncated or corrupt image, an image of more than 40 million
pixels (refused from its header, before decoding), a multipart body with no file field or
two, and a bad ``top_k`` are 400; a Content-Type that cannot carry an image (``text/plain``,
``application/json``, a urlencoded form ...) is 415.

The model: ``model.json`` in the model folder says which ONNX file, labels and input to use
and how to preprocess (keys in classifier.py; preprocessing in images.py). The shipped model
is a digit classifier trained by train.py; any ONNX image classifier with a float input of
rank 4 can take its place.

Settings, from the manifest's ``env:`` (then the process environment):
``CLASSIFY_MODEL_DIR``, the model folder, relative to the function's folder (default: the
function's folder itself); ``CLASSIFY_THREADS``, onnxruntime's intra-op threads (default 1).

The session is created once per worker in ``init``, after the fork. With batching on, the
runtime calls ``handle_batch``: each event is decoded on its own, so a bad image is an error
for its own call only, and the good ones go through the model in one run with a batch axis.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import TypedDict

import numpy as np
from classifier import MAX_TOP_K, Classifier, Label, load_card
from images import load_input
from uploads import image_bytes

from runtime import Context, Event, HTTPError

MODEL_DIR_ENV = "CLASSIFY_MODEL_DIR"
THREADS_ENV = "CLASSIFY_THREADS"
_TOP_K = re.compile(r"[0-9]{1,2}")


class Answer(TypedDict):
    top: list[Label]
    model: str


@dataclass(frozen=True)
class Frame:
    """One event, read and preprocessed, waiting for its turn in the model."""

    pixels: np.ndarray
    top_k: int


_classifier: Classifier | None = None


def init(context: Context) -> None:
    """Load model.json and the model, and start the session, once per worker."""
    global _classifier  # noqa: PLW0603 — per-worker state, set once after fork
    folder = context.root / setting(context, MODEL_DIR_ENV, ".")
    threads = setting(context, THREADS_ENV, "1")
    if not (threads.isascii() and threads.isdigit() and 1 <= int(threads) <= 64):
        raise ValueError(f"{THREADS_ENV} must be a whole number 1-64, got {threads!r}")
    _classifier = Classifier(load_card(folder), int(threads))


def handle(event: Event) -> Answer:
    """The best labels for one image; see the module docstring."""
    classifier = started()
    frame = read_frame(event, classifier)
    return answer(classifier, classifier.scores(frame.pixels[np.newaxis])[0], frame.top_k)


def handle_batch(events: list[Event]) -> list[Answer | Exception]:
    """One answer or error per event, in order; the good images run through the model once."""
    classifier = started()
    frames: list[Frame | Exception] = []
    for event in events:
        try:
            frames.append(read_frame(event, classifier))
        except Exception as exc:  # this event's own error; the others go on
            frames.append(exc)
    good = [frame for frame in frames if isinstance(frame, Frame)]
    rows = iter(classifier.scores(np.stack([f.pixels for f in good])) if good else [])
    return [
        answer(classifier, next(rows), frame.top_k) if isinstance(frame, Frame) else frame
        for frame in frames
    ]


def read_frame(event: Event, classifier: Classifier) -> Frame:
    card = classifier.card
    top_k = requested_top_k(event, card.top_k)
    pixels = load_input(image_bytes(event), card.preprocessing)
    return Frame(pixels, min(top_k, len(card.labels)))


def answer(classifier: Classifier, row: np.ndarray, top_k: int) -> Answer:
    return {"top": classifier.top(row, top_k), "model": classifier.card.name}


def requested_top_k(event: Event, default: int) -> int:
    value = event.query.get("top_k")
    if value is None:
        return default
    if not _TOP_K.fullmatch(value) or not 1 <= int(value) <= MAX_TOP_K:
        raise HTTPError(400, f"query parameter 'top_k' must be a whole number 1-{MAX_TOP_K}")
    return int(value)


def setting(context: Context, name: str, default: str) -> str:
    return context.env.get(name, os.environ.get(name, default))


def started() -> Classifier:
    if _classifier is None:
        raise RuntimeError("classify handler called before init(context)")
    return _classifier
