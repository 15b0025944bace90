"""One pool's worker processes: asked of the zygote, connected, retired, replaced, and what
their links report (ready, a result, init failed, lost) with how each one ended.

:class:`~runtime.pool.WarmPool` owns a :class:`WorkerSet` and decides *when* — its state
machine, scaling bounds, admission, backoff; this module does the process work of *how*.
Everything runs on the gateway's event loop: a worker's answer arrives in an I/O callback
of its link, and the next queued call is written to it in that same callback.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Coroutine
from typing import Any, Protocol

from registry.specs import FunctionSpec
from runtime import autoscaler
from runtime.defaults import EXIT_STATUS_WAIT_S, INIT_TIMEOUT_S
from runtime.dispatcher import Dispatcher
from runtime.errors import Unavailable, WorkerCrashed
from runtime.exits import EXIT_INIT_FAILED, describe_exit
from runtime.sandbox.sandboxes import PoolSandbox
from runtime.states import PoolState, WorkerPhase
from runtime.stats import PoolStats
from runtime.worker_link import Call, Result, WorkerLink
from runtime.zygote_link import ZygoteEvent, ZygoteLink

log = logging.getLogger("edgefaas.runtime")

_LIVE = (WorkerPhase.STARTING, WorkerPhase.SERVING)
SPAWN_PAUSE_S = 1.0  # after a fork failed


class PoolObserver(Protocol):
    """Receives timings for metrics (the gateway's Prometheus histograms)."""

    def worker_spawned(self, function: str, seconds: float) -> None: ...

    def cold_start(self, function: str, seconds: float) -> None: ...


class PoolControl(Protocol):
    """What the workers read of their pool, and how they report a failed start."""

    state: PoolState
    failures: int  # failed starts in a row
    min: int
    max: int
    concurrency: int
    zygote: ZygoteLink | None
    sandbox: PoolSandbox | None

    def start_failed(self, message: str) -> None: ...

    def background(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]: ...


class WorkerSet:
    """The workers of one pool, by spawn token (the dispatcher's ``links``)."""

    def __init__(
        self,
        spec: FunctionSpec,
        dispatch: Dispatcher,
        stats: PoolStats,
        observer: PoolObserver | None,
        pool: PoolControl,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.dispatch = dispatch
        self.stats = stats
        self.observer = observer
        self.pool = pool
        self.slot_freed = asyncio.Event()  # set when a worker comes free (or starts)
        self._by_pid: dict[int, WorkerLink] = {}
        self._tokens = 0
        self._no_spawn_until = 0.0  # after a failed fork: no more for SPAWN_PAUSE_S
        self._loop = asyncio.get_running_loop()

    @property
    def links(self) -> dict[int, WorkerLink]:
        return self.dispatch.links

    def forget_pids(self) -> None:
        """A new zygote starts: the old one's pids mean nothing any more."""
        self._by_pid.clear()

    # ---------------------------------------------------------------- counting

    def any_serving(self) -> bool:
        return any(w.phase is WorkerPhase.SERVING for w in self.links.values())

    def serving_count(self) -> int:
        return sum(1 for w in self.links.values() if w.phase is WorkerPhase.SERVING)

    def live(self) -> list[WorkerLink]:
        """Workers starting or serving (not draining)."""
        return [w for w in self.links.values() if w.phase in _LIVE]

    def can_spawn(self) -> bool:
        zygote = self.pool.zygote
        if time.monotonic() < self._no_spawn_until:
            return False
        return self.pool.state is PoolState.RUNNING and zygote is not None and zygote.alive

    # ---------------------------------------------------------------- spawning

    def fill(self) -> None:
        """Spawn workers up to what demand and ``min`` ask for, within ``max``."""
        if not self.can_spawn():
            return
        live = 0
        demand = len(self.dispatch.queue)
        for link in self.links.values():
            if link.phase in _LIVE:
                live += 1
                demand += len(link.calls)
        pool = self.pool
        wanted = autoscaler.workers_wanted(demand, pool.concurrency, pool.min, pool.max)
        for _ in range(wanted - live):
            self.spawn()

    def spawn(self) -> None:
        self._tokens += 1
        link = WorkerLink(self, self._tokens)
        self.links[link.token] = link
        self.stats.spawned += 1
        self.pool.background(self._connect(link))

    async def _connect(self, link: WorkerLink) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            zygote = self.pool.zygote
            if zygote is None:
                raise Unavailable(f"function {self.name} has no zygote")
            zygote.spawn(theirs, link.token)
        except (Unavailable, OSError) as exc:
            ours.close()
            link.failure_reported = True
            self.on_worker_lost(link)
            self.pool.start_failed(f"could not ask its zygote for a worker: {exc}")
            return
        finally:
            theirs.close()
        ours.setblocking(False)
        await self._loop.create_unix_connection(lambda: link, sock=ours)

    # ---------------------------------------------------------------- retiring

    def retire_idle(self, now: float) -> None:
        """Retire the workers idle past the pool's window, down to ``min``."""
        idle = [w for w in self.dispatch.free if not w.calls]
        count = autoscaler.retirable(
            [now - w.idle_since for w in idle],
            len(self.live()),
            self.pool.min,
            self.spec.pool.idle_timeout_s,
        )
        for link in sorted(idle, key=lambda w: w.idle_since)[:count]:
            self.retire(link)

    def retire_beyond(self, keep: int) -> None:
        """Retire the least busy live workers beyond ``keep``."""
        live = self.live()
        for link in sorted(live, key=lambda w: len(w.calls))[: max(0, len(live) - keep)]:
            self.retire(link)

    def retire(self, link: WorkerLink) -> None:
        """Let ``link`` finish its calls, then close it."""
        if self.set_aside(link):
            self.stats.retired += 1
            if not link.calls:
                link.close()

    def set_aside(self, link: WorkerLink) -> bool:
        """Take ``link`` out of service (DRAINING); False if it already was."""
        if link.phase not in _LIVE:
            return False
        link.set_phase(WorkerPhase.DRAINING)
        self.dispatch.withdraw(link)
        return True

    def kill_hung_inits(self) -> None:
        """Kill workers whose ``init`` has run past ``INIT_TIMEOUT_S``."""
        started_before = time.perf_counter() - INIT_TIMEOUT_S
        for link in list(self.links.values()):
            if link.phase is WorkerPhase.STARTING and link.requested_at < started_before:
                link.kill(f"init() did not finish within {INIT_TIMEOUT_S:g} s")

    # ---------------------------------------------------------------- a link's reports

    def on_worker_ready(self, link: WorkerLink) -> None:
        if link.phase is not WorkerPhase.STARTING:
            return
        link.set_phase(WorkerPhase.SERVING)
        spawn_s = time.perf_counter() - link.requested_at
        self.stats.spawn_s.append(spawn_s)
        if self.observer is not None:
            self.observer.worker_spawned(self.name, spawn_s)
        self.pool.failures = 0
        self.dispatch.release(link)
        self.slot_freed.set()

    def on_worker_init_failed(self, link: WorkerLink, message: str, trace: str) -> None:
        link.failure_reported = True
        if trace:
            log.error("function %s: init() failed in worker %d:\n%s", self.name, link.pid, trace)
        self.pool.start_failed(message)

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
        self.links.pop(link.token, None)
        self.dispatch.withdraw(link)
        calls = [c for c in self.dispatch.take_running(link) if not c.future.done()]
        sandbox = self.pool.sandbox
        if calls or (was is WorkerPhase.STARTING and not link.failure_reported) or sandbox:
            self.pool.background(self._report_loss(link, calls, was, sandbox))
        else:
            link.release_pidfd()
        self.fill()

    async def _report_loss(
        self, link: WorkerLink, calls: list[Call], was: WorkerPhase, sandbox: PoolSandbox | None
    ) -> None:
        """Wait briefly for the zygote's report of how the worker ended, then tell the
        callers (502) or count a start failure; a sandboxed worker's group is emptied and
        removed, and says whether the kernel killed it for its memory."""
        try:
            status = await asyncio.wait_for(asyncio.shield(link.exit_status), EXIT_STATUS_WAIT_S)
            how = describe_exit(status, self.spec.memory_mb)
            init_failed = status >> 8 == EXIT_INIT_FAILED
        except TimeoutError:
            how, init_failed = "died (its exit status is unknown)", False
        link.release_pidfd()
        if link.kill_reason:
            how = f"was killed because {link.kill_reason}"
        if sandbox is not None and sandbox.worker_ended(link.token):
            how = f"ran out of memory (hit its memory_mb limit of {self.spec.memory_mb} MiB)"
        running = self.pool.state is PoolState.RUNNING
        if calls:
            self.stats.crashes += 1
            log.warning(
                "function %s: worker %d %s with %d call(s) in flight",
                self.name,
                link.pid,
                how,
                len(calls),
            )
            replaced = "; a new worker replaces it" if running else ""
            failure = WorkerCrashed(
                f"worker {link.pid} of function {self.name} {how} during the call{replaced}"
            )
            for call in calls:
                call.fail(failure)
        elif was is WorkerPhase.STARTING and not init_failed and running:
            self.pool.start_failed(f"worker {link.pid} {how} before it was ready")

    # ---------------------------------------------------------------- the zygote's reports

    def on_zygote_event(self, event: ZygoteEvent) -> None:
        """A worker's pid (``spawned``) or its wait status (``exited``)."""
        kind = event["event"]
        if kind == "spawned":
            link = self.links.get(int(event["token"]))
            pidfd = event.get("pidfd")
            if link is None:
                if pidfd is not None:
                    os.close(pidfd)
            elif pidfd is not None:
                self._on_sandboxed_spawn(link, int(event["pid"]), pidfd)
            else:
                link.pid = link.pid or int(event["pid"])
                self._by_pid[link.pid] = link
        elif kind == "spawn_failed":
            self._on_spawn_failed(int(event["token"]), str(event["message"]))
        elif kind == "exited":
            link = self._by_pid.pop(int(event["pid"]), None)
            if link is not None and not link.exit_status.done():
                link.exit_status.set_result(int(event["status"]))

    def _on_spawn_failed(self, token: int, message: str) -> None:
        """The zygote could not fork (its process cap, most likely): the workers there serve
        on, and no fork is tried for a while — a full cap is no reason to stop the pool."""
        self._no_spawn_until = time.monotonic() + SPAWN_PAUSE_S
        log.warning(
            "function %s: no more workers for now (%s; sandbox.pids is %d)",
            self.name,
            message,
            self.spec.sandbox.pids,
        )
        link = self.links.get(token)
        if link is not None:  # its socket closes: on_worker_lost follows, as for any loss
            link.failure_reported = True
            link.close()

    def _on_sandboxed_spawn(self, link: WorkerLink, inner_pid: int, pidfd: int) -> None:
        """A worker forked inside a sandbox: ``inner_pid`` is its pid there (the zygote's
        ``exited`` reports use it), the pidfd gives its pid here. Put it in its cgroup, then
        let it start."""
        link.pidfd = pidfd
        self._by_pid[inner_pid] = link
        sandbox = self.pool.sandbox
        try:
            link.pid = pid_of(pidfd)
            if sandbox is None or not sandbox.plan.await_start:
                return
            sandbox.place_worker(link.token, link.pid)
        except OSError as exc:
            link.kill(f"it could not be put in its cgroup ({exc})")
            return
        link.start()
        try:
            sandbox.prepare_spare()
        except OSError as exc:  # the next worker makes its group itself
            log.warning("function %s: a spare cgroup could not be made: %s", self.name, exc)


def pid_of(pidfd: int) -> int:
    """The pid, in this process's namespace, of the process a pidfd refers to."""
    with open(f"/proc/self/fdinfo/{pidfd}", encoding="ascii") as info:
        for line in info:
            if line.startswith("Pid:"):
                pid = int(line.split()[1])
                if pid > 0:
                    return pid
    raise ProcessLookupError(0, "the worker has already exited")
