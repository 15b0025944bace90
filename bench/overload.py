"""Benchmark: a node offered ten times what one function can serve, for a minute — does it
keep serving at capacity (no congestion collapse), keep its memory, and refuse the rest fast?

    python -m bench.overload [--seconds 60] [--factor 10]

One node, no peers and no cloud (nowhere to spill), serving ``work``: echo holding its
worker 20 ms a call, with exactly two workers — a capacity of about 100 calls a second. In
the same run, its capacity is measured first (offered 1.2 × the nominal rate for 10 s: what
it completes is what it can do), then it is offered ``factor`` × that for ``--seconds``, open
loop (calls go out when due, whatever the answers: :mod:`bench.openloop`). The gateway's RSS
is sampled every second. Targets (issue 13): goodput ≥ 0.9 × capacity, p99 of a 429 ≤ 5 ms,
memory bounded.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.invoke import free_port, machine, process_group
from bench.openloop import OpenLoop, Run

REPO = Path(__file__).resolve().parent.parent
SERVICE_MS = 20
WORKERS = 2
NOMINAL_PER_S = WORKERS * 1000 / SERVICE_MS
MANIFEST = f"""\
version: 1
functions:
  work:
    handler: work/handler.py:handle
    pool: {{min: {WORKERS}, max: {WORKERS}}}
    spill: {{to: []}}
"""


class RssSampler(threading.Thread):
    """The gateway's resident memory (MB), once a second, until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.samples: list[float] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(1.0):
            try:
                with open(f"/proc/{self.pid}/status", encoding="ascii") as status:
                    for line in status:
                        if line.startswith("VmRSS:"):
                            self.samples.append(int(line.split()[1]) / 1024)
            except OSError:
                return


def goodput(run: Run) -> float:
    ok = sum(1 for answer in run.answers if answer.status == 200)
    return ok / run.elapsed_s


def p99(values: list[float]) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the overload")
    parser.add_argument("--factor", type=float, default=10.0, help="offered ÷ capacity")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="edgefaas-bench-overload-") as work:
        folder = Path(work)
        (folder / "work").mkdir()
        handler = (REPO / "functions" / "echo" / "handler.py").read_text()
        (folder / "work" / "handler.py").write_text(handler)
        (folder / "functions.yaml").write_text(MANIFEST)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        command = [
            sys.executable, "-c", "from gateway.cli.main import main; main()", "up",
            "--port", str(port), "--data-dir", str(folder / "data"),
            "--manifest", str(folder / "functions.yaml"), "--no-call-log",
        ]  # fmt: skip
        with process_group(command, folder / "node.log", url + "/readyz"):
            load = OpenLoop(f"{url}/function/work?sleep_ms={SERVICE_MS}", b"x", drain_s=5.0)
            load.run(NOMINAL_PER_S / 2, 3.0)  # warm-up
            capacity = goodput(load.run(NOMINAL_PER_S * 1.2, 10.0))
            sampler = RssSampler(process_pid(folder / "node.log"))
            sampler.start()
            started = time.perf_counter()
            over = load.run(capacity * args.factor, args.seconds)
            sampler.stop.set()
            sampler.join(5)
            took = time.perf_counter() - started
    return report(capacity, over, sampler.samples, args, took)


def process_pid(log: Path) -> int:
    """The gateway's pid, from uvicorn's line in the node's log."""
    for line in log.read_text().splitlines():
        if "Started server process [" in line:
            return int(line.rsplit("[", 1)[1].rstrip("]"))
    raise SystemExit(f"no server pid in {log}")


def report(
    capacity: float, run: Run, rss: list[float], args: argparse.Namespace, took: float
) -> int:
    by_status: dict[int, list[float]] = {}
    for answer in run.answers:
        by_status.setdefault(answer.status, []).append(answer.latency_s * 1000)
    served = goodput(run)
    ratio = served / capacity
    refused_p99 = p99(by_status.get(429, []))
    growth = (rss[-1] - rss[0]) if len(rss) >= 2 else 0.0
    print(f"\nedgefaas bench.overload — {machine()}, {args.seconds:g} s at {args.factor:g}×\n")
    print(f"  capacity (measured first): {capacity:.1f} calls/s (nominal {NOMINAL_PER_S:.0f})")
    print(f"  offered {run.rate_per_s:.0f} calls/s, {len(run.answers)} calls in {took:.1f} s")
    for status, latencies in sorted(by_status.items()):
        label = {0: "no answer", 200: "served", 429: "refused"}.get(status, "other")
        p50 = statistics.median(latencies)
        print(f"    {status:>3} {label:<10} {len(latencies):>7}  p50 {p50:8.2f} ms", end="")
        print(f"  p99 {p99(latencies):8.2f} ms")
    if rss:
        print(f"  gateway RSS: {rss[0]:.1f} MB → {rss[-1]:.1f} MB (max {max(rss):.1f})")
    checks = [
        ("goodput ÷ capacity", f"{ratio:.2f}", ratio >= 0.9, "≥ 0.9"),
        ("p99 of a 429", f"{refused_p99:.2f} ms", refused_p99 <= 5.0, "≤ 5 ms"),
        ("gateway RSS growth over the run", f"{growth:+.1f} MB", growth <= 20.0, "≤ 20 MB"),
    ]
    print()
    for what, value, ok, target in checks:
        print(f"  {what:<40} {value:>12}   target {target:<8} {'met' if ok else 'MISSED'}")
    return 0 if all(ok for *_, ok, _ in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
