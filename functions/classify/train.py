"""Train the shipped digit classifier and write it, with its held-out set and metrics.

    python functions/classify/train.py [--seed N] [--out DIR]   (needs the "train" extra)

Data: scikit-learn's bundled digits set (1,797 handwritten digits, 8×8 pixels, 0-16 ink
levels, 10 classes): shelf-label digits as a camera would see them. A stratified split keeps
20 % (360 images, every class in proportion) as the held-out set, never seen in training.

A camera sends a picture of any size, which the function shrinks to 8×8 grayscale with a box
filter (model.json). So the model is trained on what that preprocessing makes of pictures:
every training digit is drawn at 8, 12, 20, 30, 50, 70 and 100 pixels square (nearest
neighbour, as a camera sees blocky digits) and run through the function's own ``to_input``;
sizes that are not a multiple of 8 blur the strokes, which teaches the model to read them.

The classifier is a multi-layer perceptron (64 → 128 ReLU → 10 softmax, trained with Adam by
scikit-learn), exported with the ``onnx`` helper API from its weights: Flatten, Gemm, Relu,
Gemm, Softmax. Its held-out accuracy is measured with onnxruntime on the exported file,
through the function's own decoding and preprocessing of PNG files of each held-out digit.

Writes into the function's folder (or --out): model.onnx, labels.json, model.json,
heldout.npz (``images``: uint8 N×8×8 on the 0-255 scale, ``labels``: N digits) and
metrics.json.
"""

from __future__ import annotations

import argparse
import io
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from build_mobilenet import make_model, write_json
from classifier import Classifier, ModelCard, load_card
from images import load_input, to_input
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

FOLDER = Path(__file__).resolve().parent
NAME = "digits-mlp"
HELDOUT_FRACTION = 0.2
TRAIN_SIDES = (8, 12, 20, 30, 50, 70, 100)
EVAL_SIDES = (32, 64, 50)  # the first is the headline figure; 50 is not a multiple of 8
HIDDEN = 128
CARD = {
    "name": NAME,
    "model": "model.onnx",
    "labels": "labels.json",
    "input": "image",
    "output": "probabilities",
    "layout": "NCHW",
    "size": [8, 8],
    "mode": "L",
    "resample": "box",
    "scale": 1 / 255,
    "mean": [0.0],
    "std": [1.0],
    "top_k": 3,
}


def to_camera_scale(ink: np.ndarray) -> np.ndarray:
    """Digits' 0-16 ink levels as 8-bit pixels (0-255), N×8×8."""
    return np.rint(ink.reshape(-1, 8, 8) * (255 / 16)).astype(np.uint8)


def render(pixels: np.ndarray, side: int) -> Image.Image:
    """One 8×8 digit drawn ``side`` pixels square, blocky (nearest neighbour)."""
    return Image.fromarray(pixels).resize((side, side), Image.Resampling.NEAREST)


def png(pixels: np.ndarray, side: int) -> bytes:
    buffer = io.BytesIO()
    render(pixels, side).save(buffer, "PNG")
    return buffer.getvalue()


def features(images: np.ndarray, card: ModelCard) -> np.ndarray:
    """What the function's preprocessing makes of each image at each training size."""
    rows = [
        to_input(render(pixels, side), card.preprocessing).reshape(-1)
        for side in TRAIN_SIDES
        for pixels in images
    ]
    return np.stack(rows)


def export(mlp: Any) -> onnx.ModelProto:
    """The trained MLP as an ONNX graph built from its weights."""
    (w1, w2), (b1, b2) = mlp.coefs_, mlp.intercepts_
    weights = [
        numpy_helper.from_array(np.asarray(value, dtype=np.float32), name)
        for name, value in (("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2))
    ]
    nodes = [
        helper.make_node("Flatten", ["image"], ["pixels"], axis=1),
        helper.make_node("Gemm", ["pixels", "w1", "b1"], ["hidden.in"]),
        helper.make_node("Relu", ["hidden.in"], ["hidden"]),
        helper.make_node("Gemm", ["hidden", "w2", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    return make_model(
        nodes,
        weights,
        helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 8, 8]),
        helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", len(w2[0])]),
        name=NAME,
    )


def heldout_accuracy(card: ModelCard, images: np.ndarray, labels: np.ndarray, side: int) -> float:
    """Accuracy with onnxruntime on the held-out digits sent as PNG files ``side`` pixels wide."""
    classifier = Classifier(card, threads=1)
    batch = np.stack([load_input(png(pixels, side), card.preprocessing) for pixels in images])
    predicted = np.array([int(card.labels[i]) for i in classifier.scores(batch).argmax(axis=1)])
    return float((predicted == labels).mean())


def train(folder: Path, seed: int) -> dict[str, Any]:
    """Train, write every file, and return the metrics."""
    import sklearn
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    digits = load_digits()
    images = to_camera_scale(digits.data)
    train_images, heldout_images, train_labels, heldout_labels = train_test_split(
        images,
        digits.target,
        test_size=HELDOUT_FRACTION,
        stratify=digits.target,
        random_state=seed,
    )
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "labels.json", [str(digit) for digit in range(10)])
    write_json(folder / "model.json", CARD)
    card = load_card(folder)
    mlp = MLPClassifier(
        hidden_layer_sizes=(HIDDEN,), alpha=1e-4, max_iter=300, random_state=seed
    ).fit(features(train_images, card), np.tile(train_labels, len(TRAIN_SIDES)))
    if list(mlp.classes_) != list(range(10)):
        raise RuntimeError(f"classes are {mlp.classes_}, expected the digits 0-9 in order")
    onnx.save(export(mlp), folder / "model.onnx")
    np.savez_compressed(
        folder / "heldout.npz", images=heldout_images, labels=heldout_labels.astype(np.int64)
    )
    accuracy = {
        f"png_{side}x{side}": heldout_accuracy(card, heldout_images, heldout_labels, side)
        for side in EVAL_SIDES
    }
    return {
        "model": NAME,
        "heldout_accuracy": accuracy[f"png_{EVAL_SIDES[0]}x{EVAL_SIDES[0]}"],
        "heldout_accuracy_by_size": accuracy,
        "measured": "onnxruntime on model.onnx, through the function's decoding and "
        "preprocessing (images.py) of each held-out digit drawn as a PNG of that size",
        "data": "scikit-learn load_digits: 1797 8×8 digits, 10 classes",
        "split": {
            "method": "sklearn.model_selection.train_test_split, stratified by digit",
            "heldout_fraction": HELDOUT_FRACTION,
            "train": len(train_labels),
            "heldout": len(heldout_labels),
        },
        "seed": seed,
        "classifier": f"MLP 64-{HIDDEN}-10, ReLU, Adam, alpha 1e-4, {mlp.n_iter_} epochs",
        "train_sizes": list(TRAIN_SIDES),
        "versions": {
            "python": platform.python_version(),
            "scikit-learn": sklearn.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": ort.__version__,
            "numpy": np.__version__,
            "pillow": Image.__version__,
        },
        "date": datetime.now(UTC).date().isoformat(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=FOLDER)
    args = parser.parse_args(argv)
    metrics = train(args.out, args.seed)
    write_json(args.out / "metrics.json", metrics)
    for name, value in metrics["heldout_accuracy_by_size"].items():
        print(f"held-out accuracy {name}: {value:.4f}")


if __name__ == "__main__":
    main()
