"""The classify function on a real node over real HTTP: the shipped digits model's held-out
accuracy (alone, and with batching under concurrent clients, each caller getting its own
answer), every bad input a 4xx that leaves the worker serving, a bad image failing only its
own call in a shared batch, a MobileNet-sized model dropped in, and the latency bound of
batching at low load.

Each test serves a copy of ``functions/classify`` from its own folder (classify_helpers.py).
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import NodeProcess
from tests.functions.pictures import (
    FORM_TYPE,
    add_function_folder,
    encode,
    file_part,
    form,
    image_event,
    png_header,
    start_classify,
)
from tests.functions.test_classify import (
    BAD_INPUT,
    IMAGES,
    LABELS,
    METRICS,
    camera_frame,
    digit_png,
)
from tests.integration.classify_helpers import (
    CAMERA_PATH,
    FUNCTION,
    PROBE_ARGS,
    App,
    classify_app,
    from_many_clients,
    post_image,
    scores,
    top_label,
)
from tests.integration.test_node import StartNode, assert_error, pool, start_ready

pytestmark = pytest.mark.slow

BATCH = "{max_size: 16, max_wait_ms: 5}"  # as functions.yaml has it
CLIENTS = 16
ALL_LABELS = "top_k=10"  # every score: two images never share all ten
CODES = {400: "bad_request", 413: "payload_too_large", 415: "unsupported_media_type"}
PNGS = [digit_png(i) for i in range(len(IMAGES))]


def alone(
    node: NodeProcess, bodies: list[bytes], query: str = ALL_LABELS
) -> list[dict[str, float]]:
    """Each body's scores, sent one at a time (an idle pool: a batch of one each)."""
    with node.client() as client:
        return [scores(post_image(client, body, query=query)) for body in bodies]


def assert_same_scores(got: dict[str, float], expected: dict[str, float], what: str) -> None:
    assert got.keys() == expected.keys(), what
    for label, score in expected.items():
        assert got[label] == pytest.approx(score, abs=1e-4), f"{what}: label {label}"


def gradient_png(side: int) -> bytes:
    """A ``side``² grayscale PNG that is small on the wire and slow to decode."""
    return encode(
        Image.fromarray((np.add.outer(np.arange(side), np.arange(side)) % 256).astype(np.uint8))
    )


LARGE_FRAME = gradient_png(6000)  # 36 MP, under the 40 MP cap: ~0.15 s a call


def bomb(side: int = 20_000) -> bytes:
    """A real PNG of ``side``² black 1-bit pixels: 49 kB on the wire, 400 MB decoded to L."""
    return encode(Image.new("1", (side, side)), "PNG")


def batch_sizes(app: App, call_ids: list[str]) -> dict[str, int]:
    """The size of the batch each of ``call_ids`` ran in (each ran exactly once)."""
    sizes: dict[str, int] = {}
    for batch in app.batches():
        for call_id in batch:
            assert call_id not in sizes, f"call {call_id} ran twice"
            sizes[call_id] = len(batch)
    return {call_id: sizes[call_id] for call_id in call_ids}


# ------------------------------------------------------------------ the shipped digits model


def test_heldout_accuracy_over_http(start_node: StartNode, tmp_path: Path) -> None:
    node = start_ready(start_node, classify_app(tmp_path).manifest)
    with node.client() as client:
        labels = [top_label(post_image(client, png)) for png in PNGS]
        camera = [top_label(post_image(client, png, path=CAMERA_PATH)) for png in PNGS[:20]]
        uploads = [
            top_label(post_image(client, form(file_part(png)), FORM_TYPE)) for png in PNGS[:20]
        ]

    accuracy = np.mean(np.array(labels, dtype=int) == LABELS)
    assert accuracy >= 0.9
    # what train.py recorded for the same pictures, in-process
    assert accuracy == pytest.approx(METRICS["heldout_accuracy_by_size"]["png_32x32"])
    assert camera == labels[:20]
    assert uploads == labels[:20]


def test_heldout_accuracy_with_batching_under_concurrent_clients(
    start_node: StartNode, tmp_path: Path
) -> None:
    app = classify_app(tmp_path, batch=BATCH, pool="{min: 1, max: 2}", probe=True)
    node = start_ready(start_node, app.manifest, *PROBE_ARGS)
    expected = alone(node, PNGS)
    lone_calls = sum(len(batch) for batch in app.batches())

    # client c sends digits c, c + 16, c + 32, ...: different pictures at the same moment
    indices = [list(range(c, len(PNGS), CLIENTS)) for c in range(CLIENTS)]
    work = [[(PNGS[i], "image/png") for i in mine] for mine in indices]
    replies = from_many_clients(node, work, query=ALL_LABELS)

    answers: dict[int, dict[str, float]] = {}
    for mine, responses in zip(indices, replies, strict=True):
        for i, response in zip(mine, responses, strict=True):
            answers[i] = scores(response)
            assert_same_scores(answers[i], expected[i], f"digit {i}")  # its own answer
    predicted = [int(max(answers[i], key=answers[i].__getitem__)) for i in range(len(PNGS))]
    assert np.mean(np.array(predicted) == LABELS) >= 0.9

    batches = app.batches()
    assert [len(batch) for batch in batches[:lone_calls]] == [1] * lone_calls  # alone: alone
    sizes = batch_sizes(app, [r.headers["x-call-id"] for rs in replies for r in rs])
    assert len(sizes) == len(PNGS)
    assert max(sizes.values()) > 1, "no calls shared a batch: batching was not exercised"
    assert max(sizes.values()) <= 16


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("batch", [BATCH, ""], ids=["batching", "no-batching"])
def test_every_bad_input_is_a_4xx_and_the_next_call_succeeds(
    start_node: StartNode, tmp_path: Path, batch: str
) -> None:
    node = start_ready(start_node, classify_app(tmp_path, batch=batch).manifest)
    before = pool(node, FUNCTION)
    with node.client() as client:
        good = top_label(post_image(client, PNGS[7]))
        for n, (body, content_type, status, words) in enumerate(BAD_INPUT):
            path = CAMERA_PATH if n % 4 == 3 else f"/function/{FUNCTION}"
            response = post_image(client, body, content_type, path)
            assert_error(response, status, CODES[status], words)
            assert top_label(post_image(client, PNGS[7])) == good, f"after {words!r}"
        for query in ("top_k=0", "top_k=11", "top_k=three"):
            assert_error(post_image(client, PNGS[7], query=query), 400, "bad_request", "top_k")
        # a decompression bomb whose pixels would decode, not only a header
        assert_error(post_image(client, bomb()), 400, "bad_request", "pixels")
        assert top_label(post_image(client, PNGS[7])) == good
    after = pool(node, FUNCTION)
    assert after["worker_pids"] == before["worker_pids"]  # the same worker served it all
    counters = after["counters"]
    assert counters["crashes"] == counters["function_errors"] == 0
    assert counters["handler_errors"] == len(BAD_INPUT) + 4


def test_one_bad_image_among_concurrent_good_ones_fails_only_its_own_call(
    start_node: StartNode, tmp_path: Path
) -> None:
    app = classify_app(tmp_path, batch=BATCH, probe=True)
    node = start_ready(start_node, app.manifest, *PROBE_ARGS)
    pids = pool(node, FUNCTION)["worker_pids"]
    bad = {  # client → (its bad call, the answer it must get)
        0: ((b"hello, camera", "image/jpeg"), 400, "request body is not an image"),
        5: ((png_header(20_000, 20_000), "image/png"), 400, "pixels"),
        10: ((PNGS[3], "text/plain"), 415, "cannot carry an image"),
    }
    calls_each, bad_at = 8, 4
    indices = [[c * calls_each + k for k in range(calls_each)] for c in range(CLIENTS)]
    expected = alone(node, [PNGS[i] for mine in indices for i in mine])
    shared: set[int] = set()  # clients whose bad call has shared a batch with good ones
    for _ in range(10):  # until each bad call has, in some round (batches vary with timing)
        work = [[(PNGS[i], "image/png") for i in mine] for mine in indices]
        for c, (call, _, _) in bad.items():
            work[c][bad_at] = call
        replies = from_many_clients(node, work, query=ALL_LABELS)
        for c, responses in enumerate(replies):
            for k, response in enumerate(responses):
                if c in bad and k == bad_at:
                    _, status, words = bad[c]
                    assert_error(response, status, CODES[status], words)
                else:
                    n = c * calls_each + k
                    assert_same_scores(scores(response), expected[n], f"client {c}, call {k}")
        bad_ids = {replies[c][bad_at].headers["x-call-id"]: c for c in bad}
        sizes = batch_sizes(app, list(bad_ids))
        shared |= {bad_ids[call_id] for call_id, size in sizes.items() if size > 1}
        if shared == set(bad):
            break
    assert shared == set(bad), f"bad calls of clients {set(bad) - shared} never shared a batch"
    with node.client() as client:
        assert post_image(client, PNGS[0]).status_code == 200
    assert pool(node, FUNCTION)["worker_pids"] == pids


# --------------------------------------------------------------------------- a user's model


def test_mobilenet_sized_model_classifies_a_jpeg_over_http(
    start_node: StartNode, tmp_path: Path
) -> None:
    add_function_folder()
    from build_mobilenet import build

    app = classify_app(tmp_path, batch=BATCH, model_dir="mobilenet")
    build(app.function_dir / "mobilenet")
    local = start_classify(app.function_dir, {"CLASSIFY_MODEL_DIR": "mobilenet"})
    node = start_ready(start_node, app.manifest)
    frames = [camera_frame(seed) for seed in range(3)]
    labels = json.loads((app.function_dir / "mobilenet" / "labels.json").read_text())
    with node.client() as client:
        raw = post_image(client, frames[0], "image/jpeg")
        top3 = post_image(client, frames[0], "image/jpeg", query="top_k=3")
        upload = post_image(client, form(file_part(frames[0], kind="image/jpeg")), FORM_TYPE)
        camera = post_image(client, frames[0], "image/jpeg", path=CAMERA_PATH)
        others = [post_image(client, frame, "image/jpeg") for frame in frames[1:]]

    answer = raw.json()
    assert raw.status_code == 200, raw.text
    assert answer["model"] == "mobilenet-v1-0.5"
    assert len(answer["top"]) == 5  # the model's top_k
    assert all(item["label"] in labels for item in answer["top"])
    ranked = [item["score"] for item in answer["top"]]
    assert ranked == sorted(ranked, reverse=True)
    assert 0 < sum(ranked) <= 1 + 1e-6
    assert top3.json()["top"] == answer["top"][:3]
    assert upload.json() == camera.json() == answer
    assert [o.json()["top"] for o in others] != [answer["top"]] * 2  # it looks at the pixels
    # the same model as in-process, through the same code
    for n, (frame, response) in enumerate(zip(frames, [raw, *others], strict=True)):
        in_process = local.handle(image_event(frame, "image/jpeg"))["top"]
        assert_same_scores(scores(response), {t["label"]: t["score"] for t in in_process}, f"{n}")


# -------------------------------------------------------------------- latency at low load


def test_batching_at_low_load_never_holds_a_call_much_past_max_wait(
    start_node: StartNode, tmp_path: Path
) -> None:
    max_wait_s, slack_s = 0.1, 1.0
    app = classify_app(tmp_path, batch="{max_size: 16, max_wait_ms: 100}", pool="{min: 2, max: 2}")
    node = start_ready(start_node, app.manifest)
    with node.client() as client:
        post_image(client, PNGS[0])  # warm
        lone = [timed(client, PNGS[i]) for i in range(20)]
    assert max(lone) < max_wait_s + slack_s
    assert statistics.median(lone) < max_wait_s  # a lone caller is not held for a batch

    # One worker kept busy by large frames (~0.15 s each, longer than max_wait_ms) while
    # another caller sends a digit every 20 ms: its calls come closer together than
    # max_wait_ms while the other worker is busy, so the free worker holds them for a batch
    # to fill, until the busy worker frees or max_wait_ms has passed — never much longer.
    stop = threading.Event()

    def keep_busy() -> int:
        calls = 0
        with node.client() as busy:
            while not stop.is_set():
                assert post_image(busy, LARGE_FRAME).status_code == 200
                calls += 1
        return calls

    with ThreadPoolExecutor(1) as background:
        large = background.submit(keep_busy)
        time.sleep(0.2)
        with node.client() as client:
            stream = []
            for i in range(40):
                stream.append(timed(client, PNGS[i]))
                time.sleep(0.02)
        stop.set()
        assert large.result(timeout=30) > 1
    assert max(stream) < max_wait_s + slack_s


def timed(client: httpx.Client, body: bytes) -> float:
    started = time.perf_counter()
    response = post_image(client, body)
    elapsed = time.perf_counter() - started
    assert response.status_code == 200, response.text
    return elapsed
