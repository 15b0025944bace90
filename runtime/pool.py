"""A warm pool: one function's zygote and workers — their lifecycle, scaling, failures and
the admission rule. Which worker gets which call is the :class:`Dispatcher`'s job.

Everything here runs on the gateway's event loop and is driven by callbacks: when a worker
answers, the next queued call is written to it in the same callback, so a busy worker never
waits for a coroutine to be scheduled before it gets more work.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Coroutine
from typing import Any, Protocol

from registry.specs import FunctionSpec
from runtime import autoscaler
from runtime.admission import FREE, Admission, Verdict, admit_to_queue
from runtime.defaults import (
    BACKOFF_S,
    EXIT_STATUS_WAIT_S,
    INIT_TIMEOUT_S,
    KILL_GRACE_S,
    STOP_TIMEOUT_S,
)
from runtime.dispatcher import Dispatcher
from runtime.errors import CallTimedOut, Overloaded, RuntimeFailure, Unavailable, WorkerCrashed
from runtime.exits import EXIT_INIT_FAILED, describe_exit
from runtime.protocol import Kind, encode
from runtime.states import PoolState, WorkerPhase, check_pool
from runtime.stats import PoolStats
from runtime.worker_link import Call, Result, WorkerLink
from runtime.zygote_link import ZygoteEvent, ZygoteLink

log = logging.getLogger("edgefaas.runtime")


class PoolObserver(Protocol):
    """Receives timings for metrics (the gateway's Prometheus histograms)."""

    def worker_spawned(self, function: str, seconds: float) -> None: ...

    def cold_start(self, function: str, seconds: float) -> None: ...


class WarmPool:
    """The warm workers of one function. Create it inside a running event loop."""

    def __init__(
        self, spec: FunctionSpec, observer: PoolObserver | None = None, digest: str = ""
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.digest = digest  # of the bundle it runs ("" when started from a manifest)
        self.observer = observer
        self.min = spec.pool.min
        self.max = spec.pool.max
        self.concurrency = 1
        self.state = PoolState.STOPPED
        self.stats = PoolStats()
        self.zygote: ZygoteLink | None = None
        self.dispatch = Dispatcher(spec.pool.max_queue_wait_ms, self.stats, self._queue_timeout)
        self.failures = 0
        self.retry_at = 0.0
        self.last_error: dict[str, Any] | None = None
        self._by_pid: dict[int, WorkerLink] = {}
        self._loop = asyncio.get_running_loop()
        self._seq = 0
        self._tokens = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._starting: asyncio.Task[None] | None = None
        self._hard_timeout_s = spec.timeout_s + KILL_GRACE_S
        self.slot_freed = asyncio.Event()  # set when a worker comes free (or starts)

    @property
    def workers(self) -> dict[int, WorkerLink]:
        """Every worker not yet gone, by spawn token (owned by the dispatcher)."""
        return self.dispatch.links

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Start a zygote and the first ``min`` workers. Failures leave the pool in
        BACKOFF (or FATAL) with ``last_error`` set; they are not raised."""
        self._set_state(PoolState.STARTING)
        if self.zygote is not None:
            await self.zygote.kill()  # the previous one is dead or stale: make sure it is gone
        self._by_pid.clear()
        zygote = ZygoteLink(self.spec, self._on_zygote_event)
        self.zygote = zygote
        try:
            await zygote.start()
        except Exception as exc:
            if not isinstance(exc, Unavailable):
                log.exception("function %s: starting its zygote failed", self.name)
            if self.state is PoolState.STARTING:
                self._start_failed(
                    exc.message
                    if isinstance(exc, Unavailable)
                    else f"its zygote could not be started: {exc}"
                )
            return
        if self.state is not PoolState.STARTING:  # stopped while loading
            await zygote.stop()
            return
        self.concurrency = self.spec.pool.concurrency if zygote.is_async else 1
        self.dispatch.concurrency = self.concurrency
        if self.spec.batch is not None:
            self.dispatch.batch_size = self.spec.batch.max_size
            # a call held for its batch must be sent well before the queue's own limit
            self.dispatch.batch_wait_s = min(
                self.spec.batch.max_wait_ms / 1000, self.dispatch.max_wait_s / 2
            )
        self._set_state(PoolState.RUNNING)
        self._fill()

    async def stop(self, force: bool = False, drain: bool = False) -> None:
        """Stop every worker and the zygote. With ``drain`` (a version switch), queued and
        running calls finish first; without, queued calls are refused and busy workers get
        STOP_TIMEOUT_S (the node's own grace period is over); with ``force``, everything is
        killed at once."""
        if self.state in (PoolState.STOPPING, PoolState.STOPPED):
            return
        if drain and not force:
            await self._drain()
        self._set_state(PoolState.STOPPING)
        self.dispatch.fail_queue(Unavailable(f"function {self.name} is stopping"))
        stopping = Unavailable(f"function {self.name} stopped: the node is shutting down")
        for link in list(self.workers.values()):
            if force:
                for call in link.calls.values():
                    call.fail(stopping)
                link.calls.clear()
                link.kill("the node is stopping")
            else:
                self._retire(link)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while self.workers and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for link in list(self.workers.values()):
            link.kill("it did not stop in time")
        if self.zygote is not None:
            await (self.zygote.kill() if force else self.zygote.stop())
        if self._tasks:  # let pending loss reports answer their callers, briefly
            _, pending = await asyncio.wait(list(self._tasks), timeout=EXIT_STATUS_WAIT_S + 0.1)
            for task in pending:
                task.cancel()
        self._set_state(PoolState.STOPPED)

    async def _drain(self) -> None:
        """Wait for queued and running calls to finish (callers have stopped sending new
        ones). Bounded: queued calls expire after max_queue_wait_ms and running ones are
        killed at their hard timeout."""
        deadline = time.monotonic() + self.dispatch.max_wait_s + self._hard_timeout_s + 1.0
        while time.monotonic() < deadline and (
            self.dispatch.queue or any(w.calls for w in self.workers.values())
        ):
            await asyncio.sleep(0.02)

    def scale(self, min_workers: int, max_workers: int, *, exact: bool = False) -> None:
        """Set new bounds and retire workers above ``max`` now (above ``min`` too when
        ``exact``; otherwise those retire after the idle window). A FATAL pool is given a
        fresh start."""
        if not 0 <= min_workers <= max_workers or max_workers < 1:
            raise ValueError(
                f"expected 0 ≤ min ≤ max and max ≥ 1, got min={min_workers}, max={max_workers}"
            )
        self.min, self.max = min_workers, max_workers
        if self.state is PoolState.FATAL:
            self.failures = 0
            self._recover()
            return
        live = self._live()
        keep = self.min if exact else self.max
        for link in sorted(live, key=lambda w: len(w.calls))[: max(0, len(live) - keep)]:
            self._retire(link)
        self._fill()

    def tick(self, now: float) -> None:
        """Periodic housekeeping: kill workers whose call or init hangs, retry after
        backoff, refill to min, retire idle workers."""
        for link, call in self.dispatch.overdue(self._hard_timeout_s):
            self._on_hard_timeout(link, call)
        if self.state is PoolState.BACKOFF and now >= self.retry_at:
            self._recover()
        if self.state is not PoolState.RUNNING:
            return
        self._fill()
        self._retire_idle(now)
        started_before = time.perf_counter() - INIT_TIMEOUT_S
        for link in list(self.workers.values()):
            if link.phase is WorkerPhase.STARTING and link.requested_at < started_before:
                link.kill(f"init() did not finish within {INIT_TIMEOUT_S:g} s")

    def _recover(self) -> None:
        """Leave BACKOFF or FATAL: restart the zygote if it is gone, else spawn again."""
        if self.zygote is not None and self.zygote.alive:
            self._set_state(PoolState.RUNNING)
            self._fill()
        elif self._starting is None or self._starting.done():
            self._starting = self._background(self.start())

    # ---------------------------------------------------------------- calls

    def admit(self, max_wait_s: float | None = None) -> Admission:
        """Decide whether a call can be served here, and how long it would wait (counts
        the refusals as ``saturated``). ``max_wait_s`` tightens the pool's own limit on the
        expected wait (``max_queue_wait_ms``) for this call."""
        if self.dispatch.free:
            return FREE
        state = self.state
        if state in (PoolState.STOPPING, PoolState.STOPPED):
            return Admission(Verdict.UNAVAILABLE, message=f"function {self.name} is stopping")
        if state in (PoolState.BACKOFF, PoolState.FATAL) and not self._any_serving():
            return Admission(Verdict.UNAVAILABLE, message=self._unavailable_message())
        admission = admit_to_queue(
            self.name,
            queued=len(self.dispatch.queue),
            queue_max=self.spec.pool.queue_max,
            max_wait_s=(
                self.dispatch.max_wait_s
                if max_wait_s is None
                else min(max_wait_s, self.dispatch.max_wait_s)
            ),
            wait_s=self.estimate_wait_s(),
        )
        if not admission.admitted:
            self.stats.saturated += 1
        return admission

    def estimate_wait_s(self) -> float:
        """Expected wait for a worker slot: the turns the queue needs × recent service time
        ÷ slots, plus a fork when no worker is serving yet. A turn is one call, or one
        batch of up to ``batch.max_size`` calls for a batching function (its service time
        is a batch's). The service time is the recent average, or the age of the oldest
        running call when that is longer: a burst of calls slower than any before must not
        all be queued here before the first of them finishes."""
        slots = self.serving_count() * self.concurrency
        service_s = max(self.stats.service_s, self.dispatch.oldest_running_s())
        queued = len(self.dispatch.queue)
        per_turn = self.dispatch.batch_size or 1
        if slots == 0:
            return self.stats.spawn_p50_s() + -(-queued // per_turn) * service_s
        return -(-(queued + 1) // per_turn) * service_s / slots

    def submit(
        self, method: bytes, path: bytes, query: bytes, headers: bytes, call_id: str, body: bytes
    ) -> Call:
        """Send a call to a worker, or queue it; await ``call.future`` for the result."""
        self._seq = (self._seq + 1) & 0xFFFFFFFF  # travels as a u32
        frame = encode(Kind.CALL, self._seq, [method, path, query, headers, call_id.encode(), body])
        call = Call(self._seq, call_id, frame, self._loop.create_future())
        if not self.dispatch.offer(call):
            call.cold = not self._any_serving()
            self.dispatch.enqueue(call)
            if len(self.workers) < self.max:
                self._fill()
        return call

    def _on_hard_timeout(self, link: WorkerLink, call: Call) -> None:
        """Answer 504 now and kill the worker; its other calls are settled when its socket
        closes (see :meth:`Dispatcher.take_running`)."""
        self._set_aside(link)
        self.stats.hard_timeouts += 1
        call.fail(
            CallTimedOut(
                f"function {self.name} did not finish within its {self.spec.timeout_s:g} s timeout "
                f"and {KILL_GRACE_S:g} s grace; its worker was killed and replaced"
            )
        )
        link.kill(f"call {call.call_id} ran past its timeout")
        self._fill()

    def _queue_timeout(self) -> RuntimeFailure:
        """What a call gets when it waited max_queue_wait_ms for a worker."""
        waited = f"no worker came free within {self.spec.pool.max_queue_wait_ms} ms"
        if self.state is not PoolState.RUNNING and not self._any_serving():
            return Unavailable(f"function {self.name} is {self.state.value}: {waited}")
        return Overloaded(f"function {self.name}: {waited}", 1, "queue_timeout")

    # ---------------------------------------------------------------- worker events

    def on_worker_ready(self, link: WorkerLink) -> None:
        if link.phase is not WorkerPhase.STARTING:
            return
        link.set_phase(WorkerPhase.SERVING)
        spawn_s = time.perf_counter() - link.requested_at
        self.stats.spawn_s.append(spawn_s)
        if self.observer is not None:
            self.observer.worker_spawned(self.name, spawn_s)
        self.failures = 0
        self.dispatch.release(link)
        self.slot_freed.set()

    def on_worker_init_failed(self, link: WorkerLink, message: str, trace: str) -> None:
        link.failure_reported = True
        if trace:
            log.error("function %s: init() failed in worker %d:\n%s", self.name, link.pid, trace)
        self._start_failed(message)

    def on_result(self, link: WorkerLink, call: Call, result: Result) -> None:
        call.finish(result)
        self.stats.record_call(self.dispatch.finished(link, call), result.outcome)
        if call.cold and self.observer is not None:
            self.observer.cold_start(self.name, time.perf_counter() - call.queued_at)
        if link.phase is WorkerPhase.SERVING:
            self.dispatch.release(link)
            if link.in_free:  # it took no queued call: a slot is spare (for async calls)
                self.slot_freed.set()
        elif link.phase is WorkerPhase.DRAINING and not link.calls:
            link.close()

    def on_worker_lost(self, link: WorkerLink) -> None:
        was = link.phase
        if was is not WorkerPhase.STOPPED:
            link.set_phase(WorkerPhase.STOPPED)
        self.workers.pop(link.token, None)
        self.dispatch.withdraw(link)
        calls = [c for c in self.dispatch.take_running(link) if not c.future.done()]
        if calls or (was is WorkerPhase.STARTING and not link.failure_reported):
            self._background(self._report_loss(link, calls, was))
        if self.state is PoolState.RUNNING:
            self._fill()

    async def _report_loss(self, link: WorkerLink, calls: list[Call], was: WorkerPhase) -> None:
        """Wait briefly for the zygote's report of how the worker ended, then tell the
        callers (502) or count a start failure."""
        try:
            status = await asyncio.wait_for(asyncio.shield(link.exit_status), EXIT_STATUS_WAIT_S)
            how = describe_exit(status, self.spec.memory_mb)
            init_failed = status >> 8 == EXIT_INIT_FAILED
        except TimeoutError:
            how, init_failed = "died (its exit status is unknown)", False
        if link.kill_reason:
            how = f"was killed because {link.kill_reason}"
        if calls:
            self.stats.crashes += 1
            log.warning(
                "function %s: worker %d %s with %d call(s) in flight",
                self.name,
                link.pid,
                how,
                len(calls),
            )
            replaced = "; a new worker replaces it" if self.state is PoolState.RUNNING else ""
            failure = WorkerCrashed(
                f"worker {link.pid} of function {self.name} {how} during the call{replaced}"
            )
            for call in calls:
                call.fail(failure)
        elif was is WorkerPhase.STARTING and not init_failed and self.state is PoolState.RUNNING:
            self._start_failed(f"worker {link.pid} {how} before it was ready")

    def _on_zygote_event(self, event: ZygoteEvent) -> None:
        kind = event["event"]
        if kind == "spawned":
            link = self.workers.get(int(event["token"]))
            if link is not None:
                link.pid = link.pid or int(event["pid"])
                self._by_pid[link.pid] = link
        elif kind == "exited":
            link = self._by_pid.pop(int(event["pid"]), None)
            if link is not None and not link.exit_status.done():
                link.exit_status.set_result(int(event["status"]))
        elif kind == "lost" and self.state in (PoolState.RUNNING, PoolState.BACKOFF):
            self._background(self._on_zygote_lost())

    async def _on_zygote_lost(self) -> None:
        zygote = self.zygote
        how = await zygote.wait_exit() if zygote is not None else "is gone"
        self._start_failed(f"its zygote process {how}")

    # ---------------------------------------------------------------- async calls

    def spare_slots(self) -> int:
        """How many asynchronous calls may start now without delaying a sync call: none
        while sync calls wait in the pool's queue, else the free slots of serving workers.
        Never a pipelined slot behind a running call: a job claimed there would wait,
        marked started, for a call whose length nobody knows."""
        dispatch = self.dispatch
        if dispatch.queue or self.state is not PoolState.RUNNING:
            return 0
        concurrency = self.concurrency
        return sum(
            concurrency - len(w.calls)
            for w in dispatch.free
            if w.phase is WorkerPhase.SERVING and len(w.calls) < concurrency
        )

    def scaled_to_zero(self) -> bool:
        """Running with no worker, not even one starting: only a call (or :meth:`grow`)
        forks one."""
        return self.state is PoolState.RUNNING and not self._live()

    def grow(self) -> bool:
        """Asynchronous calls wait and no slot is spare: start one more worker, within
        ``max``, unless one is starting already (it retires when idle, like any other).
        False when it started none."""
        if self.state is not PoolState.RUNNING or self.zygote is None or not self.zygote.alive:
            return False
        live = self._live()
        if len(live) < self.max and all(w.phase is WorkerPhase.SERVING for w in live):
            self._spawn()
            return True
        return False

    # ---------------------------------------------------------------- scaling

    def _any_serving(self) -> bool:
        return any(w.phase is WorkerPhase.SERVING for w in self.workers.values())

    def serving_count(self) -> int:
        return sum(1 for w in self.workers.values() if w.phase is WorkerPhase.SERVING)

    def _live(self) -> list[WorkerLink]:
        """Workers starting or serving (not draining)."""
        live = (WorkerPhase.STARTING, WorkerPhase.SERVING)
        return [w for w in self.workers.values() if w.phase in live]

    def _fill(self) -> None:
        """Spawn workers up to what demand and ``min`` ask for, within ``max``."""
        if self.state is not PoolState.RUNNING or self.zygote is None or not self.zygote.alive:
            return
        live = 0
        demand = len(self.dispatch.queue)
        for link in self.workers.values():
            if link.phase in (WorkerPhase.STARTING, WorkerPhase.SERVING):
                live += 1
                demand += len(link.calls)
        wanted = autoscaler.workers_wanted(demand, self.concurrency, self.min, self.max)
        for _ in range(wanted - live):
            self._spawn()

    def _retire_idle(self, now: float) -> None:
        live = len(self._live())
        idle = [w for w in self.dispatch.free if not w.calls]
        count = autoscaler.retirable(
            [now - w.idle_since for w in idle], live, self.min, self.spec.pool.idle_timeout_s
        )
        for link in sorted(idle, key=lambda w: w.idle_since)[:count]:
            self._retire(link)

    def _retire(self, link: WorkerLink) -> None:
        """Let ``link`` finish its calls, then close it."""
        if self._set_aside(link):
            self.stats.retired += 1
            if not link.calls:
                link.close()

    def _set_aside(self, link: WorkerLink) -> bool:
        """Take ``link`` out of service (DRAINING); False if it already was."""
        if link.phase not in (WorkerPhase.STARTING, WorkerPhase.SERVING):
            return False
        link.set_phase(WorkerPhase.DRAINING)
        self.dispatch.withdraw(link)
        return True

    def _spawn(self) -> None:
        self._tokens += 1
        link = WorkerLink(self, self._tokens)
        self.workers[link.token] = link
        self.stats.spawned += 1
        self._background(self._connect(link))

    async def _connect(self, link: WorkerLink) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            if self.zygote is None:
                raise Unavailable(f"function {self.name} has no zygote")
            self.zygote.spawn(theirs, link.token)
        except (Unavailable, OSError) as exc:
            ours.close()
            link.failure_reported = True
            self.on_worker_lost(link)
            self._start_failed(f"could not ask its zygote for a worker: {exc}")
            return
        finally:
            theirs.close()
        ours.setblocking(False)
        await self._loop.create_unix_connection(lambda: link, sock=ours)

    # ---------------------------------------------------------------- failures

    def _start_failed(self, message: str) -> None:
        """Count one failed start attempt (further failures of the same attempt, e.g. the
        other workers spawned with it, only update ``last_error``)."""
        self.last_error = {"message": message, "at": time.time()}
        if self.state not in (PoolState.STARTING, PoolState.RUNNING):
            return
        self.failures += 1
        self.stats.start_failures += 1
        if self.failures > len(BACKOFF_S):
            log.error(
                "function %s is FATAL after %d failed starts: %s", self.name, self.failures, message
            )
            self._set_state(PoolState.FATAL)
        else:
            delay = BACKOFF_S[self.failures - 1]
            log.error(
                "function %s cannot start (attempt %d, retrying in %g s): %s",
                self.name,
                self.failures,
                delay,
                message,
            )
            self._set_state(PoolState.BACKOFF)
            self.retry_at = time.monotonic() + delay
        if not self._any_serving():
            self.dispatch.fail_queue(Unavailable(self._unavailable_message()))

    def _unavailable_message(self) -> str:
        error = self.last_error["message"] if self.last_error else "unknown error"
        if self.state is PoolState.FATAL:
            return (
                f"function {self.name} cannot start and has stopped retrying: {error}; "
                "fix it and redeploy, or scale it to retry"
            )
        return f"function {self.name} cannot start: {error}"

    def _set_state(self, state: PoolState) -> None:
        if state is not self.state:
            self.state = check_pool(self.state, state)
            log.info("function %s: %s", self.name, state.value)

    def _background(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ---------------------------------------------------------------- reporting

    def snapshot(self) -> dict[str, Any]:
        """The pool as the admin API shows it."""
        states = {"starting": 0, "ready": 0, "busy": 0, "draining": 0}
        for link in self.workers.values():
            if link.state in states:
                states[link.state] += 1
        return {
            "name": self.name,
            "state": self.state.value,
            "handler": str(self.spec.handler),
            "min": self.min,
            "max": self.max,
            "concurrency": self.concurrency,
            "timeout_s": self.spec.timeout_s,
            "memory_mb": self.spec.memory_mb,
            "triggers": [{"path": t.path, "methods": list(t.methods)} for t in self.spec.triggers],
            "workers": states,
            "worker_pids": sorted(w.pid for w in self.workers.values() if w.pid),
            "zygote_pid": self.zygote.pid if self.zygote else None,
            "slots": self.max * self.concurrency,
            "in_flight": sum(len(w.calls) for w in self.workers.values()),
            "queue_depth": len(self.dispatch.queue),
            "counters": self.stats.to_dict(),
            "last_error": self.last_error,
        }
