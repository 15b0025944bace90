"""``functions/classify/train.py``, run for real: from scikit-learn's bundled digits it
trains a model that the function serves, on the same held-out split as the shipped one, at
the accuracy it records (≥ 0.9) — measured here again through the function."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO
from tests.functions.pictures import FOLDER, encode, heldout, image_event, render, start_classify

pytestmark = pytest.mark.slow

TRAIN_TIMEOUT_S = 600  # about 20 s here


def test_training_writes_a_model_the_function_serves_at_the_recorded_accuracy(
    tmp_path: Path,
) -> None:
    run = subprocess.run(
        [sys.executable, str(FOLDER / "train.py"), "--out", str(tmp_path)],
        check=False,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=TRAIN_TIMEOUT_S,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    for name in ("model.onnx", "labels.json", "model.json", "heldout.npz", "metrics.json"):
        assert (tmp_path / name).is_file(), name
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["heldout_accuracy"] >= 0.9, metrics
    images, labels = heldout()
    with np.load(tmp_path / "heldout.npz") as written:  # the same split as the shipped model
        assert np.array_equal(written["images"], images)
        assert np.array_equal(written["labels"], labels)

    classify = start_classify(env={"CLASSIFY_MODEL_DIR": str(tmp_path)})
    answers = [classify.handle(image_event(encode(render(image, 32)))) for image in images]
    right = sum(
        int(a["top"][0]["label"]) == label for a, label in zip(answers, labels, strict=True)
    )
    accuracy = right / len(labels)
    assert accuracy >= 0.9
    assert accuracy == pytest.approx(metrics["heldout_accuracy_by_size"]["png_32x32"], abs=0.01)
