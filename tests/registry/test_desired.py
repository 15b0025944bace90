"""The desired state and membership in a real Redis (one key prefix per test)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from registry.desired import DesiredState
from registry.errors import MeshError
from registry.keys import Keys
from registry.membership import HEARTBEAT_S, NODE_TTL_S, Membership

pytestmark = pytest.mark.anyio
A, B, C = "a" * 64, "b" * 64, "c" * 64


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def desired(redis: Redis, redis_prefix: str) -> DesiredState:
    return DesiredState(redis, Keys(redis_prefix))


async def test_assigning_a_new_digest_makes_a_new_version_and_bumps_the_generation(
    desired: DesiredState,
) -> None:
    before = await desired.generation()
    first = await desired.assign("echo", A, "sig-a", "key1", ["/echo"])
    again = await desired.assign("echo", A, "sig-a", "key1", ["/echo"])
    second = await desired.assign("echo", B, "sig-b", "key1", ["/echo"])

    assert (first.version, again.version, second.version) == (1, 1, 2)
    assert await desired.generation() == before + 2  # the repeated digest changed nothing
    assert (await desired.entries())["echo"].digest == B
    assert [e.version for e in await desired.history("echo")] == [2, 1]


async def test_a_trigger_path_belongs_to_one_function(desired: DesiredState) -> None:
    await desired.assign("motion", A, "s", "k", ["/sensors/motion"])
    with pytest.raises(
        MeshError, match="/sensors/motion is already the trigger of function motion"
    ):
        await desired.assign("weight", B, "s", "k", ["/sensors/motion", "/sensors/weight"])
    assert await desired.entry("weight") is None


async def test_rollback_goes_to_the_previous_digest_or_a_named_version(
    desired: DesiredState,
) -> None:
    for digest in (A, B, C):
        await desired.assign("echo", digest, f"sig-{digest[0]}", "k", [])
    back = await desired.rollback("echo", None)
    assert (back.digest, back.version, back.signature) == (B, 4, "sig-b")
    named = await desired.rollback("echo", 1)
    assert (named.digest, named.version) == (A, 5)
    with pytest.raises(MeshError, match="no version 9"):
        await desired.rollback("echo", 9)
    with pytest.raises(MeshError, match="never been deployed"):
        await desired.rollback("nothing", None)


async def test_removing_keeps_the_history(desired: DesiredState) -> None:
    await desired.assign("echo", A, "s", "k", [])
    assert await desired.remove("echo") is True
    assert await desired.remove("echo") is False
    assert await desired.entry("echo") is None
    assert (await desired.rollback("echo", 1)).digest == A


async def test_concurrent_assignments_get_distinct_versions(desired: DesiredState) -> None:
    digests = [f"{i:064x}" for i in range(8)]
    entries = await asyncio.gather(*(desired.assign("echo", d, "s", "k", []) for d in digests))
    assert sorted(e.version for e in entries) == list(range(1, 9))


async def test_holders_are_recorded_per_digest(desired: DesiredState) -> None:
    await desired.add_holder(A, "edge-1")
    await desired.add_holder(A, "edge-2")
    assert await desired.holders(A) == {"edge-1", "edge-2"}
    assert await desired.holders(B) == set()


async def test_a_node_that_stops_beating_drops_out(redis: Redis, redis_prefix: str) -> None:
    keys = Keys(redis_prefix)
    one = Membership(redis, keys, "edge-1", "instance-1")
    two = Membership(redis, keys, "edge-2", "instance-2")
    await one.beat({"url": "http://127.0.0.1:1"})
    await two.beat({"url": "http://127.0.0.1:2"})
    assert [r["name"] for r in await one.live()] == ["edge-1", "edge-2"]

    await two.leave()
    assert [r["name"] for r in await one.live()] == ["edge-1"]

    await redis.pexpire(keys.node("edge-1"), 50)  # as if its heartbeats had stopped
    await asyncio.sleep(0.2)
    assert await two.live() == []
    assert NODE_TTL_S <= 3.0


async def test_a_node_name_in_use_by_a_live_node_is_refused(
    redis: Redis, redis_prefix: str
) -> None:
    keys = Keys(redis_prefix)
    live = Membership(redis, keys, "edge-1", "first")

    async def heartbeat() -> None:
        while True:
            await live.beat({"url": "http://127.0.0.1:1"})
            await asyncio.sleep(HEARTBEAT_S)

    beating = asyncio.ensure_future(heartbeat())
    try:
        await asyncio.sleep(0.05)
        refused = Membership(redis, keys, "edge-1", "second")
        with pytest.raises(
            MeshError, match=r"already used by a live node at http://127\.0\.0\.1:1"
        ):
            await refused.claim()
        await refused.leave()  # a refused node leaving must not remove the live one
        assert [r["name"] for r in await live.live()] == ["edge-1"]
    finally:
        beating.cancel()


async def test_a_name_left_by_a_crashed_run_is_free_once_its_record_expires(
    redis: Redis, redis_prefix: str
) -> None:
    keys = Keys(redis_prefix)
    await Membership(redis, keys, "edge-1", "crashed").beat({"url": "http://127.0.0.1:1"})
    await redis.pexpire(keys.node("edge-1"), 300)  # its last heartbeat, nearly expired
    await Membership(redis, keys, "edge-1", "restarted").claim()  # waits, then succeeds
