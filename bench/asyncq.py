"""Benchmark: asynchronous calls — a node's accept rate (202s a second) and drain rate (no-op
jobs finished a second, node-wide) next to plain RQ ``SimpleWorker`` processes draining the
same number of no-op jobs on the same Redis, in one run, on this machine.

    python -m bench.asyncq [--calls 5000] [--clients 32] [--rounds 3] [--prefix P] [--keep]

Everything goes to 127.0.0.1: the Redis at ``--redis`` (default ``redis://127.0.0.1:6379``,
not started here) and one ``edgefaas up`` node (its own process group, ended by the group)
with ``--key-prefix P``, serving a function ``noop`` (``pool: {min: 2, max: 2,
concurrency: 1}``) whose handler returns an empty body. ``P`` defaults to a fresh
``efbench-aq-…``; a ``--prefix`` that Redis already has keys of is refused. Every key of the
run is removed at the end: the node's (``P:…``), the RQ queues ``P.noop`` and ``P.rq-noop``
with their registries and workers (``rq:…:P.…``), the baseline's jobs and workers, whose
names start with ``P-`` (``rq:…:P-…``), and the node's jobs (``rq:job:ID``,
``rq:results:ID``), found in the registries and in the 202 answers.

The baseline runs first, before the node starts: ``Queue.enqueue("bench.asyncq.noop")``
N times from this process (RQ's enqueue rate), then one, then two ``SimpleWorker``
processes (``work(burst=True)``, log level WARNING so that a log line per job does not slow
them) drain the N jobs. Each worker is built and connected first and waits for a go signal,
so the clock starts when the go is given and stops when ``rq:finished:Q`` counts N.

Then the node, after a warm-up (sync calls, then 1,000 async calls on ``--clients``
connections, run to completion), ``--rounds`` times (default 3) over:

1. **accept, workers held**: two sync calls to ``/function/noop/hold`` keep both workers
   busy (the handler waits for a file), and as the contract has it async calls only use
   idle workers, so the consumer does not compete; N ``POST /async-function/noop`` go out on
   ``--clients`` keep-alive connections (raw HTTP/1.1 on uvloop, a closed loop); the rate is
   N over the time from the first call sent to the last 202 read. What the node finished or
   claimed meanwhile is printed under the table (a claimed job may wait in a worker's pipe
   behind the held call).
2. **drain of a pre-filled queue**: the held calls are let go; N over the time until
   ``rq:finished:P.noop`` has grown by N.
3. **accept and drain together**: N more calls with the workers idle, so both share the
   two cores as they would in use: the accept rate while draining, and the drain rate from
   the first call sent until all N have finished.

The table gives, per row, the median round and the range of the rounds (the RQ rows run
once: one SimpleWorker takes about half a minute for 5,000 jobs here).

Targets (issue 5), on the medians: accept (workers held) ≥ 3,000 calls/s; drain with two
workers ≥ 1.5 × the drain of two SimpleWorkers, both for the pre-filled queue (the
like-for-like case) and from the first accept; the ratios to one SimpleWorker are printed
too. Exit 0 if all are met. A drain that does not end within ``--timeout`` seconds fails the
run with the queue's state. The node's log and data are in a temporary folder, removed
unless the run fails, a target is missed, or ``--keep``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import uvloop
from redis import Redis

from bench.invoke import TOKEN, free_port, process_group
from bench.mesh import REPO, machine, workdir

FUNCTION = "noop"
RQ_FUNCTION = "bench.asyncq.noop"  # by name: run as __main__, noop's module is not bench.asyncq
WORKERS = 2  # the node's pool: {min: 2, max: 2}
ACCEPT_TARGET = 3000.0
DRAIN_TARGET = 1.5
BODY = b'{"reading": 1}'
WARM_SYNC = 20
WARM_ASYNC = 1000
READY_TIMEOUT_S = 60.0
HOLD_TIMEOUT_S = 30.0
POLL_S = 0.01
KINDS = ("wip", "scheduled", "finished", "failed", "canceled")  # RQ registries
MAX_CALLS = 100_000
PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9_-]{3,47}")  # no "." or ":": they separate its keys
HANDLER = '''"""No-op: answers an empty body. A call to /hold (the benchmark's sync calls) keeps
its worker until the file RELEASE exists, so that async calls find no idle worker."""

import os
import time
from pathlib import Path

HELD = Path({held!r})
RELEASE = HELD / "release"
MAX_HOLD_S = 120.0


def handle(event):
    if event.path == "/hold":
        (HELD / f"held-{{os.getpid()}}").touch()
        deadline = time.monotonic() + MAX_HOLD_S
        while not RELEASE.exists() and time.monotonic() < deadline:
            time.sleep(0.005)
    return b""
'''
MANIFEST = f"""version: 1
functions:
  {FUNCTION}:
    handler: fn/handler.py:handle
    timeout_s: 150
    pool: {{min: {WORKERS}, max: {WORKERS}, concurrency: 1}}
"""
# A SimpleWorker process: built and connected, then it waits for the go (a list to pop).
RQ_WORKER = """
import sys
from redis import Redis
from rq import Queue
from rq.worker import SimpleWorker
import bench.asyncq  # the job's module, imported before the clock starts

url, queue, name, go = sys.argv[1:5]
redis = Redis.from_url(url)
worker = SimpleWorker([Queue(queue, connection=redis)], connection=redis, name=name)
print("ready", flush=True)
if redis.blpop([go], timeout=60) is None:
    sys.exit("no go signal within 60 s")
worker.work(burst=True, logging_level="WARNING")
"""


def noop() -> None:
    """The baseline's job: does nothing (RQ imports it as ``bench.asyncq.noop``)."""


@dataclass(frozen=True)
class Rate:
    """``count`` things in ``seconds``."""

    count: int
    seconds: float

    @classmethod
    def since(cls, started: float, count: int) -> Rate:
        """``count`` things from ``started`` (a ``perf_counter`` time) until now."""
        return cls(count, time.perf_counter() - started)

    @property
    def per_s(self) -> float:
        return self.count / self.seconds if self.seconds > 0 else float("nan")


@dataclass
class Accepted:
    """What a burst of async calls got back."""

    rate: Rate
    started: float  # perf_counter when the first call went out
    statuses: Counter[int] = field(default_factory=Counter)
    call_ids: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.statuses == Counter({202: self.rate.count})


@dataclass
class Results:
    calls: int
    clients: int
    rq_enqueue: Rate | None = None
    rq_drain: dict[int, Rate] = field(default_factory=dict)  # SimpleWorker processes → drain
    # the node's, one entry per round:
    held: list[Rate] = field(default_factory=list)  # accept, workers held
    held_ran: list[tuple[int, int]] = field(default_factory=list)  # (finished, claimed) then
    prefilled: list[Rate] = field(default_factory=list)  # drain of the pre-filled queue
    together: list[Rate] = field(default_factory=list)  # accept while draining
    end_to_end: list[Rate] = field(default_factory=list)  # drain from the first accept


# -- Redis: counting, waiting, cleaning -----------------------------------------------------------


class QueueKeys:
    """An RQ queue's keys, read without RQ (a pipeline of counts)."""

    def __init__(self, redis: Redis, name: str) -> None:
        self.redis, self.name = redis, name

    def state(self) -> dict[str, int]:
        pipe = self.redis.pipeline(transaction=False)
        pipe.llen(f"rq:queue:{self.name}")
        for kind in KINDS:
            pipe.zcard(f"rq:{kind}:{self.name}")
        return dict(zip(("queued", *KINDS), pipe.execute(), strict=True))

    def finished(self) -> int:
        return int(self.redis.zcard(f"rq:finished:{self.name}"))

    def wait_finished(
        self, base: int, count: int, started: float, timeout_s: float, what: str
    ) -> Rate:
        """Until ``rq:finished`` counts ``base + count``: the rate of those ``count`` since
        ``started`` (perf_counter)."""
        deadline = time.monotonic() + timeout_s
        while self.finished() < base + count:
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"{what}: not drained within {timeout_s:g} s (--timeout); {self.name}: "
                    f"{self.state()}, finished wanted: {base + count}"
                )
            time.sleep(POLL_S)
        return Rate.since(started, count)


def run_keys(redis: Redis, prefix: str) -> set[bytes]:
    """The keys that hold ``prefix`` as this run names them: the node's (``P:…``), the
    queues' and their registries (``rq:…:P.…``), the baseline's jobs and workers
    (``rq:…:P-…``) and the go lists."""
    patterns = (f"{prefix}:*", f"rq:*:{prefix}.*", f"rq:*:{prefix}-*")
    return {key for pattern in patterns for key in redis.scan_iter(pattern, count=1000)}


def clean(redis: Redis, prefix: str, queues: list[str], call_ids: list[str]) -> int:
    """Remove the run's keys (:func:`run_keys`) and the node's jobs, found in ``call_ids``
    and in the queues' lists and registries; returns how many were removed."""
    ids = set(call_ids)
    for queue in queues:
        ids.update(m.decode() for m in redis.lrange(f"rq:queue:{queue}", 0, -1))
        for kind in KINDS:
            for member in redis.zrange(f"rq:{kind}:{queue}", 0, -1):
                ids.add(member.decode().split(":", 1)[0])  # wip members are ID:TOKEN
    keys = run_keys(redis, prefix)
    keys.update(f"rq:{kind}:{i}".encode() for i in ids for kind in ("job", "results", "executions"))
    pipe = redis.pipeline(transaction=False)
    for key in keys:
        pipe.delete(key)
    removed = sum(pipe.execute())
    marks = (f":{prefix}.".encode(), f":{prefix}-".encode())
    for registry in ("rq:queues", "rq:workers"):
        mine = [m for m in redis.smembers(registry) if any(mark in m for mark in marks)]
        if mine:
            redis.srem(registry, *mine)
    return removed


# -- the baseline: RQ's enqueue and SimpleWorker --------------------------------------------------


def rq_enqueue(redis: Redis, queue: str, prefix: str, calls: int, batch: int) -> Rate:
    """``Queue.enqueue`` of the no-op, one call at a time, as an application would."""
    from rq import Queue as RQQueue

    q = RQQueue(queue, connection=redis)
    started = time.perf_counter()
    for i in range(calls):
        q.enqueue(RQ_FUNCTION, job_id=f"{prefix}-{batch}-{i}")
    return Rate.since(started, calls)


@contextmanager
def rq_workers(url: str, queue: str, prefix: str, count: int, log: Path) -> Iterator[str]:
    """``count`` SimpleWorker processes, each ready and waiting: yields the go list's key
    (push one item per worker to start them); ended by process group."""
    go = f"{prefix}:go:{count}"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    procs = []
    try:
        with open(log, "ab") as out:
            for i in range(count):
                procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-c",
                            RQ_WORKER,
                            url,
                            queue,
                            f"{prefix}-rq-{count}-{i}",
                            go,
                        ],
                        cwd=REPO,
                        env=env,
                        stdout=subprocess.PIPE,
                        stderr=out,
                        start_new_session=True,
                    )
                )
        for proc in procs:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != b"ready":
                raise SystemExit(f"a SimpleWorker process did not start; see {log}")
        yield go
        for proc in procs:
            if proc.wait(timeout=30) != 0:
                raise SystemExit(f"a SimpleWorker process exited with {proc.returncode}; see {log}")
    finally:
        for proc in procs:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def rq_baseline(
    redis: Redis, url: str, args: argparse.Namespace, log: Path, results: Results
) -> None:
    queue = QueueKeys(redis, f"{args.prefix}.rq-{FUNCTION}")
    for count in (1, 2):
        enqueued = rq_enqueue(redis, queue.name, args.prefix, args.calls, count)
        if count == 1:
            results.rq_enqueue = enqueued
        before = queue.finished()
        with rq_workers(url, queue.name, args.prefix, count, log) as go:
            started = time.perf_counter()
            redis.rpush(go, *["go"] * count)
            rate = queue.wait_finished(
                before, args.calls, started, args.timeout, f"{count} SimpleWorker(s)"
            )
        results.rq_drain[count] = rate
        print(
            f"RQ: enqueue {enqueued.per_s:.0f}/s; {count} SimpleWorker(s) drained "
            f"{args.calls} jobs in {rate.seconds:.2f} s",
            file=sys.stderr,
        )


# -- the node ------------------------------------------------------------------------------------


def write_function(folder: Path) -> Path:
    """The no-op function and its manifest; the handler's hold files go in ``folder/held``."""
    (folder / "held").mkdir(parents=True)
    (folder / "fn").mkdir()
    (folder / "fn" / "handler.py").write_text(HANDLER.format(held=str(folder / "held")))
    manifest = folder / "functions.yaml"
    manifest.write_text(MANIFEST)
    return manifest


def wait_running(client: httpx.Client, redis: Redis, queue: str, log: Path) -> None:
    """Until the pool has its two workers and the node's RQ worker for the queue is
    registered."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        reply = client.get(f"/system/functions/{FUNCTION}")
        replicas = reply.json().get("replicas", 0) if reply.status_code == 200 else 0
        if replicas >= WORKERS and redis.scard(f"rq:workers:{queue}") > 0:
            return
        if time.monotonic() > deadline:
            raise SystemExit(
                f"{FUNCTION} not running with {WORKERS} workers and an RQ worker on {queue} "
                f"within {READY_TIMEOUT_S:g} s (replicas {replicas}); see {log}"
            )
        time.sleep(0.1)


def accept(url: str, calls: int, clients: int) -> Accepted:
    """``calls`` POSTs to ``url`` on ``clients`` keep-alive connections (a closed loop)."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(_accept(url, calls, clients))


async def _accept(url: str, calls: int, clients: int) -> Accepted:
    parts = urlsplit(url)
    if parts.hostname != "127.0.0.1" or parts.port is None:
        raise ValueError(f"only http://127.0.0.1:PORT is called, not {url}")
    request = (
        f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json"
        f"\r\nContent-Length: {len(BODY)}\r\n\r\n"
    ).encode() + BODY
    streams = [
        await asyncio.open_connection(parts.hostname, parts.port)
        for _ in range(min(clients, calls))
    ]
    left = [calls]
    statuses: Counter[int] = Counter()
    call_ids: list[str] = []

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Calls until ``calls`` have gone out; a connection that breaks ends its client
        and counts as status 0 (the others go on)."""
        try:
            while left[0] > 0:
                left[0] -= 1
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    name = name.lower()
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"x-call-id":
                        call_ids.append(value.strip().decode())
                statuses[int(head[9:12])] += 1
                await reader.readexactly(length)
        except (OSError, EOFError, ValueError, asyncio.LimitOverrunError):
            statuses[0] += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client(*stream) for stream in streams))
    return Accepted(Rate.since(started, calls), started, statuses, call_ids)


def check_accepted(accepted: Accepted, what: str, log: Path) -> None:
    if not accepted.ok:
        raise SystemExit(f"{what}: answers {dict(accepted.statuses)}, not all 202; see {log}")


@contextmanager
def workers_held(url: str, held: Path) -> Iterator[None]:
    """Both workers busy with a sync call to /hold until the block ends."""
    for mark in held.iterdir():  # a previous round's
        mark.unlink()
    with ThreadPoolExecutor(WORKERS) as pool:
        calls: list[Future[httpx.Response]] = [
            pool.submit(httpx.post, f"{url}/function/{FUNCTION}/hold", timeout=200)
            for _ in range(WORKERS)
        ]
        try:
            deadline = time.monotonic() + HOLD_TIMEOUT_S
            while len(list(held.glob("held-*"))) < WORKERS:
                if time.monotonic() > deadline or any(c.done() for c in calls):
                    raise SystemExit(f"the workers were not held within {HOLD_TIMEOUT_S:g} s")
                time.sleep(0.01)
            yield
        finally:
            (held / "release").touch()
        answers = [c.result().status_code for c in calls]
        if answers != [200] * WORKERS:
            raise SystemExit(f"the hold calls answered {answers}")


def node_phases(
    redis: Redis, url: str, args: argparse.Namespace, work: Path, results: Results, seen: list[str]
) -> None:
    """Start the node, warm it up and run the three phases; the call ids answered go to
    ``seen``."""
    queue = QueueKeys(redis, f"{args.prefix}.{FUNCTION}")
    manifest = write_function(work)
    port = free_port()
    node_url = f"http://127.0.0.1:{port}"
    log = work / "node.log"
    command = [
        sys.executable, "-c", "from gateway.cli.main import main; main()", "up",
        "--port", str(port), "--node", args.prefix, "--data-dir", str(work / "data"),
        "--manifest", str(manifest), "--redis", url, "--key-prefix", args.prefix,
        "--no-call-log", "--log-level", "warning",
    ]  # fmt: skip
    async_url = f"{node_url}/async-function/{FUNCTION}"
    with (
        process_group(command, log, node_url + "/readyz"),
        httpx.Client(
            base_url=node_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
        ) as client,
    ):
        wait_running(client, redis, queue.name, log)
        for _ in range(WARM_SYNC):
            reply = client.post(f"/function/{FUNCTION}", content=BODY)
            if reply.status_code != 200:
                raise SystemExit(f"warm-up sync call answered {reply.status_code}: {reply.text}")
        warm = accept(async_url, WARM_ASYNC, args.clients)
        seen += warm.call_ids
        check_accepted(warm, "warm-up", log)
        queue.wait_finished(0, WARM_ASYNC, warm.started, args.timeout, "warm-up")
        print(f"node {args.prefix} warm: {queue.state()}", file=sys.stderr)
        for number in range(1, args.rounds + 1):
            a_round(queue, node_url, args, work, results, seen)
            print(
                f"round {number}: accept held {results.held[-1].per_s:.0f}/s, drain "
                f"pre-filled {results.prefilled[-1].per_s:.0f}/s, accept while draining "
                f"{results.together[-1].per_s:.0f}/s, drain from first accept "
                f"{results.end_to_end[-1].per_s:.0f}/s; {queue.state()}",
                file=sys.stderr,
            )


def a_round(
    queue: QueueKeys,
    node_url: str,
    args: argparse.Namespace,
    work: Path,
    results: Results,
    seen: list[str],
) -> None:
    """The three phases once (see the module's docstring)."""
    async_url = f"{node_url}/async-function/{FUNCTION}"
    log = work / "node.log"
    # 1. accept with both workers held; 2. drain of the pre-filled queue
    base = queue.finished()
    with workers_held(node_url, work / "held"):
        held = accept(async_url, args.calls, args.clients)
        seen += held.call_ids
        state = queue.state()
    released = time.perf_counter()
    check_accepted(held, "accept (workers held)", log)
    results.held.append(held.rate)
    results.held_ran.append((state["finished"] - base, state["wip"]))
    results.prefilled.append(
        queue.wait_finished(base, args.calls, released, args.timeout, "pre-filled drain")
    )
    # 3. accept and drain together
    base = queue.finished()
    together = accept(async_url, args.calls, args.clients)
    seen += together.call_ids
    check_accepted(together, "accept (draining)", log)
    results.together.append(together.rate)
    results.end_to_end.append(
        queue.wait_finished(base, args.calls, together.started, args.timeout, "accept and drain")
    )


# -- the report -----------------------------------------------------------------------------------


def report(r: Results, load_before: float) -> bool:
    rounds = len(r.held)
    print(
        f"\nedgefaas bench.asyncq — {machine()}; {r.calls} calls or jobs per row, "
        f"{r.clients} client connections; load average before the run: {load_before:.2f}\n"
    )
    rows: list[tuple[str, list[Rate]]] = [
        ("RQ Queue.enqueue, one Python process", _one(r.rq_enqueue)),
        ("RQ 1 SimpleWorker, drain of a pre-filled queue", _one(r.rq_drain.get(1))),
        ("RQ 2 SimpleWorkers, drain of a pre-filled queue", _one(r.rq_drain.get(2))),
        ("edgefaas accept (202s), workers held", r.held),
        ("edgefaas drain of the pre-filled queue, 2 workers", r.prefilled),
        ("edgefaas accept (202s) while draining", r.together),
        ("edgefaas drain, first accept → last finished", r.end_to_end),
    ]
    print(f"  {'':<52} {'rounds':>6} {'seconds':>8} {'per s':>7}   range")
    for what, rates in rows:
        if rates:
            mid = median(rates)
            spread = f"{min(x.per_s for x in rates):.0f}–{max(x.per_s for x in rates):.0f}"
            line = f"  {what:<52} {len(rates):>6} {mid.seconds:>8.2f} {mid.per_s:>7.0f}   "
            print(line + spread if len(rates) > 1 else line.rstrip())
    print("\n  per s: the median of the rounds (range: the slowest and the fastest round)")
    if not rounds:
        return True
    ran, claimed = max(f for f, _ in r.held_ran), max(c for _, c in r.held_ran)
    print(
        f"  while the workers were held and the calls accepted, the node finished {ran} jobs "
        f"and had {claimed} claimed (the most in a round)"
    )
    one, two = r.rq_drain[1].per_s, r.rq_drain[2].per_s
    accept_s, prefilled, end_to_end = (median(x).per_s for x in (r.held, r.prefilled, r.end_to_end))
    checks = [
        (
            "accept, workers held (calls/s)",
            f"{accept_s:.0f}",
            accept_s >= ACCEPT_TARGET,
            f"≥ {ACCEPT_TARGET:,.0f}",
        ),
        (
            "drain pre-filled / 2 SimpleWorkers",
            f"{prefilled / two:.2f}",
            prefilled >= DRAIN_TARGET * two,
            f"≥ {DRAIN_TARGET}",
        ),
        (
            "drain from first accept / 2 SimpleWorkers",
            f"{end_to_end / two:.2f}",
            end_to_end >= DRAIN_TARGET * two,
            f"≥ {DRAIN_TARGET}",
        ),
    ]
    print()
    for what, value, ok, target in checks:
        print(f"  {what:<44} {value:>8}   target {target:<7} {'met' if ok else 'MISSED'}")
    print(
        f"\n  vs 1 SimpleWorker: drain pre-filled {prefilled / one:.2f}×, from first accept "
        f"{end_to_end / one:.2f}×; 2 SimpleWorkers / 1: {two / one:.2f}×"
    )
    return all(ok for *_, ok, _ in checks)


def _one(rate: Rate | None) -> list[Rate]:
    return [] if rate is None else [rate]


def median(rates: list[Rate]) -> Rate:
    """The round whose rate is the median (the lower middle one of an even count)."""
    return sorted(rates, key=lambda x: x.per_s)[(len(rates) - 1) // 2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=5000, help="calls (and jobs) per phase")
    parser.add_argument("--clients", type=int, default=32, help="client connections")
    parser.add_argument("--prefix", help="the node's --key-prefix, unused (default: fresh)")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379", help="Redis URL")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the node's phases")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per drain")
    parser.add_argument("--rq-only", action="store_true", help="the RQ baseline alone")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    if not (1 <= args.calls <= MAX_CALLS and 1 <= args.clients <= 512):
        parser.error(f"need --calls from 1 to {MAX_CALLS} and --clients from 1 to 512")
    if urlsplit(args.redis).hostname not in ("127.0.0.1", "localhost"):
        parser.error("--redis must be on 127.0.0.1")
    if args.prefix is not None and not PREFIX.fullmatch(args.prefix):
        parser.error("--prefix: expected 4 to 48 of A-Z a-z 0-9 _ -, starting with a letter")
    if not 1 <= args.rounds <= 20:
        parser.error("need --rounds from 1 to 20")
    if not 1 <= args.timeout <= 3600:
        parser.error("need --timeout from 1 to 3600 s")
    args.prefix = args.prefix or f"efbench-aq-{os.getpid()}-{secrets.token_hex(3)}"
    redis = Redis.from_url(args.redis)
    if run_keys(redis, args.prefix):
        parser.error(f"--prefix {args.prefix}: Redis has keys of it already; choose a fresh one")
    load_before = os.getloadavg()[0]
    results = Results(args.calls, args.clients)
    call_ids: list[str] = []
    queues = [f"{args.prefix}.{FUNCTION}", f"{args.prefix}.rq-{FUNCTION}"]
    with workdir("edgefaas-bench-asyncq-") as work:
        try:
            rq_baseline(redis, args.redis, args, work.path / "rq-workers.log", results)
            if not args.rq_only:
                node_phases(redis, args.redis, args, work.path, results, call_ids)
        except KeyboardInterrupt:
            print("\ninterrupted; the node is stopped", file=sys.stderr)
            return 130
        finally:
            removed = clean(redis, args.prefix, queues, call_ids)
            print(f"removed {removed} Redis keys of prefix {args.prefix}", file=sys.stderr)
        ok = report(results, load_before)
        work.keep = args.keep or not ok
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
