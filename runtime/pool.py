"""A warm pool: one function's zygote and workers — the pool's state machine (start, run,
back off, stop, drain), its scaling bounds, failures and the admission rule. The process
work of spawning, retiring and replacing workers is :class:`~runtime.workers.WorkerSet`'s;
which worker gets which call is the :class:`~runtime.dispatcher.Dispatcher`'s.

Everything here runs on the gateway's event loop and is driven by callbacks: when a worker
answers, the next queued call is written to it in the same callback, so a busy worker never
waits for a coroutine to be scheduled before it gets more work.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

from registry.specs import FunctionSpec
from runtime.admission import FREE, Admission, Verdict, admit_to_queue
from runtime.defaults import BACKOFF_S, EXIT_STATUS_WAIT_S, KILL_GRACE_S, STOP_TIMEOUT_S
from runtime.dispatcher import Dispatcher
from runtime.errors import CallTimedOut, Overloaded, RuntimeFailure, Unavailable
from runtime.protocol import Kind, encode
from runtime.sandbox.sandboxes import PoolSandbox, Sandboxes
from runtime.states import PoolState, WorkerPhase, check_pool
from runtime.stats import PoolStats
from runtime.worker_link import Call, WorkerLink
from runtime.workers import PoolObserver, WorkerSet
from runtime.zygote_link import ZygoteEvent, ZygoteLink

log = logging.getLogger("edgefaas.runtime")


class WarmPool:
    """The warm workers of one function. Create it inside a running event loop."""

    def __init__(
        self,
        spec: FunctionSpec,
        observer: PoolObserver | None = None,
        digest: str = "",
        sandboxes: Sandboxes | None = None,
    ) -> None:
        """``sandboxes``: the node's; each start of the pool's zygote gets a sandbox from
        them (None: the zygote runs as the node does)."""
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
        self.sandboxes = sandboxes
        self.sandbox: PoolSandbox | None = None
        self.dispatch = Dispatcher(spec.pool.max_queue_wait_ms, self.stats, self._queue_timeout)
        self.failures = 0
        self.retry_at = 0.0
        self.last_error: dict[str, Any] | None = None
        self.worker_set = WorkerSet(spec, self.dispatch, self.stats, observer, self)
        self.slot_freed = self.worker_set.slot_freed  # set when a worker comes free (or starts)
        self._loop = asyncio.get_running_loop()
        self._seq = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._starting: asyncio.Task[None] | None = None
        self._hard_timeout_s = spec.timeout_s + KILL_GRACE_S

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
        self.worker_set.forget_pids()
        if not self._open_sandbox():
            return
        zygote = ZygoteLink(self.spec, self._on_zygote_event, self.sandbox)
        self.zygote = zygote
        started = time.perf_counter()
        try:
            await zygote.start()
        except Exception as exc:
            if not isinstance(exc, Unavailable):
                log.exception("function %s: starting its zygote failed", self.name)
            if self.state is PoolState.STARTING:
                self.start_failed(
                    exc.message
                    if isinstance(exc, Unavailable)
                    else f"its zygote could not be started: {exc}"
                )
            return
        if self.state is not PoolState.STARTING:  # stopped while loading
            await zygote.stop()
            return
        self.stats.zygote_start_s.append(time.perf_counter() - started)
        self.concurrency = self.spec.pool.concurrency if zygote.is_async else 1
        self.dispatch.concurrency = self.concurrency
        if self.spec.batch is not None:
            self.dispatch.batch_size = self.spec.batch.max_size
            # a call held for its batch must be sent well before the queue's own limit
            self.dispatch.batch_wait_s = min(
                self.spec.batch.max_wait_ms / 1000, self.dispatch.max_wait_s / 2
            )
        self._set_state(PoolState.RUNNING)
        self.worker_set.fill()

    def _open_sandbox(self) -> bool:
        """Get the pool's sandbox (once; a restarted zygote reuses it) and create its
        cgroups; False, with the start counted as failed, when that cannot be done."""
        if self.sandboxes is None:
            return True
        try:
            if self.sandbox is None:
                self.sandbox = self.sandboxes.for_pool(self.spec)
            if self.sandbox is not None:
                self.sandbox.open()
        except Unavailable as exc:
            self.start_failed(exc.message)
            return False
        except OSError as exc:
            self.start_failed(f"its sandbox's cgroups could not be made: {exc}")
            return False
        return True

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
                self.worker_set.retire(link)
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
        if self.sandbox is not None:
            self.sandbox.close()
            self.sandbox = None
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
        self.worker_set.retire_beyond(self.min if exact else self.max)
        self.worker_set.fill()

    def tick(self, now: float) -> None:
        """Periodic housekeeping: kill workers whose call or init hangs, retry after
        backoff, refill to min, retire idle workers."""
        for link, call in self.dispatch.overdue(self._hard_timeout_s):
            self._on_hard_timeout(link, call)
        if self.state is PoolState.BACKOFF and now >= self.retry_at:
            self._recover()
        if self.state is not PoolState.RUNNING:
            return
        self.worker_set.fill()
        self.worker_set.retire_idle(now)
        self.worker_set.kill_hung_inits()

    def _recover(self) -> None:
        """Leave BACKOFF or FATAL: restart the zygote if it is gone, else spawn again."""
        if self.zygote is not None and self.zygote.alive:
            self._set_state(PoolState.RUNNING)
            self.worker_set.fill()
        elif self._starting is None or self._starting.done():
            self._starting = self.background(self.start())

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
        if state in (PoolState.BACKOFF, PoolState.FATAL) and not self.worker_set.any_serving():
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
            call.cold = not self.worker_set.any_serving()
            self.dispatch.enqueue(call)
            if len(self.workers) < self.max:
                self.worker_set.fill()
        return call

    def _on_hard_timeout(self, link: WorkerLink, call: Call) -> None:
        """Answer 504 now and kill the worker; its other calls are settled when its socket
        closes (see :meth:`Dispatcher.take_running`)."""
        self.worker_set.set_aside(link)
        self.stats.hard_timeouts += 1
        call.fail(
            CallTimedOut(
                f"function {self.name} did not finish within its {self.spec.timeout_s:g} s timeout "
                f"and {KILL_GRACE_S:g} s grace; its worker was killed and replaced"
            )
        )
        link.kill(f"call {call.call_id} ran past its timeout")
        self.worker_set.fill()

    def _queue_timeout(self) -> RuntimeFailure:
        """What a call gets when it waited max_queue_wait_ms for a worker."""
        waited = f"no worker came free within {self.spec.pool.max_queue_wait_ms} ms"
        if self.state is not PoolState.RUNNING and not self.worker_set.any_serving():
            return Unavailable(f"function {self.name} is {self.state.value}: {waited}")
        return Overloaded(f"function {self.name}: {waited}", 1, "queue_timeout")

    # ---------------------------------------------------------------- the zygote

    def _on_zygote_event(self, event: ZygoteEvent) -> None:
        if event["event"] != "lost":
            self.worker_set.on_zygote_event(event)
        elif self.state in (PoolState.RUNNING, PoolState.BACKOFF):
            self.background(self._on_zygote_lost())

    async def _on_zygote_lost(self) -> None:
        zygote = self.zygote
        how = await zygote.wait_exit() if zygote is not None else "is gone"
        self.start_failed(f"its zygote process {how}")

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
        return self.state is PoolState.RUNNING and not self.worker_set.live()

    def grow(self) -> bool:
        """Asynchronous calls wait and no slot is spare: start one more worker, within
        ``max``, unless one is starting already (it retires when idle, like any other).
        False when it started none."""
        if not self.worker_set.can_spawn():
            return False
        live = self.worker_set.live()
        if len(live) < self.max and all(w.phase is WorkerPhase.SERVING for w in live):
            self.worker_set.spawn()
            return True
        return False

    def serving_count(self) -> int:
        return self.worker_set.serving_count()

    # ---------------------------------------------------------------- failures

    def start_failed(self, message: str) -> None:
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
        if not self.worker_set.any_serving():
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

    def background(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``coro`` as a task of the pool's (:meth:`stop` waits for them briefly)."""
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
            "sandbox": self._sandbox_view(),
        }

    def _sandbox_view(self) -> dict[str, Any] | None:
        """The pool's sandbox and what its processes use (None: unsandboxed)."""
        sandbox = self.sandbox
        if sandbox is None:
            return None
        usage = sandbox.usage()
        return {
            "uid": sandbox.plan.uid,
            "network": sandbox.plan.network,
            "tmp_mb": sandbox.plan.tmp_mb,
            "cpu": self.spec.sandbox.cpu,
            "pids": self.spec.sandbox.pids,
            "memory_bytes": usage.memory_bytes,
            "cpu_seconds": round(usage.cpu_seconds, 3),
            "cpu_throttled_seconds": round(usage.throttled_seconds, 3),
            "oom_kills": usage.oom_kills,
        }
