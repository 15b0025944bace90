"""The classify function's model travels in its signed bundle: a node that never saw the
function's folder fetches the bundle through the mesh and classifies with the same model."""

from __future__ import annotations

import io
import shutil
import textwrap

import httpx
import numpy as np
from PIL import Image

from tests.conftest import REPO, wait_for
from tests.integration.mesh_helpers import Mesh
from tests.integration.test_mesh import digests_by_node, mesh, new_mesh

__all__ = ["mesh", "new_mesh"]  # fixtures used below

MANIFEST = """\
    version: 1
    functions:
      classify:
        handler: functions/classify/handler.py:handle
        files: [functions/classify/model.onnx, functions/classify/labels.json,
                functions/classify/model.json]
        batch: {max_size: 8, max_wait_ms: 5}
        pool: {min: 1, max: 1}
    """


def png(image: np.ndarray) -> bytes:
    picture = Image.fromarray(image.astype(np.uint8)).resize((32, 32), Image.Resampling.NEAREST)
    out = io.BytesIO()
    picture.save(out, "PNG")
    return out.getvalue()


def test_a_node_without_the_model_s_files_classifies_with_the_shipped_model(mesh: Mesh) -> None:
    shutil.copytree(REPO / "functions/classify", mesh.project / "functions/classify")
    manifest = mesh.project / "functions.yaml"
    manifest.write_text(textwrap.dedent(MANIFEST))
    first, second = mesh.start_many(2, manifest)  # only the first publishes it
    wait_for(
        lambda: (
            len(set(digests_by_node(first, "classify").values()) - {None}) == 1
            and None not in digests_by_node(first, "classify").values()
        ),
        30,
        what="both nodes to run classify",
    )
    heldout = np.load(REPO / "functions/classify/heldout.npz")
    images, labels = heldout["images"][:30], heldout["labels"][:30]
    right = 0
    with httpx.Client(base_url=second.url, timeout=10) as client:
        for image, label in zip(images, labels, strict=True):
            answer = client.post(
                "/function/classify", content=png(image), headers={"content-type": "image/png"}
            )
            assert answer.status_code == 200, answer.text
            assert answer.headers["x-served-by"] == "local"
            right += answer.json()["top"][0]["label"] == str(label)
    assert right / len(labels) >= 0.9
    assert "fetched bundle" in second.log()
