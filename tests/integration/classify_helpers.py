"""Helpers for the classify integration tests (``test_classify.py``): the function copied
with its model into a test's folder and a manifest for it, a probe that records which calls
shared a batch, and calls sent by many clients at once.

The function's folder is copied (a manifest's handler and files must lie inside its own
folder); its code is not changed. Every node is started through the ``start_node`` factory
(killed by process group at teardown); every request goes to 127.0.0.1 with a timeout.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.conftest import REPO, NodeProcess

FUNCTION = "classify"
CAMERA_PATH = "/cameras/frames"
CALL_TIMEOUT_S = 30.0
MODEL_FILES = ("model.onnx", "labels.json", "model.json")

# A handler file next to the function's own: the same init, handle and handle_batch, and
# each batch's call ids appended, one JSON list a line, to the file BATCH_LOG — in the test's
# folder, which a sandbox hides (on purpose): nodes serving the probe run --sandbox off.
PROBE_ARGS = ("--sandbox", "off")
PROBE = '''"""classify, with each batch's call ids written to a file (for the tests)."""

import json

from handler import handle, init  # noqa: F401  (the loader finds them here)
from handler import handle_batch as classify_batch

BATCH_LOG = {log!r}


def handle_batch(events):
    with open(BATCH_LOG, "a") as log:
        log.write(json.dumps([event.call_id for event in events]) + "\\n")
    return classify_batch(events)
'''


@dataclass(frozen=True)
class App:
    """A test's copy of the function (``folder/app/classify``) and its manifest."""

    manifest: Path
    function_dir: Path
    batch_log: Path

    def batches(self) -> list[list[str]]:
        """The call ids of each batch the probe saw, in order (empty without the probe)."""
        if not self.batch_log.exists():
            return []
        return [json.loads(line) for line in self.batch_log.read_text().splitlines()]


def classify_app(
    folder: Path,
    *,
    batch: str = "",
    pool: str = "{min: 1, max: 1}",
    model_dir: str = "",
    probe: bool = False,
) -> App:
    """Copy ``functions/classify`` to ``folder/app/classify`` and write a manifest that serves
    it as ``classify`` on /function/classify and the camera path. ``batch`` is the manifest's
    ``batch:`` value (none: no batching); ``model_dir`` a folder under the function's folder
    to take the model from (``CLASSIFY_MODEL_DIR``; none: the shipped digits model);
    ``probe`` routes calls through PROBE."""
    app = folder / "app"
    function_dir = app / FUNCTION
    shutil.copytree(
        REPO / "functions" / FUNCTION, function_dir, ignore=shutil.ignore_patterns("__pycache__")
    )
    batch_log = folder / "batches.jsonl"
    handler = "handler.py"
    if probe:
        handler = "probe.py"
        (function_dir / handler).write_text(PROBE.format(log=str(batch_log)))
    files = [f"{FUNCTION}/{model_dir}" if model_dir else f"{FUNCTION}/{n}" for n in MODEL_FILES]
    text = (
        f"version: 1\nfunctions:\n  {FUNCTION}:\n"
        f"    handler: {FUNCTION}/{handler}:handle\n"
        f"    triggers:\n      - http: {{path: {CAMERA_PATH}, methods: [POST]}}\n"
        f"    files: [{', '.join(dict.fromkeys(files))}]\n"
        f"    pool: {pool}\n"
    )
    if batch:
        text += f"    batch: {batch}\n"
    if model_dir:
        text += f"    env: {{CLASSIFY_MODEL_DIR: {model_dir}}}\n"
    manifest = app / "functions.yaml"
    manifest.write_text(text)
    return App(manifest, function_dir, batch_log)


def post_image(
    client: httpx.Client,
    body: bytes,
    content_type: str | None = "image/png",
    path: str = f"/function/{FUNCTION}",
    query: str = "",
) -> httpx.Response:
    headers = {} if content_type is None else {"content-type": content_type}
    return client.post(path + (f"?{query}" if query else ""), content=body, headers=headers)


def from_many_clients(
    node: NodeProcess,
    work: Sequence[Sequence[tuple[bytes, str | None]]],
    query: str = "",
) -> list[list[httpx.Response]]:
    """Client ``i`` sends the (body, Content-Type) calls of ``work[i]`` one after the other on
    its own keep-alive connection; all clients start together. Each client's responses, in
    the order sent."""
    start = threading.Barrier(len(work), timeout=CALL_TIMEOUT_S)

    def client(calls: Sequence[tuple[bytes, str | None]]) -> list[httpx.Response]:
        with httpx.Client(base_url=node.url, timeout=CALL_TIMEOUT_S) as http:
            http.get("/healthz")  # open the connection before the start
            start.wait()
            return [post_image(http, body, kind, query=query) for body, kind in calls]

    with ThreadPoolExecutor(len(work)) as threads:
        return list(threads.map(client, work))


def scores(response: httpx.Response) -> dict[str, float]:
    """An answer's scores by label."""
    assert response.status_code == 200, response.text
    return {item["label"]: item["score"] for item in response.json()["top"]}


def top_label(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    label: str = response.json()["top"][0]["label"]
    return label
