"""An ONNX image classifier described by a ``model.json``, run with onnxruntime.

``model.json`` (keys other than these are rejected)::

    {"name": "digits-mlp",       # optional: the "model" of every answer; default the folder's name
     "model": "model.onnx",      # optional: the ONNX file, next to model.json; default model.onnx
     "labels": "labels.json",    # optional: a JSON list of one label per class; default labels.json
     "input": "image",           # required: the name of the model's image input (float32, rank 4)
     "output": "probabilities",  # optional: the output with the class scores; default the first
     "layout": "NCHW",           # required: "NCHW" or "NHWC"
     "size": [8, 8],             # required: [height, width] of the input, 1-4096 pixels each
     "mode": "L",                # required: "L" (one channel) or "RGB" (three)
     "resample": "box",          # optional: nearest, box, bilinear (default), bicubic, lanczos
     "scale": 0.00392156862745098,  # optional: pixel 0-255 times scale; default 1/255
     "mean": [0.0], "std": [1.0],   # optional: per channel, after scale; default 0 and 1
     "top_k": 3,                 # optional: labels in an answer, 1-10; default 3
     "softmax": false}           # optional: true when the output is logits; default false

A bad file stops the function from starting with ``ValueError("model.json: ...")`` naming the
key, and so does a model that does not match it (input name, rank, channels, size, labels).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import onnxruntime as ort
from images import RESAMPLING, Preprocessing

CARD_FILE = "model.json"
MAX_TOP_K = 10
MAX_SIDE = 4096
KEYS = (
    {"name", "model", "labels", "input", "output"}  # the files and tensors
    | {"layout", "size", "mode", "resample", "scale", "mean", "std"}  # preprocessing
    | {"top_k", "softmax"}  # the answer
)


class Label(TypedDict):
    label: str
    score: float


@dataclass(frozen=True)
class ModelCard:
    """What ``model.json`` says about a model, checked."""

    name: str
    model: Path
    labels: tuple[str, ...]
    input: str
    output: str | None
    preprocessing: Preprocessing
    top_k: int
    softmax: bool


def load_card(folder: Path) -> ModelCard:
    """Read and check ``folder/model.json`` and the labels it names."""
    data = read_json(folder / CARD_FILE, CARD_FILE)
    if not isinstance(data, dict):
        raise ValueError(f"{CARD_FILE} must be an object")
    unknown = sorted(set(data) - KEYS)
    if unknown:
        raise ValueError(f"{CARD_FILE}: unknown key '{unknown[0]}' (allowed: {sorted(KEYS)})")
    mode = choice(data, "mode", ("L", "RGB"), None)
    channels = 1 if mode == "L" else 3
    return ModelCard(
        name=text(data, "name", folder.resolve().name),
        model=folder / text(data, "model", "model.onnx"),
        labels=load_labels(folder / text(data, "labels", "labels.json")),
        input=text(data, "input", None),
        output=text(data, "output", "") or None,
        preprocessing=Preprocessing(
            size=size(data),
            mode=mode,  # type: ignore[arg-type]  # checked by choice()
            layout=choice(data, "layout", ("NCHW", "NHWC"), None),  # type: ignore[arg-type]
            resample=choice(data, "resample", tuple(RESAMPLING), "bilinear"),
            scale=number(data, "scale", 1 / 255, positive=True),
            mean=numbers(data, "mean", channels, 0.0, positive=False),
            std=numbers(data, "std", channels, 1.0, positive=True),
        ),
        top_k=whole(data, "top_k", 3, 1, MAX_TOP_K),
        softmax=flag(data, "softmax", False),
    )


def load_labels(path: Path) -> tuple[str, ...]:
    where = f"{CARD_FILE}: labels {path.name}"
    labels = read_json(path, where)
    if not (isinstance(labels, list) and labels and all(isinstance(x, str) for x in labels)):
        raise ValueError(f"{where} must be a non-empty JSON list of label strings")
    return tuple(labels)


def read_json(path: Path, where: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{where}: no such file {path}") from None
    except ValueError as exc:
        raise ValueError(f"{where}: not valid JSON: {exc}") from None


# model.json values ---------------------------------------------------------------------------


def text(data: dict[str, Any], key: str, default: str | None) -> str:
    value = data.get(key, default)
    if not isinstance(value, str) or (key in data and not value):
        raise ValueError(f"{CARD_FILE}: '{key}' must be a non-empty string")
    return value


def choice(data: dict[str, Any], key: str, allowed: tuple[str, ...], default: str | None) -> str:
    value = data.get(key, default)
    if value not in allowed:
        raise ValueError(f"{CARD_FILE}: '{key}' must be one of {list(allowed)}, got {value!r}")
    return str(value)


def size(data: dict[str, Any]) -> tuple[int, int]:
    value = data.get("size")
    if (
        isinstance(value, list)
        and len(value) == 2
        and all(is_whole(side) and 1 <= side <= MAX_SIDE for side in value)
    ):
        return value[0], value[1]
    raise ValueError(f"{CARD_FILE}: 'size' must be [height, width], whole numbers 1-{MAX_SIDE}")


def number(data: dict[str, Any], key: str, default: float, positive: bool) -> float:
    value = data.get(key, default)
    if is_real(value) and (value > 0 or not positive):
        return float(value)
    raise ValueError(f"{CARD_FILE}: '{key}' must be a {'positive ' if positive else ''}number")


def numbers(
    data: dict[str, Any], key: str, count: int, default: float, positive: bool
) -> tuple[float, ...]:
    value = data.get(key, [default] * count)
    if (
        isinstance(value, list)
        and len(value) == count
        and all(is_real(x) and (x > 0 or not positive) for x in value)
    ):
        return tuple(float(x) for x in value)
    kind = "positive numbers" if positive else "numbers"
    raise ValueError(f"{CARD_FILE}: '{key}' must be a list of {count} {kind}, one per channel")


def whole(data: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = data.get(key, default)
    if is_whole(value) and low <= value <= high:
        return int(value)
    raise ValueError(f"{CARD_FILE}: '{key}' must be a whole number {low}-{high}")


def flag(data: dict[str, Any], key: str, default: bool) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"{CARD_FILE}: '{key}' must be true or false")
    return value


def is_real(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# The session ---------------------------------------------------------------------------------


class Classifier:
    """One onnxruntime session for a model card; create it in the worker, after the fork."""

    def __init__(self, card: ModelCard, threads: int) -> None:
        self.card = card
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(
                str(card.model), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own classes for a file it cannot use
            raise ValueError(
                f"{CARD_FILE}: model {card.model.name} cannot be loaded: {exc}"
            ) from exc
        self.output = self.check_output(card.output)
        self.one_at_a_time = self.check_input() == 1
        warm = self.scores(np.zeros((1, *card.preprocessing.shape), dtype=np.float32))
        if warm.shape[1] != len(card.labels):
            raise ValueError(
                f"{CARD_FILE}: the model scores {warm.shape[1]} classes but "
                f"{len(card.labels)} labels are given"
            )

    def check_input(self) -> int | None:
        """Check the input against the card; the batch size if the model fixes one."""
        inputs = {node.name: node for node in self.session.get_inputs()}
        if self.card.input not in inputs:
            raise ValueError(
                f"{CARD_FILE}: 'input' is {self.card.input!r}; the model's inputs are "
                f"{sorted(inputs)}"
            )
        node = inputs[self.card.input]
        if node.type != "tensor(float)" or len(node.shape) != 4:
            raise ValueError(
                f"{CARD_FILE}: input {node.name!r} is {node.type} {node.shape}; "
                "expected a float tensor of rank 4"
            )
        expected = self.card.preprocessing.shape
        for axis, (got, want) in enumerate(zip(node.shape[1:], expected, strict=True), 1):
            if isinstance(got, int) and got != want:
                raise ValueError(
                    f"{CARD_FILE}: the model's input is {node.shape}, but layout, size and mode "
                    f"make {['N', *expected]} (axis {axis} differs)"
                )
        batch = node.shape[0]
        if isinstance(batch, int) and batch != 1:
            raise ValueError(f"{CARD_FILE}: the model's batch size is fixed to {batch}")
        return batch if isinstance(batch, int) else None

    def check_output(self, name: str | None) -> str:
        outputs = [node.name for node in self.session.get_outputs()]
        if name is None:
            return outputs[0]
        if name not in outputs:
            raise ValueError(f"{CARD_FILE}: 'output' is {name!r}; the model's are {outputs}")
        return name

    def scores(self, batch: np.ndarray) -> np.ndarray:
        """Class scores, one row per input of ``batch`` (N × classes)."""
        if self.one_at_a_time and len(batch) > 1:
            return np.concatenate([self.scores(batch[i : i + 1]) for i in range(len(batch))])
        (raw,) = self.session.run([self.output], {self.card.input: batch})
        rows = np.asarray(raw, dtype=np.float32).reshape(len(batch), -1)
        if self.card.softmax:
            rows = np.exp(rows - rows.max(axis=1, keepdims=True))
            rows /= rows.sum(axis=1, keepdims=True)
        return rows

    def top(self, row: np.ndarray, k: int) -> list[Label]:
        """The ``k`` best labels of one row of scores, best first."""
        best = np.argsort(-row, kind="stable")[:k]
        return [{"label": self.card.labels[i], "score": round(float(row[i]), 6)} for i in best]
