"""Benchmark: deploying a 5 MB bundle to every node of a local 3-node mesh, next to the time
to copy the same bytes once over loopback, in one run, on this machine.

    python -m bench.deploy [--rounds 3] [--size-mb 5] [--nodes 3] [--keep]

Starts ``edgefaas mesh up`` in a temporary folder (its own process group, ended by the
group), writes a function whose bundle is ~SIZE MB (a handler that answers with a version
marker, plus SIZE MB of random bytes gzip cannot shrink), deploys it once to warm up, then
per round changes the marker and times, as ``edgefaas deploy`` does: build + sign + upload to
the first node + set the desired state, until ``/system/nodes`` shows every live node
running the new digest. Each node's ``/function/<name>`` is then called to confirm it answers
with the new marker, and the nodes' logs say which node each one fetched the bundle from.

The baseline is one copy of the same bytes over loopback: a plain ``http.server`` on
127.0.0.1 sending them to an httpx client, best of the rounds.

Checks (issue 3): the median deploy reaches every node in under 2 s; and the first node's
upload is not repeated per node — in every round the node uploaded to served fewer than all
of the other nodes' fetches (at least one peer fetched from a peer). Exit 0 if both are met.
The temporary folder is removed unless a check is missed, something fails, or ``--keep``.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

from bench.mesh import START_TIMEOUT_S, local_mesh, machine, workdir
from registry.bundle import build_bundle
from registry.client import MeshClient, Rollout, rollout_state, ship
from registry.errors import MeshError
from registry.manifest import load_manifest
from registry.signing import SigningKey

FUNCTION = "blob"
TARGET_S = 2.0
ROLLOUT_TIMEOUT_S = 30.0
LOG_WAIT_S = 3.0
POLL_S = 0.02
HANDLER = '''"""Answers with the version marker the benchmark changes every round."""

VERSION = "{marker}"


def handle(event):
    return VERSION.encode()
'''
MANIFEST = f"""version: 1
functions:
  {FUNCTION}:
    handler: fn/handler.py:handle
    pool: {{min: 1, max: 1}}
"""
_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


@dataclass
class NodeEvents:
    """What one node logged about one digest (wall-clock times)."""

    fetched_from: str | None = None
    fetched_at: float | None = None
    switched_at: float | None = None
    switch_ms: float | None = None
    pool_starting_at: float | None = None  # the new version's pool: launched
    pool_running_at: float | None = None  # ... and its workers warm

    @property
    def switch_started_at(self) -> float | None:
        if self.switched_at is None or self.switch_ms is None:
            return None
        return self.switched_at - self.switch_ms / 1000


@dataclass
class Round:
    label: str
    digest: str
    size: int
    started_at: float  # wall clock, to place the nodes' log lines
    steps: dict[str, float]  # step → seconds since the deploy started (client side)
    total_s: float  # deploy until /system/nodes shows every node running the digest
    events: dict[str, NodeEvents] = field(default_factory=dict)
    answers: dict[str, str] = field(default_factory=dict)  # node → problem ("" when right)


# -- the function and its deploys ---------------------------------------------------------------


def write_function(workdir: Path, size_mb: float) -> Path:
    """The function and its manifest, in a folder of their own (not the mesh's cwd)."""
    folder = workdir / "app" / "fn"
    folder.mkdir(parents=True)
    with open(folder / "payload.bin", "wb") as out:
        remaining = int(size_mb * 1024 * 1024)
        while remaining:
            chunk = min(remaining, 1024 * 1024)
            out.write(os.urandom(chunk))
            remaining -= chunk
    manifest = folder.parent / "functions.yaml"
    manifest.write_text(MANIFEST)
    return manifest


def deploy(
    label: str,
    client: MeshClient,
    manifest_path: Path,
    key: SigningKey,
    marker: str,
    count: int,
) -> Round:
    """One ``edgefaas deploy`` of the function with ``marker``, timed to every node."""
    (manifest_path.parent / "fn" / "handler.py").write_text(HANDLER.format(marker=marker))
    started_at = time.time()
    t0 = time.perf_counter()
    steps = {}
    spec = load_manifest(manifest_path).functions[FUNCTION]
    bundle = build_bundle(spec)
    steps["build"] = time.perf_counter() - t0
    signed = bundle.sign(key)
    steps["sign"] = time.perf_counter() - t0
    if not ship(client, signed):
        raise SystemExit(f"{label}: the gateway already held {signed.digest[:12]}; not a new one")
    steps["upload"] = time.perf_counter() - t0
    client.deploy(FUNCTION, signed.digest)
    steps["set desired"] = time.perf_counter() - t0
    rollout = _until_rolled_out(client, {FUNCTION: signed.digest}, count)
    total = time.perf_counter() - t0
    if not rollout.done or len(rollout.nodes) < count:
        raise SystemExit(f"{label}: the rollout did not finish: {_lagging(rollout)}")
    return Round(label, signed.digest, len(signed.data), started_at, steps, total)


def _until_rolled_out(client: MeshClient, targets: dict[str, str], count: int) -> Rollout:
    """wait_for_rollout with a shorter poll (it sleeps 0.1 s between looks), and done only
    when all ``count`` nodes are listed (it counts whichever nodes are live)."""
    deadline = time.monotonic() + ROLLOUT_TIMEOUT_S
    while True:
        rollout = rollout_state(client, targets)
        if (rollout.done and len(rollout.nodes) >= count) or rollout.failures:
            return rollout
        if time.monotonic() > deadline:
            return rollout
        time.sleep(POLL_S)


def wait_for_members(client: MeshClient, count: int) -> None:
    """Until /system/nodes lists ``count`` serving nodes: /readyz answers 200 before a
    node's first heartbeat after start says it serves, and peers only fetch from serving
    holders."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        nodes = client.nodes()["nodes"]
        serving = sorted(n["name"] for n in nodes if n.get("serving"))
        if len(serving) >= count:
            return
        if time.monotonic() > deadline:
            raise SystemExit(
                f"/system/nodes lists {len(serving)} serving node(s) ({', '.join(serving)}), "
                f"not {count}, after {START_TIMEOUT_S:g} s"
            )
        time.sleep(0.1)


def _lagging(rollout: Rollout) -> str:
    parts = [f"{where}: failed: {why}" for where, why in rollout.failures.items()]
    parts += [f"{where}: waiting: {why}" for where, why in rollout.waiting.items()]
    parts += [
        f"{node}: {states}"
        for node, states in rollout.nodes.items()
        if any(s != "running" for s in states.values())
    ]
    return "; ".join(parts) or "no live node answered"


def confirm(urls: list[str], marker: str) -> dict[str, str]:
    """Call every node's /function/<name>; node → "" when it answered with ``marker``."""
    answers = {}
    with httpx.Client(timeout=10) as http:
        for index, url in enumerate(urls):
            node = f"edge-{index + 1}"
            try:
                reply = http.post(f"{url}/function/{FUNCTION}")
                ok = reply.status_code == 200 and reply.text == marker
                answers[node] = "" if ok else f"{reply.status_code} {reply.text[:80]!r}"
            except httpx.HTTPError as exc:
                answers[node] = f"{type(exc).__name__}: {exc}"
    return answers


def node_events(mesh_dir: Path, count: int, digest: str, uploaded_to: str) -> dict[str, NodeEvents]:
    """Parse the nodes' logs for this digest; waits (bounded) for every node's lines."""
    short = digest[:12]
    fetched = re.compile(rf"function {FUNCTION}: fetched bundle {short} from (\S+)")
    switched = re.compile(
        rf"function {FUNCTION}: now version \d+ \({short}\), switched in (\d+) ms"
    )
    deadline = time.monotonic() + LOG_WAIT_S
    while True:
        events = {}
        for i in range(count):
            node = f"edge-{i + 1}"
            found = NodeEvents()
            try:
                text = (mesh_dir / f"{node}.log").read_text(errors="replace")
            except OSError:
                text = ""
            pool_lines = []
            for line in text.splitlines():
                if line.endswith(
                    (f"function {FUNCTION}: starting", f"function {FUNCTION}: running")
                ):
                    pool_lines.append((_log_time(line), line.rsplit(" ", 1)[1]))
                if short not in line:
                    continue
                at = _log_time(line)
                if match := fetched.search(line):
                    found.fetched_from, found.fetched_at = match.group(1), at
                elif match := switched.search(line):
                    found.switched_at, found.switch_ms = at, float(match.group(1))
            begun, ended = found.switch_started_at, found.switched_at
            for at, what in pool_lines:  # this version's pool: logged during its switch
                if at is None or begun is None or ended is None or not begun <= at <= ended:
                    continue
                if what == "starting":
                    found.pool_starting_at = at
                else:
                    found.pool_running_at = at
            events[node] = found
        complete = all(
            e.switched_at is not None and (n == uploaded_to or e.fetched_from is not None)
            for n, e in events.items()
        )
        if complete or time.monotonic() > deadline:
            return events
        time.sleep(0.05)


def _log_time(line: str) -> float | None:
    match = _LOG_TIME.match(line)
    if not match:
        return None
    return datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


# -- the baseline ---------------------------------------------------------------------------------


@contextmanager
def bytes_server(data: bytes) -> Iterator[str]:
    """A plain http.server on 127.0.0.1 that answers every GET with ``data``."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/bundle"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def copy_once(url: str, size: int) -> float:
    """Seconds to GET ``size`` bytes once (a fresh connection each time)."""
    with httpx.Client(timeout=30) as http:
        started = time.perf_counter()
        reply = http.get(url)
        elapsed = time.perf_counter() - started
    if len(reply.content) != size:
        raise SystemExit(f"baseline copy got {len(reply.content)} bytes, not {size}")
    return elapsed


# -- the report -----------------------------------------------------------------------------------


def _sources(r: Round, uploaded_to: str) -> str:
    parts = []
    for node, e in sorted(r.events.items()):
        if node == uploaded_to:
            continue
        parts.append(f"{node}←{e.fetched_from or '?'}")
    return ", ".join(parts)


def _phases(rounds: list[Round], node: str) -> list[str]:
    """Median ms of: wait, fetch, unpack, warm, report (see the report's legend)."""
    spans: list[list[float]] = [[], [], [], [], []]
    for r in rounds:
        e = r.events.get(node)
        if e is None or e.switched_at is None:
            continue
        begun, set_at = e.switch_started_at, r.started_at + r.steps["set desired"]
        if begun is not None:
            spans[0].append(begun - set_at)
        unpack_from = e.fetched_at if e.fetched_at is not None else begun
        if e.fetched_at is not None and begun is not None:
            spans[1].append(e.fetched_at - begun)
        if e.pool_starting_at is not None and unpack_from is not None:
            spans[2].append(e.pool_starting_at - unpack_from)
        if e.pool_starting_at is not None and e.pool_running_at is not None:
            spans[3].append(e.pool_running_at - e.pool_starting_at)
        spans[4].append(r.started_at + r.total_s - e.switched_at)
    return [f"{statistics.median(v) * 1000:.0f}" if v else "-" for v in spans]


def _at(r: Round, wall: float | None) -> str:
    return "?" if wall is None else f"{wall - r.started_at:.2f}"


def report(
    rounds: list[Round], warmup: Round, copies: list[float], count: int, uploaded_to: str
) -> bool:
    print(f"\nedgefaas bench.deploy — {machine()}, {count}-node local mesh\n")
    print(f"{'round':<14} {'deploy→all s':>12} {'bundle':>9}  fetched by ← from")
    for r in [warmup, *rounds]:
        print(
            f"{r.label:<14} {r.total_s:>12.3f} {r.size / 2**20:>6.2f} MB  "
            f"{_sources(r, uploaded_to)}"
        )
    print("\nwhere the time goes (s since the deploy started; node times from their logs)")
    nodes = sorted(warmup.events)
    header = f"{'round':<14} {'build':>6} {'sign':>6} {'upload':>7} {'set':>6}"
    header += "".join(f"  {n + ' fetched/switched (took)':>34}" for n in nodes)
    print(header + f"  {'seen':>6}")
    for r in [warmup, *rounds]:
        line = f"{r.label:<14}" + "".join(
            f" {r.steps[s]:>{w}.3f}"
            for s, w in (("build", 6), ("sign", 6), ("upload", 7), ("set desired", 6))
        )
        for n in nodes:
            e = r.events.get(n, NodeEvents())
            took = "?" if e.switch_ms is None else f"{e.switch_ms:.0f} ms"
            fetched = "-" if n == uploaded_to else _at(r, e.fetched_at)
            line += f"  {fetched + ' / ' + _at(r, e.switched_at) + ' (' + took + ')':>34}"
        print(line + f"  {r.total_s:>6.3f}")

    print(
        "\nper node, median over the timed rounds (ms): wait = desired set → the node starts "
        "switching (watch poll), fetch = + fetch, verify, store; unpack = + verify again, "
        "unpack; warm = + new pool launched and warm; report = switched → /system/nodes shows "
        "it (heartbeat)"
    )
    print(f"  {'node':<8} {'wait':>6} {'fetch':>6} {'unpack':>7} {'warm':>6} {'report':>7}")
    for n in nodes:
        print(
            f"  {n:<8}"
            + "".join(
                f" {v:>{w}}" for v, w in zip(_phases(rounds, n), (6, 6, 7, 6, 7), strict=True)
            )
        )

    median = statistics.median(r.total_s for r in rounds)
    baseline = min(copies)
    wrong = [
        f"{r.label} {n}: {why}" for r in [warmup, *rounds] for n, why in r.answers.items() if why
    ]
    fetchers = count - 1
    from_first = [sum(e.fetched_from == uploaded_to for e in r.events.values()) for r in rounds]
    from_peers = [
        sum(e.fetched_from not in (None, uploaded_to) for e in r.events.values()) for r in rounds
    ]
    unknown = sum(fetchers - a - b for a, b in zip(from_first, from_peers, strict=True))
    print(
        f"\n  median deploy to all {count} nodes ({len(rounds)} rounds): {median:.3f} s; "
        f"baseline, one loopback copy of {rounds[0].size / 2**20:.2f} MB "
        f"(best of {len(copies)}): {baseline * 1000:.1f} ms; deploy / baseline: "
        f"{median / baseline:.0f}×"
    )
    print(
        f"  fetches served by {uploaded_to} (uploaded to): {sum(from_first)}, by peers: "
        f"{sum(from_peers)}, unknown: {unknown} (of {fetchers * len(rounds)})"
    )
    for problem in wrong:
        print(f"  wrong answer after the rollout: {problem}")
    deployed_ok = median < TARGET_S and not wrong
    spread_ok = unknown == 0 and all(a < fetchers for a in from_first)
    checks = [
        (
            f"deploy to every node of a {count}-node mesh, median",
            f"{median:.3f} s",
            deployed_ok,
            f"< {TARGET_S:g} s",
        ),
        (
            "first node's upload not repeated per node",
            f"max {max(from_first)} of {fetchers}",
            spread_ok,
            f"< {fetchers}/round",
        ),
    ]
    print()
    for what, value, ok, target in checks:
        print(f"  {what:<46} {value:>10}   target {target:<11} {'met' if ok else 'MISSED'}")
    return all(ok for *_, ok, _ in checks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="timed deploys")
    parser.add_argument("--size-mb", type=float, default=5.0, help="random bytes in the bundle")
    parser.add_argument("--nodes", type=int, default=3, help="nodes in the local mesh")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.nodes < 2 or args.size_mb < 0:
        parser.error("need --rounds ≥ 1, --nodes ≥ 2 and --size-mb ≥ 0")
    with workdir("edgefaas-bench-deploy-") as work:
        try:
            manifest = write_function(work.path, args.size_mb)
            uploaded_to = "edge-1"
            with local_mesh(work.path, args.nodes) as mesh:
                urls, mesh_dir, token = mesh.urls, mesh.dir, mesh.admin_token()
                key = SigningKey.load(mesh_dir / "signing.key")
                nonce = os.urandom(4).hex()
                rounds: list[Round] = []
                copies: list[float] = []
                with MeshClient(urls[0], token, timeout_s=60) as client:
                    wait_for_members(client, args.nodes)
                    for index in range(args.rounds + 1):
                        label = "warm-up (new)" if index == 0 else f"{index}"
                        marker = f"v{index}-{nonce}"
                        done = deploy(label, client, manifest, key, marker, args.nodes)
                        done.answers = confirm(urls, marker)
                        done.events = node_events(mesh_dir, args.nodes, done.digest, uploaded_to)
                        print(
                            f"deploy {label}: {done.total_s:.3f} s ({done.digest[:12]})",
                            file=sys.stderr,
                        )
                        rounds.append(done)
                        bundle = mesh_dir / uploaded_to / "bundles" / f"{done.digest}.bundle"
                        data = bundle.read_bytes()
                        with bytes_server(data) as url:
                            copy_once(url, len(data))  # warm-up
                            copies.append(copy_once(url, len(data)))
            ok = report(rounds[1:], rounds[0], copies, args.nodes, uploaded_to)
            work.keep = args.keep or not ok
            return 0 if ok else 1
        except MeshError as exc:
            raise SystemExit(f"deploy failed: {exc}; logs in {work.path}") from None


if __name__ == "__main__":
    sys.exit(main())
