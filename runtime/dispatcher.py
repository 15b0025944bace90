"""Which worker gets which call, and when: the free list, the FIFO wait queue, pipelining of
short calls, and the queue's time limit. Runs in event-loop callbacks; never awaits.

Free list. A worker with a free slot (fewer calls than ``concurrency``) is in ``free``; calls
go to the most recently freed one, so idle workers stay idle and can be retired.

Pipelining. A sync worker runs one call at a time, and between two calls it would sleep in
``recv`` until the gateway writes the next one: on a small machine that wake-up costs more
than a short call itself. So when a pool's calls are short (recent service time under
``PIPELINE_MAX_SERVICE_S``) and every worker is busy, one more call may wait in a busy
worker's socket instead of the pool's queue. The worker runs calls in the order they were
written and answers each before it starts the next, so when it dies — and after the gateway
has read everything it sent — only the first unanswered call can have started: that one
fails, the others go back to the head of the queue. No call is lost, none runs twice. Hard
timeouts count from when a call started, not from when it was written.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

from runtime.defaults import PIPELINE_MAX_SERVICE_S
from runtime.errors import RuntimeFailure
from runtime.states import WorkerPhase
from runtime.stats import PoolStats
from runtime.worker_link import Call, WorkerLink


class Dispatcher:
    """Calls waiting for workers, and workers waiting for calls, of one pool."""

    def __init__(
        self,
        max_wait_ms: int,
        stats: PoolStats,
        timeout_failure: Callable[[], RuntimeFailure],
    ) -> None:
        """``timeout_failure`` makes the error for a call that waited ``max_wait_ms``."""
        self.concurrency = 1
        self.batch_size = 0  # > 0: calls go to a worker in batches of up to this many
        self.batch_wait_s = 0.0  # the longest a call is held for its batch to fill
        self._gap_s = 1.0  # recent time between two calls (batching pools only)
        self._last_arrival = 0.0
        self._batch_timer: asyncio.TimerHandle | None = None
        self.free: list[WorkerLink] = []
        self.queue: deque[Call] = deque()
        self.links: dict[int, WorkerLink] = {}
        self.max_wait_s = max_wait_ms / 1000
        self._stats = stats
        self._timeout_failure = timeout_failure
        self._loop = asyncio.get_running_loop()
        self._queue_timer: asyncio.TimerHandle | None = None

    def depth(self) -> int:
        """How many calls a worker may hold: its concurrency, plus one pipelined call for
        sync workers while calls are short."""
        if self.batch_size:
            return self.batch_size
        if self.concurrency == 1 and self._stats.service_s <= PIPELINE_MAX_SERVICE_S:
            return 2
        return self.concurrency

    def offer(self, call: Call) -> bool:
        """Give ``call`` to a worker now if one can take it; False if it has to queue."""
        free = self.free
        hold = self.batch_size and self._worth_holding()  # (notes every arrival)
        if free:
            if hold:
                return False  # queued; _hold_for_batch sends it within batch_wait_s
            link = free[-1]
            self._dispatch(link, call)
            if len(link.calls) >= self.concurrency:
                free.pop()
                link.in_free = False
            return True
        if self.queue or self.batch_size or self.depth() == self.concurrency:
            return False
        for link in self.links.values():
            if link.phase is WorkerPhase.SERVING and len(link.calls) == 1:
                self._dispatch(link, call)
                return True
        return False

    def enqueue(self, call: Call) -> None:
        self.queue.append(call)
        if self._queue_timer is None:
            self._arm_queue_timer()
        if self.batch_size and self.free:
            self._hold_for_batch()

    def _worth_holding(self) -> bool:
        """A batching pool with a free worker holds a call for its batch to fill only when
        another call is expected within ``batch_wait_s`` (calls have lately come closer
        together than that) and the pool is already busy: an idle pool, or a lone caller,
        never waits."""
        now = time.perf_counter()
        self._gap_s += 0.2 * (min(now - self._last_arrival, 1.0) - self._gap_s)
        self._last_arrival = now
        if not self.batch_wait_s or self._gap_s >= self.batch_wait_s:
            return False
        return any(link.calls for link in self.links.values())

    def _hold_for_batch(self) -> None:
        """Calls wait while a worker is free: send them when the batch is full, else when
        the first of them has waited ``batch_wait_s``."""
        if len(self.queue) >= self.batch_size:
            self._send_held()
        elif self._batch_timer is None:
            self._batch_timer = self._loop.call_later(self.batch_wait_s, self._send_held)

    def _send_held(self) -> None:
        if self._batch_timer is not None:
            self._batch_timer.cancel()
            self._batch_timer = None
        while self.queue and self.free:
            link = self.free.pop()
            link.in_free = False
            self._release_batch(link)

    def release(self, link: WorkerLink) -> None:
        """``link`` is serving and has room: fill it from the queue, or list it as free."""
        queue = self.queue
        if self.batch_size:
            self._release_batch(link)
            return
        if queue:
            depth = self.depth()
            while queue and len(link.calls) < depth:
                self._dispatch(link, queue.popleft())
        count = len(link.calls)
        if count < self.concurrency:
            if not link.in_free:
                self.free.append(link)
                link.in_free = True
            if count == 0:
                link.idle_since = time.monotonic()

    def _release_batch(self, link: WorkerLink) -> None:
        """A batching worker takes its next batch once it has answered the whole last one
        (its answers arrive together): every call queued meanwhile, up to ``batch_size``,
        in one write, so that the worker reads them as one batch."""
        if link.calls:
            return
        queue = self.queue
        if not queue:
            if not link.in_free:
                self.free.append(link)
                link.in_free = True
            link.idle_since = time.monotonic()
            return
        batch = [queue.popleft() for _ in range(min(len(queue), self.batch_size))]
        started = time.perf_counter()
        link.head_started_at = started
        for call in batch:
            call.dispatched_at = started
        link.send_batch(batch)
        if not queue:
            self._rearm_queue_timer()

    def withdraw(self, link: WorkerLink) -> None:
        """Take ``link`` off the free list (it is draining, dead or being killed)."""
        if link.in_free:
            self.free.remove(link)
            link.in_free = False

    def finished(self, link: WorkerLink, call: Call) -> float:
        """Book-keeping when ``call`` answered; return its service time in seconds."""
        now = time.perf_counter()
        if self.concurrency > 1 or self.batch_size:  # (a batch's answers come together)
            return now - call.dispatched_at
        started = link.head_started_at
        link.head_started_at = now  # the next pipelined call, if any, starts now
        return now - started

    def take_running(self, link: WorkerLink) -> list[Call]:
        """Empty a dead worker's calls (call this once its socket is closed and read to the
        end): return those that may have started, and put the others back at the head of
        the queue, where free workers pick them up at once."""
        calls = list(link.calls.values())
        link.calls.clear()
        if self.concurrency > 1 or len(calls) <= 1 or self.batch_size:
            return calls  # (a batch's calls all started together)
        for call in reversed(calls[1:]):
            # Pipelined calls were sent when the queue was empty, so they are older than any
            # queued call: putting them first keeps the queue ordered by arrival, which the
            # queue timer relies on.
            self.queue.appendleft(call)
        self._rearm_queue_timer()
        while self.queue and self.free:
            free = self.free.pop()
            free.in_free = False
            self.release(free)
        return calls[:1]

    def oldest_running_s(self) -> float:
        """How long the longest-running call has been running (0 when none runs)."""
        oldest = now = time.perf_counter()
        for link in self.links.values():
            if link.calls:
                if self.concurrency == 1:
                    oldest = min(oldest, link.head_started_at)
                else:
                    oldest = min(oldest, *(c.dispatched_at for c in link.calls.values()))
        return now - oldest

    def overdue(self, hard_timeout_s: float) -> list[tuple[WorkerLink, Call]]:
        """Running calls that started more than ``hard_timeout_s`` ago, on workers not
        already being killed."""
        started_before = time.perf_counter() - hard_timeout_s
        found = []
        for link in self.links.values():
            if not link.calls or link.kill_reason:
                continue
            if self.concurrency == 1:
                if link.head_started_at < started_before:
                    found.append((link, next(iter(link.calls.values()))))
                continue
            found.extend((link, c) for c in link.calls.values() if c.dispatched_at < started_before)
        return found

    def fail_queue(self, failure: RuntimeFailure) -> None:
        while self.queue:
            self.queue.popleft().fail(failure)

    def _dispatch(self, link: WorkerLink, call: Call) -> None:
        call.dispatched_at = time.perf_counter()
        if not link.calls:
            link.head_started_at = call.dispatched_at
        link.send(call)

    def _arm_queue_timer(self) -> None:
        head = self.queue[0]
        delay = head.queued_at + self.max_wait_s - time.perf_counter()
        self._queue_timer = self._loop.call_later(max(0.0, delay), self._on_queue_timer)

    def _rearm_queue_timer(self) -> None:
        if self._queue_timer is not None:
            self._queue_timer.cancel()
            self._queue_timer = None
        if self.queue:
            self._arm_queue_timer()

    def _on_queue_timer(self) -> None:
        """Refuse queued calls that have waited longer than max_queue_wait_ms. The queue is
        FIFO and every call has the same budget, so only the head needs a timer."""
        self._queue_timer = None
        limit = time.perf_counter() - self.max_wait_s
        queue = self.queue
        while queue and queue[0].queued_at <= limit:
            self._stats.saturated += 1
            queue.popleft().fail(self._timeout_failure())
        if queue:
            self._arm_queue_timer()
