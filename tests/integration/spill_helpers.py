"""Helpers for the spill-over integration tests (``test_spill.py``): a site of real nodes —
an edge node that publishes the manifest, a peer and a cloud node that run the mesh's
desired state — a fixture function that sleeps, bursts of calls fired on a schedule, the
routing counters a node exports, and an HTTP server that counts what is sent to it.

Every wait is bounded; every node is started through the ``start_node`` factory (killed by
process group at teardown); every request goes to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import redis
from prometheus_client.parser import text_string_to_metric_families

from registry.keys import Keys
from tests.conftest import NodeProcess, wait_for, wait_until_up
from tests.integration.mesh_helpers import Mesh, function_view, mesh_nodes

CALL_TIMEOUT_S = 20.0
CONVERGE_TIMEOUT_S = 30.0

HANDLER = """\
import os
import time


def handle(event):
    slept_ms = int(event.query.get("sleep_ms", "50"))
    time.sleep(slept_ms / 1000)
    return {"pid": os.getpid(), "slept_ms": slept_ms}
"""

# Function blocks of a manifest (all run the handler above: 50 ms unless ?sleep_ms=N).
BUSY = "pool: {min: 1, max: 1}"  # the default spill policy: peers, then the cloud
PINNED = "pool: {min: 1, max: 1}\n    spill: {to: []}"
# Waits here up to its pool's max_queue_wait_ms (2 s) before it spills.
PATIENT = "pool: {min: 1, max: 1}\n    spill: {max_local_wait_ms: 3000}"


def write_site_manifest(project: Path, functions: dict[str, str]) -> Path:
    """Write ``project/site.yaml`` with one function per entry (name → block above), all
    served by ``project/busy/handler.py``; return its path."""
    folder = project / "busy"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "handler.py").write_text(HANDLER)
    text = "version: 1\nfunctions:\n"
    for name, block in functions.items():
        text += f"  {name}:\n    handler: busy/handler.py:handle\n    {block}\n"
    manifest = project / "site.yaml"
    manifest.write_text(text)
    return manifest


# ------------------------------------------------------------------------------ the site


@dataclass
class Site:
    """An edge node (``edge``), and optionally a peer (``peer``) and a cloud node
    (``cloud``, started with ``--role cloud``), all of one mesh."""

    mesh: Mesh
    edge: NodeProcess
    peer: NodeProcess | None
    cloud: NodeProcess | None

    @property
    def named(self) -> dict[str, NodeProcess]:
        """The nodes started, by their node names."""
        nodes = {"edge": self.edge, "peer": self.peer, "cloud": self.cloud}
        return {name: node for name, node in nodes.items() if node is not None}

    @property
    def nodes(self) -> list[NodeProcess]:
        return list(self.named.values())


def start_site(
    mesh: Mesh,
    manifest: Path,
    *,
    peer: bool = True,
    cloud: bool = True,
    cloud_flag: bool = False,
) -> Site:
    """Start the nodes at once and wait until they listen. ``cloud_flag``: the edge node is
    given the cloud's URL with ``--cloud`` rather than finding it in the mesh."""
    cloud_node = None
    edge_args = ["--node", "edge"]
    if cloud:
        cloud_node = mesh.start(None, "--node", "cloud", "--role", "cloud", wait=False)
        if cloud_flag:
            edge_args += ["--cloud", cloud_node.url]
    edge = mesh.start(manifest, *edge_args, wait=False)
    peer_node = mesh.start(None, "--node", "peer", wait=False) if peer else None
    site = Site(mesh, edge, peer_node, cloud_node)
    for node in site.nodes:
        wait_until_up(node)
    return site


def running_everywhere(observer: NodeProcess, nodes: list[str], functions: list[str]) -> bool:
    """Whether ``observer`` sees every node in ``nodes`` run each of ``functions``, every
    node the same digest of it."""
    records = {record["name"]: record for record in mesh_nodes(observer)["nodes"]}
    for function in functions:
        digests = set()
        for name in nodes:
            status = ((records.get(name) or {}).get("functions") or {}).get(function) or {}
            if status.get("state") != "running":
                return False
            digests.add(status.get("digest"))
        if len(digests) != 1 or None in digests:
            return False
    return True


def wait_converged(site: Site, functions: list[str]) -> None:
    names = list(site.named)
    wait_for(
        lambda: running_everywhere(site.edge, names, functions),
        CONVERGE_TIMEOUT_S,
        0.1,
        f"the edge node to see {names} run {functions}",
    )


def warm(node: NodeProcess, name: str, calls: int = 5) -> None:
    """Sequential calls, so that the pool learns its service time."""
    with httpx.Client(timeout=CALL_TIMEOUT_S, trust_env=False) as client:
        for _ in range(calls):
            reply = client.post(f"{node.url}/function/{name}", content=b"warm")
            assert reply.status_code == 200, reply.text
            assert reply.headers["x-served-by"] == "local"


def digest_of(node: NodeProcess, name: str) -> str:
    status = mesh_nodes(node)["nodes"]
    mine = next(r for r in status if r["url"] == node.url)
    digest: str = mine["functions"][name]["digest"]
    return digest


def in_flight(node: NodeProcess, name: str) -> int:
    count: int = function_view(node, name)["in_flight"]
    return count


def wait_in_flight(node: NodeProcess, name: str, timeout_s: float = 5.0) -> None:
    """Until a call of ``name`` runs on ``node``."""
    wait_for(lambda: in_flight(node, name) > 0, timeout_s, 0.02, f"a call of {name} running")


# ------------------------------------------------------------------------------- calls

# A call that has run this long counts as that long in the wait expected behind it, which
# is then over the default local budget (spill.max_local_wait_ms, 100 ms): calls that
# arrive later are sent elsewhere rather than queued behind it.
HELD_FOR_S = 0.4


@dataclass(frozen=True)
class Answer:
    """One call's outcome as the client saw it (``error``: no HTTP answer at all)."""

    status: int
    served_by: str
    call_id: str
    retry_after: str | None
    reason: str | None
    seconds: float
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200


def _answer(reply: httpx.Response, seconds: float) -> Answer:
    reason = None
    if reply.status_code >= 400:
        try:
            reason = reply.json()["error"].get("reason")
        except (ValueError, KeyError, AttributeError):
            reason = None
    return Answer(
        reply.status_code,
        reply.headers.get("x-served-by", ""),
        reply.headers.get("x-call-id", ""),
        reply.headers.get("retry-after"),
        reason,
        seconds,
    )


def call_once(
    node: NodeProcess,
    name: str,
    query: str = "",
    headers: dict[str, str] | None = None,
    timeout_s: float = CALL_TIMEOUT_S,
) -> Answer:
    started = time.perf_counter()
    try:
        reply = httpx.post(
            f"{node.url}/function/{name}{query}",
            content=b"ping",
            headers=headers,
            timeout=timeout_s,
            trust_env=False,
        )
    except httpx.HTTPError as exc:
        return Answer(0, "", "", None, None, time.perf_counter() - started, repr(exc))
    return _answer(reply, time.perf_counter() - started)


class Background(threading.Thread):
    """One call in a thread (e.g. a slow one that holds a worker); :meth:`result` joins."""

    def __init__(self, node: NodeProcess, name: str, query: str = "") -> None:
        super().__init__(daemon=True)
        self.node, self.name_, self.query = node, name, query
        self.answer: Answer | None = None
        self.finished_at = 0.0  # time.monotonic()

    def run(self) -> None:
        self.answer = call_once(self.node, self.name_, self.query)
        self.finished_at = time.monotonic()

    def result(self, timeout_s: float = CALL_TIMEOUT_S + 5) -> Answer:
        self.join(timeout_s)
        assert not self.is_alive(), "the background call did not end"
        assert self.answer is not None
        return self.answer


def hold_worker(node: NodeProcess, name: str, sleep_ms: int) -> Background:
    """Start a call of ``sleep_ms`` that holds ``name``'s one worker on ``node``; return once
    it has run for ``HELD_FOR_S``. :meth:`Background.result` gets its answer."""
    hold = Background(node, name, f"?sleep_ms={sleep_ms}")
    hold.start()
    wait_in_flight(node, name)
    time.sleep(HELD_FOR_S)
    return hold


def burst(
    node: NodeProcess,
    name: str,
    *,
    rate_per_s: float,
    duration_s: float,
    query: str = "",
) -> list[Answer]:
    """Open loop: ``rate_per_s`` calls a second for ``duration_s``, each fired on schedule
    whether or not the earlier ones were answered; every answer, in firing order."""
    return asyncio.run(_burst(f"{node.url}/function/{name}{query}", rate_per_s, duration_s))


async def _burst(url: str, rate_per_s: float, duration_s: float) -> list[Answer]:
    count = max(1, round(rate_per_s * duration_s))
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    async with httpx.AsyncClient(timeout=CALL_TIMEOUT_S, limits=limits, trust_env=False) as client:

        async def one() -> Answer:
            started = time.perf_counter()
            try:
                reply = await client.post(url, content=b"burst")
            except httpx.HTTPError as exc:
                return Answer(0, "", "", None, None, time.perf_counter() - started, repr(exc))
            return _answer(reply, time.perf_counter() - started)

        loop = asyncio.get_running_loop()
        start = loop.time()
        tasks = []
        for i in range(count):
            delay = start + i / rate_per_s - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        return list(await asyncio.gather(*tasks))


def served_by(answers: list[Answer]) -> Counter[str]:
    return Counter(a.served_by for a in answers)


def describe(answers: list[Answer]) -> str:
    """A short account of a burst, for assertion messages."""
    outcomes = Counter((a.status, a.served_by, a.reason) for a in answers)
    errors = [a.error for a in answers if a.error][:3]
    slowest = max((a.seconds for a in answers), default=0.0)
    return f"{len(answers)} calls: {dict(outcomes)}; slowest {slowest:.2f} s; errors {errors}"


# ------------------------------------------------------------------------------ metrics


def invocations(node: NodeProcess, function: str) -> Counter[tuple[str, str]]:
    """``edgefaas_invocations_total`` of ``function`` on ``node``: (served_by, reason) →
    count."""
    text = httpx.get(f"{node.url}/metrics", timeout=10, trust_env=False).text
    counts: Counter[tuple[str, str]] = Counter()
    for family in text_string_to_metric_families(text):
        if family.name != "edgefaas_invocations":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels.get("function") == function:
                counts[(sample.labels["served_by"], sample.labels["reason"])] += int(sample.value)
    return counts


def calls_counted(node: NodeProcess, function: str) -> int:
    """``gateway_function_invocation_total`` of ``function`` on ``node`` (every call it
    answered, whatever the status)."""
    text = httpx.get(f"{node.url}/metrics", timeout=10, trust_env=False).text
    total = 0
    for family in text_string_to_metric_families(text):
        if family.name != "gateway_function_invocation":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels.get("function_name") == function:
                total += int(sample.value)
    return total


def call_log(node: NodeProcess, function: str) -> list[list[str]]:
    """The node's call log lines for ``function``, split: mark, name, status, time,
    served_by, reason, call id."""
    lines = []
    for line in node.log().splitlines():
        _, found, rest = line.partition("edgefaas.calls: ")
        fields = rest.split()
        if found and len(fields) == 7 and fields[1] == function:
            lines.append(fields)
    return lines


# ---------------------------------------------------------------- a node that is not one


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes


class CountingServer:
    """An HTTP server on 127.0.0.1 (on ``port``, or a free one) that answers every request
    with 200 and ``{"rogue": true}`` and keeps what it received. Use as a context
    manager."""

    def __init__(self, port: int = 0) -> None:
        self.received: list[Received] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                self.answer()

            def do_POST(self) -> None:
                self.answer()

            def answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                server.received.append(Received(self.command, self.path, headers, body))
                data = json.dumps({"rogue": True}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> CountingServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=10)


def claim(mesh: Mesh, name: str, functions: dict[str, dict[str, Any]]) -> None:
    """Make the node record ``name`` (see :meth:`Mesh.register_rogue`) report
    ``functions``: function → {digest, slots, in_flight, queue_depth} as a running pool."""
    key = Keys(mesh.prefix).node(name)
    client = redis.Redis.from_url(mesh.redis_url)
    try:
        raw = client.get(key)
        assert raw is not None, f"no node record {name}"
        record = json.loads(raw)
        record["functions"] = {
            function: {"state": "running", "version": 1, **status}
            for function, status in functions.items()
        }
        client.set(key, json.dumps(record))
    finally:
        client.close()
