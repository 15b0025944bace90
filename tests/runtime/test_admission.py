"""The admission rule for a call that finds no free worker, alone and as a pool applies it
(in-process pools with socket-less workers: no processes)."""

from __future__ import annotations

import asyncio
import time

import pytest

from runtime.admission import Admission, Verdict, admit_to_queue
from runtime.defaults import INITIAL_SPAWN_S
from runtime.errors import Overloaded, Unavailable
from tests.pools import occupy, spec, standing_pool


def test_a_call_may_wait_when_the_queue_has_room_and_the_wait_fits() -> None:
    admission = admit_to_queue("f", queued=3, queue_max=4, max_wait_s=0.5, wait_s=0.4)
    assert admission.verdict is Verdict.QUEUE_OK and admission.admitted


def test_a_full_queue_refuses_whatever_the_wait() -> None:
    admission = admit_to_queue("f", queued=4, queue_max=4, max_wait_s=9.0, wait_s=0.0)
    assert admission.verdict is Verdict.QUEUE_FULL and not admission.admitted
    assert "4 calls already wait" in admission.message


def test_a_wait_over_the_budget_refuses_with_a_retry_hint_in_whole_seconds() -> None:
    admission = admit_to_queue("f", queued=0, queue_max=4, max_wait_s=0.2, wait_s=2.3)
    assert admission.verdict is Verdict.WAIT_TOO_LONG
    assert "about 2300 ms, over its 200 ms limit" in admission.message
    failure = admission.failure()
    assert isinstance(failure, Overloaded)
    assert (failure.status, failure.retry_after_s, failure.reason) == (429, 3, "wait_too_long")


def test_an_unavailable_verdict_becomes_a_503() -> None:
    failure = Admission(Verdict.UNAVAILABLE, message="function f cannot start: boom").failure()
    assert isinstance(failure, Unavailable) and failure.status == 503


# ---------------------------------------------------------------------- a pool's admission


@pytest.mark.anyio
async def test_a_free_worker_admits_whatever_the_budget() -> None:
    async with standing_pool(spec()) as pool:
        assert pool.admit(0.0).verdict is Verdict.FREE_WORKER


@pytest.mark.anyio
async def test_a_call_budget_tightens_the_pools_limit_but_never_loosens_it() -> None:
    async with standing_pool(spec(max_queue_wait_ms=2000), service_s=1.0) as pool:
        occupy(pool, 1)
        assert pool.admit().verdict is Verdict.QUEUE_OK
        assert pool.admit(1.5).verdict is Verdict.QUEUE_OK
        tight = pool.admit(0.5)
        assert tight.verdict is Verdict.WAIT_TOO_LONG
        assert "over its 500 ms limit" in tight.message
        assert pool.stats.saturated == 1
        pool.stats.service_s = 3.0
        loose = pool.admit(60.0)
        assert loose.verdict is Verdict.WAIT_TOO_LONG
        assert "over its 2000 ms limit" in loose.message


@pytest.mark.anyio
async def test_the_wait_is_queue_depth_times_service_time_over_slots() -> None:
    async with standing_pool(spec(max=2), workers=2, service_s=0.5) as pool:
        occupy(pool, 2 + 3)
        assert len(pool.dispatch.queue) == 3
        assert pool.estimate_wait_s() == pytest.approx((3 + 1) * 0.5 / 2, rel=0.01)


@pytest.mark.anyio
async def test_a_batching_pool_waits_a_service_time_per_batch_not_per_call() -> None:
    async with standing_pool(spec(max=2), workers=2, service_s=0.5) as pool:
        pool.dispatch.batch_size = 8  # as start() sets it for a function with batch:
        occupy(pool, 2 + 16)
        assert len(pool.dispatch.queue) == 16
        # the 17th call is in the third batch: three turns of 0.5 s over two workers
        assert pool.estimate_wait_s() == pytest.approx(3 * 0.5 / 2, rel=0.01)


@pytest.mark.anyio
async def test_with_no_worker_serving_the_wait_includes_a_fork() -> None:
    async with standing_pool(spec(min=0), workers=0, service_s=0.5) as pool:
        occupy(pool, 2)
        assert pool.estimate_wait_s() == pytest.approx(INITIAL_SPAWN_S + 2 * 0.5)


@pytest.mark.anyio
@pytest.mark.parametrize("concurrency", [1, 4])
async def test_a_running_call_older_than_the_recent_service_time_sets_the_wait(
    concurrency: int,
) -> None:
    """A burst of calls slower than any before: the recent average (10 ms) would let every
    one of them queue; the age of the oldest running call does not."""
    function = spec(concurrency=concurrency, max_queue_wait_ms=10_000)
    async with standing_pool(function, service_s=0.01) as pool:
        started = time.perf_counter()
        occupy(pool, concurrency)
        assert pool.estimate_wait_s() < 0.1
        assert pool.admit(0.1).verdict is Verdict.QUEUE_OK
        await asyncio.sleep(0.25)
        wait_s = pool.estimate_wait_s()
        age_s = time.perf_counter() - started
        assert 0.25 / concurrency <= wait_s <= age_s / concurrency
        if concurrency == 1:
            assert pool.admit(0.1).verdict is Verdict.WAIT_TOO_LONG
