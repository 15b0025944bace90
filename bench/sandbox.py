"""Benchmark: does a CPU hog next door slow echo down? echo's p50 at 1 connection, alone and
with a function that burns CPU in all its workers beside it (``sandbox.cpu: 0.5``), on a
node with sandboxes and on one started with ``--sandbox off``, in one run.

    python -m bench.sandbox [--duration 10]

The hog's cgroup holds all its workers to half a core on the sandboxed node; unsandboxed,
its four workers take both cores. Target (issue 12): sandbox on, echo's p50 beside the hog
≤ 1.5 × echo's p50 alone.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bench.invoke import REPO, free_port, machine, process_group
from bench.load import LoadResult, run_load

HOG = """\
import time


def handle(event):
    seconds = float(event.query.get("s", "1"))
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
    return {"loops": n}
"""
MANIFEST = """\
version: 1
functions:
  echo:
    handler: echo/handler.py:handle
    pool: {min: 1, max: 1}
  hog:
    handler: hog/handler.py:handle
    timeout_s: 30
    pool: {min: 4, max: 4}
    sandbox: {cpu: 0.5}
"""
HOG_CLIENTS = 4


class Hog(threading.Thread):
    """Keeps every hog worker busy until stopped (calls of 1 s, back to back)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.stop = threading.Event()
        self.calls = 0
        self.loops = 0  # the hog's work: busy-loop turns, summed over its answers

    def run(self) -> None:
        def loop() -> None:
            with httpx.Client(timeout=60) as client:
                while not self.stop.is_set():
                    answer = client.post(self.url + "/function/hog?s=1")
                    self.calls += 1
                    if answer.status_code == 200:
                        self.loops += int(answer.json()["loops"])

        threads = [threading.Thread(target=loop, daemon=True) for _ in range(HOG_CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


def echo_p50(url: str, duration_s: float) -> LoadResult:
    run_load(url + "/function/echo", 1, 1.0, b"hello")  # warm-up
    return run_load(url + "/function/echo", 1, duration_s, b"hello")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="edgefaas-bench-sandbox-") as work:
        folder = Path(work)
        (folder / "hog").mkdir()
        (folder / "hog" / "handler.py").write_text(HOG)
        (folder / "echo").mkdir()
        shutil.copy(REPO / "functions" / "echo" / "handler.py", folder / "echo" / "handler.py")
        (folder / "functions.yaml").write_text(MANIFEST)
        rows: dict[str, tuple[LoadResult, LoadResult, int]] = {}  # alone, beside, hog loops
        sandboxed = False
        for mode in ("auto", "off"):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            command = [
                sys.executable, "-c", "from gateway.cli.main import main; main()", "up",
                "--port", str(port), "--data-dir", str(folder / f"data-{mode}"),
                "--manifest", str(folder / "functions.yaml"), "--sandbox", mode,
            ]  # fmt: skip
            with process_group(command, folder / f"node-{mode}.log", url + "/readyz"):
                if mode == "auto":
                    readyz = httpx.get(url + "/readyz", timeout=10).json()
                    sandboxed = bool(readyz["sandbox"]["active"])
                alone = echo_p50(url, args.duration)
                hog = Hog(url)
                hog.start()
                time.sleep(2.0)  # every hog worker busy
                beside = echo_p50(url, args.duration)
                hog.stop.set()
                hog.join(timeout=5)
                rows[mode] = (alone, beside, hog.loops)
    return report(rows, sandboxed, args.duration)


def report(rows: dict[str, tuple[LoadResult, LoadResult, int]], sandboxed: bool, d: float) -> int:
    print(f"\nedgefaas bench.sandbox — {machine()}, {d:g} s per run\n")
    print("                  echo alone       echo beside the hog     hog's work")
    columns = ("p50 ms", "p99 ms", "p50 ms", "p99 ms")
    print(f"{'node':<16} " + " ".join(f"{c:>8}" for c in columns) + f" {'ratio':>6} {'loops':>12}")
    for mode, (alone, beside, loops) in rows.items():
        name = "sandbox on" if mode == "auto" else "--sandbox off"
        ratio = beside.p50_ms / alone.p50_ms
        times = (
            f"{alone.p50_ms:>8.3f} {alone.p99_ms:>8.3f} {beside.p50_ms:>8.3f} {beside.p99_ms:>8.3f}"
        )
        print(f"{name:<16} {times} {ratio:>6.2f} {loops:>12,}")
    if not sandboxed:
        print("\n  the node could not sandbox its functions here (not root?): no target measured")
        return 1
    alone, beside, loops = rows["auto"]
    ratio = beside.p50_ms / alone.p50_ms
    share = loops / rows["off"][2] if rows["off"][2] else 0.0
    ok = ratio <= 1.5
    print(f"\n  the hog's work, sandbox on / off: {share:.2f} (its cgroup holds it to 0.5 core)")
    print(
        f"  {'echo p50 beside the hog / alone, sandbox on':<52} {ratio:>10.2f}   "
        f"target ≤ 1.5      {'met' if ok else 'MISSED'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
