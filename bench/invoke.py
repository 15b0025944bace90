"""Benchmark: a node's /function/echo against the same function called in-process by a plain
Starlette app, in one run, on this machine.

    python -m bench.invoke [--duration 10] [--rounds 2]

Starts both servers (each in its own process group, ended by the group), drives both with
the same load at 1 and 64 connections, alternating between them, and keeps each server's best
round. Then measures cold start (scale echo to zero, time the first call) and the time to fork
a ready worker, and prints the ratios with the targets of issue 2.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from bench import mesh
from bench.load import LoadResult, generator_name, run_load

REPO = Path(__file__).resolve().parent.parent
TOKEN = "bench-admin-token"
BODY = b"hello"
CONNECTIONS = (1, 64)
COLD_SAMPLES = 15


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def process_group(command: list[str], log: Path, health_url: str) -> Iterator[None]:
    env = {**os.environ, "EDGEFAAS_ADMIN_TOKEN": TOKEN, "PYTHONPATH": str(REPO)}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"{command[2:]} exited; see {log}")
            try:
                if httpx.get(health_url, timeout=1).status_code < 500:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{command[2:]} did not come up; see {log}")
            time.sleep(0.1)
        yield
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def best(results: list[LoadResult]) -> LoadResult:
    return max(results, key=lambda r: r.requests_per_s)


def measure(
    urls: dict[str, str], duration_s: float, rounds: int
) -> dict[tuple[str, int], LoadResult]:
    results: dict[tuple[str, int], list[LoadResult]] = {}
    for connections in CONNECTIONS:
        for url in urls.values():  # warm-up
            run_load(url, connections, 1.0, BODY)
        for _ in range(rounds):
            for name, url in urls.items():
                results.setdefault((name, connections), []).append(
                    run_load(url, connections, duration_s, BODY)
                )
    return {key: best(value) for key, value in results.items()}


def pool(client: httpx.Client) -> dict:  # type: ignore[type-arg]
    return client.get("/system/functions/echo").json()  # type: ignore[no-any-return]


def cold_starts(node_url: str) -> tuple[list[float], float | None]:
    """Scale echo to zero, then time the first call; repeat. Returns the call times (ms)
    and the pool's p50 spawn time (ms)."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    samples = []
    with httpx.Client(base_url=node_url, headers=headers, timeout=30) as client:
        for _ in range(COLD_SAMPLES):
            client.post("/system/scale-function/echo", json={"replicas": 0}).raise_for_status()
            deadline = time.monotonic() + 10
            while pool(client)["replicas"] > 0:
                if time.monotonic() > deadline:
                    raise SystemExit("echo did not scale to zero")
                time.sleep(0.02)
            started = time.perf_counter()
            response = client.post("/function/echo", content=BODY)
            samples.append((time.perf_counter() - started) * 1000)
            if response.content != BODY:
                raise SystemExit(f"cold call answered {response.status_code}: {response.text}")
        spawn = pool(client)["counters"]["spawn_ms_p50"]
        client.post("/system/scale-function/echo", json={"min": 1, "max": 2})
    return samples, spawn


def machine() -> str:
    return f"{mesh.machine()}, load: {generator_name()}"


def report(
    results: dict[tuple[str, int], LoadResult],
    cold: list[float],
    spawn_ms: float | None,
    duration_s: float,
) -> bool:
    print(f"\nedgefaas bench.invoke — {machine()}, {duration_s:g} s per run\n")
    print(f"{'conns':>5}  {'server':<34} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}")
    for (name, connections), r in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        print(
            f"{connections:>5}  {name:<34} {r.requests_per_s:>9.0f} {r.p50_ms:>8.3f} "
            f"{r.p99_ms:>8.3f} {r.errors:>6}"
        )
    base64, node64 = results[("baseline", 64)], results[("edgefaas", 64)]
    base1, node1 = results[("baseline", 1)], results[("edgefaas", 1)]
    ratio = node64.requests_per_s / base64.requests_per_s
    added = node1.p50_ms - base1.p50_ms
    cold_p50 = statistics.median(cold)
    checks = [
        (
            "throughput at 64 connections, edgefaas / baseline",
            f"{ratio:.2f}",
            ratio >= 0.6,
            "≥ 0.6",
        ),
        ("added p50 latency at 1 connection", f"{added:.3f} ms", added <= 0.3, "≤ 0.3 ms"),
        (
            f"cold start from zero, p50 of {len(cold)}",
            f"{cold_p50:.1f} ms",
            cold_p50 <= 30,
            "≤ 30 ms",
        ),
        (
            "fork to ready worker, p50",
            f"{spawn_ms} ms",
            spawn_ms is not None and spawn_ms <= 10,
            "≤ 10 ms",
        ),
    ]
    print()
    for what, value, ok, target in checks:
        print(f"  {what:<52} {value:>10}   target {target:<9} {'met' if ok else 'MISSED'}")
    return all(ok for *_, ok, _ in checks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=2, help="runs per server and load")
    args = parser.parse_args(argv)
    logs = Path(os.environ.get("TMPDIR", "/tmp"))
    node_port, base_port = free_port(), free_port()
    node_url, base_url = f"http://127.0.0.1:{node_port}", f"http://127.0.0.1:{base_port}"
    node_cmd = [
        sys.executable,
        "-c",
        "from gateway.cli.main import main; main()",
        "up",
        "--port",
        str(node_port),
        "--data-dir",
        str(logs / "edgefaas-bench"),
        "--manifest",
        str(REPO / "functions.yaml"),
    ]
    base_cmd = [
        sys.executable,
        "-m",
        "bench.baseline",
        str(base_port),
        str(REPO / "functions" / "echo" / "handler.py"),
    ]
    urls = {"baseline": base_url + "/function/echo", "edgefaas": node_url + "/function/echo"}
    with (
        process_group(node_cmd, logs / "edgefaas-bench-node.log", node_url + "/readyz"),
        process_group(base_cmd, logs / "edgefaas-bench-baseline.log", urls["baseline"]),
    ):
        results = measure(urls, args.duration, args.rounds)
        cold, spawn_ms = cold_starts(node_url)
    return 0 if report(results, cold, spawn_ms, args.duration) else 1


if __name__ == "__main__":
    sys.exit(main())
