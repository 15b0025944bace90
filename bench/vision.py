"""Benchmark: camera-frame classification with a MobileNet-sized model — images/s and p50/p99
over HTTP at 1, 8 and 32 concurrent clients, with micro-batching on and off, next to the same
work done in-process by a plain loop, in one run, on this machine.

    python -m bench.vision [--duration 6] [--images 64] [--keep]

Setup, in a temporary folder: the function's code (``functions/classify/*.py``) is copied to
``app/classify/``, ``build_mobilenet.build`` writes the MobileNet-sized model (224×224 RGB,
1000 classes, ~1.3 M parameters) into ``app/classify/mobilenet/``, and two manifests name
that model (``env: CLASSIFY_MODEL_DIR``) with ``pool: {min: 2, max: 2}``, one intra-op thread
per worker (two workers for two cores), one with ``batch: {max_size: 16, max_wait_ms: 5}``
and one without. ``--images`` distinct 640×480 JPEG "photos" (gradient, shapes and noise,
fixed seed) are the inputs everywhere.

The baseline (the most one core does without HTTP or a pool): the manifest's own function,
imported by the worker's loader in a fresh (spawned) process, ``init`` run with the worker's
context, then ``handle`` + the worker's ``render`` on each photo in a plain loop, batch 1 —
decode (Pillow, with the same JPEG draft), preprocess, ``session.run`` on 1 intra-op thread,
top-k, JSON. For reference: ``handle_batch`` on 8 photos at a time (p50/p99 per batch of 8),
and the batch-1 loop in two processes at once (one a core: the machine's ceiling for this
work, which the node's two workers are up against).

Then one ``edgefaas up`` node per manifest, one after the other (each in its own process
group, ended by the group). Every photo is sent once and its top label compared with the
baseline's (the same model answers over HTTP), then at 1, 8 and 32 clients: a 1 s warm-up,
then ``--duration`` seconds of a closed loop (each client a keep-alive HTTP/1.1 connection
sending the next photo when its answer is in; raw asyncio streams on uvloop, a few tens of
µs of CPU a call, since the client shares the two cores with the node). images/s counts the
2xx answers over the time from the first call to the last answer; p50/p99 are per call.

Targets (issue 6): with batching, images/s at 32 clients ≥ 0.7 × the in-process loop's; at 1
client, p50 with batching ≤ 1.2 × p50 without; and no call over HTTP fails. Exit 0 if all are
met. The temporary folder (node logs, the model) is removed unless a target is missed,
something fails, or ``--keep``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import multiprocessing
import os
import queue
import re
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import uvloop
from PIL import Image, ImageDraw

from bench.invoke import free_port, process_group
from bench.mesh import REPO, machine, workdir

FUNCTION = "classify"
SOURCE = REPO / "functions" / FUNCTION
WORKERS = 2
CLIENTS = (1, 8, 32)
BATCH = "{max_size: 16, max_wait_ms: 5}"
IN_PROCESS_BATCH = 8
PHOTO_SIZE = (640, 480)  # width, height
SEED = 6
WARM_S = 1.0
CALL_TIMEOUT_S = 30.0
CHILD_TIMEOUT_S = 60.0  # for a spawned in-process loop to load the model and report
THROUGHPUT_TARGET = 0.7  # with batching at 32 clients, × the in-process loop's images/s
LATENCY_TARGET = 1.2  # at 1 client, p50 with batching ÷ p50 without
MANIFEST = """version: 1
functions:
  {name}:
    handler: classify/handler.py:handle
    env: {{CLASSIFY_MODEL_DIR: mobilenet, CLASSIFY_THREADS: "1"}}
    files: [classify/mobilenet]
    timeout_s: 30
    pool: {{min: {workers}, max: {workers}}}
"""
CONTENT_LENGTH = re.compile(rb"\r\ncontent-length: *(\d+)", re.IGNORECASE)


@dataclass(frozen=True)
class Point:
    """One measurement: ``images`` classified (errors apart) in ``seconds``, and the p50 and
    p99 of the calls' latency."""

    setup: str
    clients: int  # 0: in-process
    images: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int = 0

    @property
    def per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("nan")

    @classmethod
    def of(
        cls, setup: str, clients: int, latencies: list[float], seconds: float, errors: int = 0,
        per_call: int = 1,
    ) -> Point:  # fmt: skip
        """From each call's latency (s); a call classifies ``per_call`` images."""
        ordered = sorted(latencies)
        if not ordered:
            raise SystemExit(f"{setup}, {clients} clients: no call answered")
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        images = (len(ordered) - errors) * per_call
        p50 = statistics.median(ordered)
        return cls(setup, clients, images, seconds, p50 * 1000, p99 * 1000, errors)


# -- inputs and the function's folder -------------------------------------------------------------


def photos(count: int, seed: int = SEED) -> list[bytes]:
    """``count`` distinct 640×480 JPEGs: a colour gradient, a few filled shapes, sensor noise."""
    rng = np.random.default_rng(seed)
    width, height = PHOTO_SIZE
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    t = ((xs / width + ys / height) / 2)[..., None]  # 0 at the top left, 1 at the bottom right
    out = []
    for _ in range(count):
        corners = rng.uniform(0, 255, size=(2, 3)).astype(np.float32)
        pixels = corners[0] * (1 - t) + corners[1] * t
        image = Image.fromarray(pixels.astype(np.uint8), "RGB")
        draw = ImageDraw.Draw(image)
        for _ in range(int(rng.integers(3, 9))):
            x0, y0 = int(rng.integers(0, width - 40)), int(rng.integers(0, height - 40))
            box = (x0, y0, x0 + int(rng.integers(30, 300)), y0 + int(rng.integers(30, 240)))
            fill = tuple(int(c) for c in rng.integers(0, 256, size=3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
        noisy = np.asarray(image, dtype=np.int16) + rng.normal(0, 8, (height, width, 3))
        buffer = io.BytesIO()
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB").save(buffer, "JPEG")
        out.append(buffer.getvalue())
    return out


def prepare(folder: Path) -> dict[str, Path]:
    """The function's code and the MobileNet-sized model under ``folder/app``; the two
    manifests, by setup name."""
    app = folder / "app"
    target = app / FUNCTION
    target.mkdir(parents=True)
    for source in SOURCE.glob("*.py"):
        shutil.copy2(source, target / source.name)
    sys.path.insert(0, str(SOURCE))
    try:
        from build_mobilenet import build  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(SOURCE))
    build(target / "mobilenet")
    base = MANIFEST.format(name=FUNCTION, workers=WORKERS)
    manifests = {"batching on": app / "batching.yaml", "batching off": app / "single.yaml"}
    manifests["batching on"].write_text(base + f"    batch: {BATCH}\n")
    manifests["batching off"].write_text(base)
    return manifests


# -- the baseline: the function called in-process ------------------------------------------------


@dataclass
class InProcess:
    """The manifest's function loaded and started as a worker does, called directly."""

    handle: Callable[[Any], Any]
    handle_batch: Callable[[list[Any]], Any]

    @classmethod
    def load(cls, manifest: Path) -> InProcess:
        from registry.manifest import load_manifest
        from runtime.event import Context
        from runtime.loader import load_function

        spec = load_manifest(manifest).functions[FUNCTION]
        loaded = load_function(spec)
        context = Context(
            function=spec.name, root=spec.root, worker_pid=os.getpid(),
            timeout_s=spec.timeout_s, memory_mb=spec.memory_mb, env=dict(spec.env),
            files=spec.files,
        )  # fmt: skip
        if loaded.init is not None:
            loaded.init(context)
        if loaded.handle_batch is None:
            raise SystemExit(f"{manifest}: the function defines no handle_batch")
        return cls(loaded.handle, loaded.handle_batch)

    def labels(self, images: list[bytes]) -> list[str]:
        """The top label of each image, as ``handle`` answers it."""
        return [json.loads(self.call(image))["top"][0]["label"] for image in images]

    def call(self, image: bytes) -> bytes:
        from runtime.responses import render

        status, _, body = render(self.handle(_event(image)))
        if status != 200:
            raise SystemExit(f"in-process call answered {status}: {body[:200]!r}")
        return body

    def run_batch(self, images: list[bytes]) -> None:
        from runtime.responses import render

        for item in self.handle_batch([_event(image) for image in images]):
            if render(item)[0] != 200:
                raise SystemExit(f"in-process batch item failed: {item!r:.200}")

    def measure(self, images: list[bytes], batch: int, duration_s: float) -> Point:
        """Calls (batch 1) or batches of ``batch`` in a plain loop for ``duration_s``."""
        latencies: list[float] = []
        started = time.perf_counter()
        deadline = started + duration_s
        i = 0
        while time.perf_counter() < deadline:
            chunk = [images[(i + k) % len(images)] for k in range(batch)]
            i += batch
            begun = time.perf_counter()
            if batch == 1:
                self.call(chunk[0])
            else:
                self.run_batch(chunk)
            latencies.append(time.perf_counter() - begun)
        seconds = time.perf_counter() - started
        return Point.of(f"in-process, batch {batch}", 0, latencies, seconds, per_call=batch)


def in_process(
    manifest: Path, images: list[bytes], duration_s: float, batch: int = 1, processes: int = 1
) -> tuple[Point, list[str]]:
    """The plain loop in ``processes`` fresh processes at once (spawned, as clean as a
    worker, each with its own session), started together once every one has loaded the
    model and answered each image once. Returns the point (images/s summed; p50/p99 the
    largest of the processes') and each image's top label."""
    context = multiprocessing.get_context("spawn")
    ready, results = context.Barrier(processes), context.Queue()
    children = [
        context.Process(
            target=_loop_in_child, args=(manifest, images, duration_s, batch, ready, results)
        )
        for _ in range(processes)
    ]
    for child in children:
        child.start()
    try:
        answers = [results.get(timeout=duration_s + CHILD_TIMEOUT_S) for _ in children]
    except queue.Empty:
        raise SystemExit(f"the in-process loop did not report within {CHILD_TIMEOUT_S} s") from None
    finally:
        for child in children:
            child.join(timeout=5)
            if child.is_alive():
                child.kill()
                child.join()
    points = []
    for labels, point in answers:
        if labels is None:
            raise SystemExit(f"the in-process loop failed: {point}")
        points.append(point)
    setup = f"in-process, batch {batch}" if processes == 1 else f"in-process, {processes} processes"
    point = Point(
        setup, 0, sum(p.images for p in points), max(p.seconds for p in points),
        max(p.p50_ms for p in points), max(p.p99_ms for p in points),
    )  # fmt: skip
    return point, answers[0][0]


def _loop_in_child(
    manifest: Path, images: list[bytes], duration_s: float, batch: int, ready: Any, results: Any
) -> None:
    try:
        function = InProcess.load(manifest)
        labels = function.labels(images)
        ready.wait(timeout=CHILD_TIMEOUT_S)
        results.put((labels, function.measure(images, batch, duration_s)))
    except BaseException as exc:  # reported by the parent, which waits for this
        ready.abort()
        results.put((None, f"{type(exc).__name__}: {exc}"))


def _event(image: bytes) -> Any:
    from runtime.event import Event

    return Event("POST", "/", b"", b"content-type:image/jpeg", image)


# -- the node -------------------------------------------------------------------------------------


@contextmanager
def node(manifest: Path, work: Path, setup: str) -> Iterator[str]:
    """An ``edgefaas up`` serving ``manifest``; yields the function's URL once both workers
    serve (/readyz 200)."""
    port = free_port()
    slug = setup.replace(" ", "-")
    command = [
        sys.executable, "-c", "from gateway.cli.main import main; main()",
        "up", "--port", str(port),
        "--data-dir", str(work / f"data-{slug}"), "--manifest", str(manifest), "--node", slug,
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with process_group(command, work / f"node-{slug}.log", url + "/readyz"):
        deadline = time.monotonic() + 60
        while httpx.get(url + "/readyz", timeout=5).status_code != 200:
            if time.monotonic() > deadline:
                raise SystemExit(f"{setup}: not ready within 60 s; see {work}")
            time.sleep(0.1)
        yield f"{url}/function/{FUNCTION}"


def check_answers(url: str, images: list[bytes], expected: list[str], setup: str) -> None:
    """Each photo once over HTTP: the same top label as in-process."""
    with httpx.Client(timeout=CALL_TIMEOUT_S) as client:
        for n, (image, label) in enumerate(zip(images, expected, strict=True)):
            reply = client.post(url, content=image, headers={"content-type": "image/jpeg"})
            if reply.status_code != 200 or reply.json()["top"][0]["label"] != label:
                raise SystemExit(
                    f"{setup}: photo {n} answered {reply.status_code} {reply.text[:200]}; "
                    f"in-process the top label is {label}"
                )


def drive(url: str, images: list[bytes], clients: int, duration_s: float, setup: str) -> Point:
    """``clients`` keep-alive connections, each sending the next photo when its answer is in,
    for ``duration_s`` seconds."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(
            asyncio.wait_for(
                _drive(url, images, clients, duration_s, setup), duration_s + CALL_TIMEOUT_S
            )
        )


async def _drive(
    url: str, images: list[bytes], clients: int, duration_s: float, setup: str
) -> Point:
    parts = urlsplit(url)
    if parts.hostname != "127.0.0.1" or parts.port is None:
        raise ValueError(f"only http://127.0.0.1:PORT is called, not {url}")
    requests = [
        f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: image/jpeg\r\n"
        f"Content-Length: {len(image)}\r\n\r\n".encode()
        + image
        for image in images
    ]
    streams = [await asyncio.open_connection(parts.hostname, parts.port) for _ in range(clients)]
    latencies: list[float] = []
    errors = [0]
    started = time.perf_counter()
    deadline = started + duration_s

    async def client(n: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        i = n * len(requests) // clients  # each client starts at a different photo
        try:
            while time.perf_counter() < deadline:
                begun = time.perf_counter()
                writer.write(requests[i % len(requests)])
                head = await reader.readuntil(b"\r\n\r\n")
                match = CONTENT_LENGTH.search(head)
                await reader.readexactly(int(match.group(1)) if match else 0)
                latencies.append(time.perf_counter() - begun)
                errors[0] += not head.startswith(b"HTTP/1.1 200")
                i += 1
        finally:
            writer.close()

    await asyncio.gather(*(client(n, *stream) for n, stream in enumerate(streams)))
    return Point.of(setup, clients, latencies, time.perf_counter() - started, errors[0])


def measure_node(url: str, images: list[bytes], duration_s: float, setup: str) -> list[Point]:
    points = []
    for clients in CLIENTS:
        drive(url, images, clients, WARM_S, setup)
        point = drive(url, images, clients, duration_s, setup)
        print(
            f"{setup}, {clients} clients: {point.images} images, {point.errors} errors",
            file=sys.stderr,
        )
        points.append(point)
    return points


# -- the report -----------------------------------------------------------------------------------


def report(points: list[Point], duration_s: float, images: int, load_before: float) -> bool:
    print(
        f"\nedgefaas bench.vision — {machine()}; load average before the run: {load_before:.2f}\n"
    )
    print(
        f"model: MobileNet v1 ×0.5 (224×224 RGB, 1000 classes), {images} distinct "
        f"{PHOTO_SIZE[0]}×{PHOTO_SIZE[1]} JPEGs; node: pool min=max={WORKERS}, 1 intra-op "
        f"thread per worker, batching on = batch: {BATCH}; {duration_s:g} s per point\n"
    )
    print(f"{'setup':<26} {'clients':>7} {'images/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}")
    for p in points:
        clients = str(p.clients) if p.clients else "-"
        print(
            f"{p.setup:<26} {clients:>7} {p.per_s:>9.1f} {p.p50_ms:>8.1f} {p.p99_ms:>8.1f} "
            f"{p.errors:>6}"
        )
    print(
        f"\n  in-process rows run the function's handle (batch 1) or handle_batch (batch "
        f"{IN_PROCESS_BATCH}: p50/p99 per batch) in a plain loop, 1 intra-op thread; "
        f"{WORKERS} processes: the batch-1 loop on every core at once"
    )
    return _checks({(p.setup, p.clients): p for p in points})


def _checks(by: dict[tuple[str, int], Point]) -> bool:
    top = max(CLIENTS)
    loop, ceiling = by[("in-process, batch 1", 0)], by[(f"in-process, {WORKERS} processes", 0)]
    on_top, off_top = by[("batching on", top)], by[("batching off", top)]
    on_one, off_one = by[("batching on", 1)], by[("batching off", 1)]
    throughput = on_top.per_s / loop.per_s
    latency = on_one.p50_ms / off_one.p50_ms
    over_http = [p for (_, clients), p in by.items() if clients]
    calls = sum(p.images + p.errors for p in over_http)
    failed = sum(p.errors for p in over_http)
    checks = [
        (
            f"images/s, batching on at {top} clients / in-process loop "
            f"({on_top.per_s:.1f} / {loop.per_s:.1f})",
            f"{throughput:.2f}",
            throughput >= THROUGHPUT_TARGET,
            f"≥ {THROUGHPUT_TARGET}",
        ),
        (
            f"p50 at 1 client, batching on / off ({on_one.p50_ms:.1f} / {off_one.p50_ms:.1f} ms)",
            f"{latency:.2f}",
            latency <= LATENCY_TARGET,
            f"≤ {LATENCY_TARGET}",
        ),
        (f"calls over HTTP that failed, of {calls}", str(failed), failed == 0, "0"),
    ]
    print()
    for what, value, ok, target in checks:
        print(f"  {what:<64} {value:>6}   target {target:<6} {'met' if ok else 'MISSED'}")
    batched = by[(f"in-process, batch {IN_PROCESS_BATCH}", 0)]
    print(
        f"\n  for reference: batching on at {top} clients / in-process on {WORKERS} processes "
        f"{on_top.per_s / ceiling.per_s:.2f}; batching on / off at {top} clients "
        f"{on_top.per_s / off_top.per_s:.2f}; in-process batch {IN_PROCESS_BATCH} / batch 1 "
        f"{batched.per_s / loop.per_s:.2f}"
    )
    return all(ok for *_, ok, _ in checks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per point")
    parser.add_argument("--images", type=int, default=64, help="distinct JPEG photos")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    if not (0.5 <= args.duration <= 60 and 1 <= args.images <= 512):
        parser.error("need --duration from 0.5 to 60 s and --images from 1 to 512")
    load_before = os.getloadavg()[0]
    with workdir("edgefaas-bench-vision-") as work:
        try:
            manifests = prepare(work.path)
            images = photos(args.images)
            same, duration = manifests["batching on"], args.duration
            loop, expected = in_process(same, images, duration)
            points = [loop, in_process(same, images, duration, batch=IN_PROCESS_BATCH)[0]]
            points.append(in_process(same, images, duration, processes=WORKERS)[0])
            for setup, manifest in manifests.items():
                with node(manifest, work.path, setup) as url:
                    check_answers(url, images, expected, setup)
                    points += measure_node(url, images, args.duration, setup)
        except KeyboardInterrupt:
            print("\ninterrupted; the nodes are stopped", file=sys.stderr)
            return 130
        ok = report(points, args.duration, args.images, load_before)
        work.keep = args.keep or not ok
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
