"""Helpers for the mesh integration tests (``test_mesh.py``): a mesh of real nodes sharing
one Redis, one signing key and one mesh key; fixture functions whose answer names their
version; calls, admin requests, CLI runs and waits; and a rogue peer that serves whatever
bytes it is given.

Every wait is bounded; every process a helper starts is a node started through the
``start_node`` factory (killed by process group at teardown) or a CLI run with a timeout.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import os
import socket
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import redis
import redis.asyncio

from registry.bundle import SignedBundle, build_bundle
from registry.desired import DesiredEntry, DesiredState
from registry.keys import Keys
from registry.manifest import load_manifest
from registry.signing import SigningKey
from tests.conftest import ADMIN_TOKEN, REPO, NodeProcess, cli_command, wait_for, wait_until_up

StartNode = Callable[..., NodeProcess]

CLI_TIMEOUT_S = 90.0
ROLLOUT_TIMEOUT_S = 30.0
MISSING_MODULE = "definitely_not_an_installed_module_for_edgefaas"

HANDLER = """\
import os
import time

VERSION = {version!r}


def handle(event):
    delay_ms = int(event.query.get("sleep_ms", "0"))
    if delay_ms:
        time.sleep(delay_ms / 1000)
    return {{"version": VERSION, "pid": os.getpid()}}
"""


# ------------------------------------------------------------------------ fixture functions


def write_function(project: Path, name: str, version: str, *, broken: bool = False) -> Path:
    """Write ``project/NAME/handler.py``, whose answer is ``{"version": VERSION, "pid"}``
    (``?sleep_ms=N`` holds the worker first), and its manifest ``project/NAME.yaml``;
    return the manifest. ``broken``: the module imports a package that does not exist."""
    folder = project / name
    folder.mkdir(parents=True, exist_ok=True)
    source = HANDLER.format(version=version)
    if broken:
        source = f"import {MISSING_MODULE}\n" + source
    (folder / "handler.py").write_text(source)
    manifest = project / f"{name}.yaml"
    manifest.write_text(
        "version: 1\n"
        "functions:\n"
        f"  {name}:\n"
        f"    handler: {name}/handler.py:handle\n"
        "    pool: {min: 1, max: 4}\n"
    )
    return manifest


def signed_bundle(manifest: Path, name: str, key: Path) -> SignedBundle:
    """The bundle `edgefaas deploy` builds for ``name`` (same bytes, same digest)."""
    spec = load_manifest(manifest).functions[name]
    return build_bundle(spec).sign(SigningKey.load(key))


def archive(members: list[tuple[str, bytes]]) -> bytes:
    """A gzip'd tar of regular files, in the order given, names taken as they are."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def archive_members(data: bytes) -> list[tuple[str, bytes]]:
    """The regular files of a bundle, in archive order."""
    members = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar:
            extracted = tar.extractfile(member)
            if extracted is not None:
                members.append((member.name, extracted.read()))
    return members


def flip_one_byte(data: bytes) -> bytes:
    flipped = bytearray(data)
    flipped[len(flipped) // 2] ^= 0x01
    return bytes(flipped)


# ---------------------------------------------------------------------------- HTTP helpers


def call(node: NodeProcess, name: str, timeout_s: float = 10.0) -> httpx.Response:
    return httpx.post(f"{node.url}/function/{name}", content=b"ping", timeout=timeout_s)


def version_of(node: NodeProcess, name: str) -> str | None:
    """The version marker ``name`` answers with on ``node``; None if it does not answer 200."""
    try:
        reply = call(node, name)
    except httpx.HTTPError:
        return None
    if reply.status_code != 200:
        return None
    answer: str = reply.json()["version"]
    return answer


def admin_get(node: NodeProcess, path: str) -> httpx.Response:
    return httpx.get(node.url + path, headers=node.admin_headers(), timeout=10)


def mesh_nodes(node: NodeProcess) -> dict[str, Any]:
    """``GET /system/nodes`` as ``node`` answers it."""
    reply = admin_get(node, "/system/nodes")
    assert reply.status_code == 200, reply.text
    result: dict[str, Any] = reply.json()
    return result


def live_names(node: NodeProcess) -> set[str]:
    return {record["name"] for record in mesh_nodes(node)["nodes"]}


def readyz(node: NodeProcess) -> dict[str, Any]:
    result: dict[str, Any] = httpx.get(node.url + "/readyz", timeout=5).json()
    return result


def put_bundle(
    node: NodeProcess, digest: str, data: bytes, signature: str, key_id: str
) -> httpx.Response:
    return httpx.put(
        f"{node.url}/system/bundles/{digest}",
        content=data,
        headers={
            **node.admin_headers(),
            "X-Bundle-Signature": signature,
            "X-Bundle-Key": key_id,
            "Content-Type": "application/octet-stream",
        },
        timeout=30,
    )


def function_view(node: NodeProcess, name: str) -> dict[str, Any]:
    """``GET /system/functions/NAME``: the pool here and the rollout in the mesh."""
    reply = admin_get(node, f"/system/functions/{name}")
    assert reply.status_code == 200, reply.text
    result: dict[str, Any] = reply.json()
    return result


# -------------------------------------------------------------------------------- the mesh


@dataclass
class Mesh:
    """Nodes sharing one Redis (``redis_url``, keys under ``prefix``), one signing key
    (trusted by all) and one mesh key. Nodes without a manifest start in ``workdir``, a
    folder with no ``functions.yaml``; fixture functions live in ``project``."""

    start_node: StartNode
    redis_url: str
    prefix: str
    key: Path
    pub: Path
    mesh_key: str
    workdir: Path
    project: Path
    nodes: list[NodeProcess] = field(default_factory=list)
    sandbox: str = "auto"  # the nodes' --sandbox

    def args(self) -> list[str]:
        return [
            "--redis", self.redis_url,
            "--key-prefix", self.prefix,
            "--signing-key", str(self.key),
            "--trusted-keys", str(self.pub),
            "--sandbox", self.sandbox,
        ]  # fmt: skip

    def start(self, manifest: Path | None = None, *extra: str, wait: bool = True) -> NodeProcess:
        node = self.start_node(
            manifest,
            *self.args(),
            *extra,
            env={"EDGEFAAS_MESH_KEY": self.mesh_key},
            wait_ready=wait,
            cwd=self.workdir,
        )
        self.nodes.append(node)
        return node

    def start_many(self, count: int, manifest: Path | None) -> list[NodeProcess]:
        """Start ``count`` nodes at once; only the first publishes ``manifest``."""
        started = [self.start(manifest if i == 0 else None, wait=False) for i in range(count)]
        for node in started:
            wait_until_up(node)
        return started

    def stop(self) -> None:
        """Kill every node (process groups). The mesh fixtures do it before the test's key
        prefix is deleted: a live node would write its keys again."""
        for node in self.nodes:
            node.kill_group()

    def cli(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run ``edgefaas ARGS`` (admin token in the environment) in ``workdir``."""
        env = {**os.environ, "EDGEFAAS_ADMIN_TOKEN": ADMIN_TOKEN, "PYTHONPATH": str(REPO)}
        result = subprocess.run(
            [*cli_command(), *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=self.workdir,
            timeout=CLI_TIMEOUT_S,
            check=False,
        )
        if check:
            assert result.returncode == 0, f"edgefaas {args} failed:\n{result.stderr}"
        return result

    def deploy(
        self, manifest: Path, via: NodeProcess, timeout_s: float = ROLLOUT_TIMEOUT_S
    ) -> subprocess.CompletedProcess[str]:
        return self.cli(
            "deploy", str(manifest),
            "--gateway", via.url,
            "--signing-key", str(self.key),
            "--timeout-s", str(timeout_s),
        )  # fmt: skip

    def wait_serving(
        self,
        name: str,
        version: str,
        nodes: list[NodeProcess] | None = None,
        timeout_s: float = ROLLOUT_TIMEOUT_S,
    ) -> None:
        """Until every node (default: all started) answers ``name`` with ``version``."""
        targets = self.nodes if nodes is None else nodes

        def serving() -> bool:
            return all(version_of(node, name) == version for node in targets)

        wait_for(serving, timeout_s, 0.1, f"every node to serve {name} {version}")

    def assign(self, bundle: SignedBundle) -> DesiredEntry:
        """Make ``bundle`` the desired version of its function straight in Redis — as a
        gateway would after an upload — without any node holding it."""

        async def assign() -> DesiredEntry:
            client = redis.asyncio.Redis.from_url(self.redis_url)
            try:
                desired = DesiredState(client, Keys(self.prefix))
                return await desired.assign(
                    bundle.name, bundle.digest, bundle.signature, bundle.key_id, []
                )
            finally:
                await client.aclose()

        return asyncio.run(assign())

    def register_rogue(self, name: str, url: str, *digests: str) -> None:
        """Enter a live-looking node ``name`` at ``url`` that holds ``digests`` into the
        mesh's Redis (its record never expires; the test's key prefix is deleted after)."""
        keys = Keys(self.prefix)
        record = {
            "name": name,
            "role": "edge",
            "url": url,
            "functions": {},
            "degraded": False,
            "serving": True,
            "heartbeat_at": time.time(),
            "instance": "rogue",
        }
        client = redis.Redis.from_url(self.redis_url)
        try:
            client.set(keys.node(name), json.dumps(record))
            client.sadd(keys.nodes, name)
            for digest in digests:
                client.sadd(keys.holders(digest), name)
        finally:
            client.close()


# ---------------------------------------------------------------------- calls under load


class CallLoop(threading.Thread):
    """Calls ``name`` on ``node`` one call after another — at most ``max_calls``, or until
    :meth:`stop` — and keeps every answer's version and every failure."""

    def __init__(
        self, node: NodeProcess, name: str, max_calls: int, query: str = "", pause_s: float = 0
    ) -> None:
        super().__init__(daemon=True)
        self.url = f"{node.url}/function/{name}{query}"
        self.max_calls = max_calls
        self.pause_s = pause_s
        self.versions: list[str] = []
        self.failures: list[str] = []
        self.calls = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=15) as client:
            while self.calls < self.max_calls and not self._stop_event.is_set():
                self.calls += 1
                try:
                    reply = client.post(self.url, content=b"ping")
                except httpx.HTTPError as exc:
                    self.failures.append(f"call {self.calls}: {exc!r}")
                    continue
                if reply.status_code == 200:
                    self.versions.append(reply.json()["version"])
                else:
                    self.failures.append(f"call {self.calls}: {reply.status_code} {reply.text}")
                if self.pause_s:
                    time.sleep(self.pause_s)

    @property
    def exhausted(self) -> bool:
        return self.calls >= self.max_calls

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=30)
        assert not self.is_alive(), "the call loop did not stop"


def in_order(versions: list[str], order: list[str]) -> bool:
    """True when ``versions`` never goes back to an earlier entry of ``order``."""
    ranks = [order.index(v) for v in versions]
    return all(a <= b for a, b in itertools.pairwise(ranks))


# --------------------------------------------------------------------------- a rogue peer


class RoguePeer:
    """An HTTP server on 127.0.0.1 that answers ``GET /system/bundles/DIGEST`` with the
    bytes it was given for that digest — without checking who asks. Use as a context
    manager; ``requests`` lists the digests asked for."""

    def __init__(self, bundles: dict[str, bytes]) -> None:
        self.bundles = bundles
        self.requests: list[str] = []
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                digest = self.path.rsplit("/", 1)[-1]
                peer.requests.append(digest)
                data = peer.bundles.get(digest)
                if data is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> RoguePeer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=10)


# ----------------------------------------------------------------------- pickling canary


class Canary:
    """Unpickling a canary connects to ``port`` on 127.0.0.1 (a :class:`Knocks` counts the
    connections) and comes out as None — proof that something unpickled it, which works from
    inside a sandbox too (host network), where the test's files are out of sight."""

    def __init__(self, port: int) -> None:
        self.port = port

    def __reduce__(self) -> tuple[Any, ...]:
        code = f"__import__('socket').create_connection(('127.0.0.1', {self.port}), 5).close()"
        return (eval, (code,))


class Knocks:
    """A TCP listener on 127.0.0.1 that counts the connections it accepts (a canary's)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port: int = self.sock.getsockname()[1]
        self.count = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            conn.close()
            self.count += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
