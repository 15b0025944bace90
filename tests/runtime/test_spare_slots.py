"""What a pool offers asynchronous calls: its spare slots (none while sync calls queue)."""

from __future__ import annotations

import pytest

from runtime.states import PoolState
from tests.pools import occupy, spec, standing_pool

pytestmark = pytest.mark.anyio


async def test_every_free_worker_is_a_spare_slot() -> None:
    async with standing_pool(spec(max=3), workers=3) as pool:
        assert pool.spare_slots() == 3
        occupy(pool, 1)
        assert pool.spare_slots() == 2


async def test_a_busy_worker_offers_no_pipelined_slot_even_for_short_calls() -> None:
    async with standing_pool(spec(max=2), workers=2, service_s=0.001) as pool:
        assert pool.dispatch.depth() == 2  # sync calls may pipeline here...
        occupy(pool, 1)
        assert pool.spare_slots() == 1  # ...async calls take only the idle worker
        occupy(pool, 1)
        assert pool.spare_slots() == 0


async def test_no_slot_is_spare_while_a_sync_call_waits_in_the_queue() -> None:
    async with standing_pool(spec(max=1), workers=1) as pool:
        occupy(pool, 2)  # slow calls do not pipeline: the second one queues
        assert pool.dispatch.queue
        assert pool.spare_slots() == 0


async def test_a_pool_that_is_not_running_offers_nothing() -> None:
    async with standing_pool(spec(max=2), workers=2) as pool:
        pool.state = PoolState.BACKOFF
        assert pool.spare_slots() == 0


async def test_concurrent_workers_offer_each_free_slot() -> None:
    async with standing_pool(spec(max=1, concurrency=4), workers=1) as pool:
        occupy(pool, 1)
        assert pool.spare_slots() == 3
