"""Micro-batching with real zygotes and workers: calls that queue while the workers are
busy reach ``handle_batch`` together; each caller gets its own answer."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time

import pytest

from registry.specs import BatchSpec
from runtime.errors import Unavailable
from runtime.pool import WarmPool
from runtime.worker_link import Result
from tests.runtime.test_pool import make_spec, running, until

pytestmark = pytest.mark.anyio


def batching_spec(max_size: int = 8, attr: str = "handle", **pool: object) -> object:
    spec = make_spec(attr, module="tests.fixtures.batching", min=1, max=1, **pool)
    return dataclasses.replace(spec, name="batcher", batch=BatchSpec(max_size, 5))


def submit(pool: WarmPool, body: bytes, call_id: str, query: bytes = b"") -> asyncio.Future[Result]:
    return pool.submit(b"POST", b"/", query, b"", call_id, body).future


async def test_calls_that_queue_behind_a_busy_worker_go_as_one_batch() -> None:
    async with running(batching_spec(max_size=8)) as pool:  # type: ignore[arg-type]
        first = submit(pool, b"first", "c0", b"sleep=0.3")
        await asyncio.sleep(0.1)  # the worker is busy with the first call
        rest = [submit(pool, b"item-%d" % n, f"c{n}") for n in range(1, 6)]
        results = await asyncio.gather(first, *rest)
    answers = [json.loads(r.body) for r in results]
    assert answers[0]["batch"] == 1  # alone: nothing else was waiting
    assert [a["body"] for a in answers[1:]] == [f"item-{n}" for n in range(1, 6)]
    assert {a["batch"] for a in answers[1:]} == {5}  # the five queued calls, together
    assert all(r.status == 200 for r in results)


async def test_each_call_of_a_batch_counts_the_batchs_time_as_its_service_time() -> None:
    """The wait estimate (and so routing) reads the service time: the calls of a batch are
    answered together, so all but the first would count as ~0 s if timed one after another."""
    async with running(batching_spec(max_size=8)) as pool:  # type: ignore[arg-type]
        first = submit(pool, b"first", "c0", b"sleep=0.3")
        await asyncio.sleep(0.1)
        rest = [submit(pool, b"item-%d" % n, f"c{n}", b"sleep=0.2") for n in range(1, 6)]
        answers = [json.loads(r.body) for r in await asyncio.gather(first, *rest)]
        assert [a["batch"] for a in answers] == [1, 5, 5, 5, 5, 5]
        assert pool.stats.service_s >= 0.15  # each of the batch's calls took its 0.2 s


async def test_a_call_is_never_held_for_its_batch_near_the_queues_limit() -> None:
    spec = batching_spec(max_queue_wait_ms=100)
    spec = dataclasses.replace(spec, batch=BatchSpec(8, 1000))  # type: ignore[type-var]
    async with running(spec) as pool:  # type: ignore[arg-type]
        assert pool.dispatch.batch_wait_s == pytest.approx(0.05)  # not 1 s: it would be 429


async def test_a_batch_is_never_larger_than_max_size() -> None:
    async with running(batching_spec(max_size=3)) as pool:  # type: ignore[arg-type]
        first = submit(pool, b"first", "c0", b"sleep=0.3")
        await asyncio.sleep(0.1)
        rest = [submit(pool, b"x", f"c{n}") for n in range(1, 8)]
        answers = [json.loads(r.body) for r in await asyncio.gather(first, *rest)]
    assert max(a["batch"] for a in answers) == 3
    assert sorted(a["batch"] for a in answers[1:]) == [1, 3, 3, 3, 3, 3, 3]


async def test_one_bad_item_fails_only_its_own_call() -> None:
    async with running(batching_spec()) as pool:  # type: ignore[arg-type]
        first = submit(pool, b"first", "c0", b"sleep=0.3")
        await asyncio.sleep(0.1)
        good, bad, broken, also_good = (
            submit(pool, b"ok-1", "c1"),
            submit(pool, b"bad", "c2"),
            submit(pool, b"boom", "c3"),
            submit(pool, b"ok-2", "c4"),
        )
        results = await asyncio.gather(first, good, bad, broken, also_good)
        after = await submit(pool, b"next", "c5")
    statuses = [r.status for r in results]
    assert statuses == [200, 200, 400, 500, 200]
    assert b"a bad item" in results[2].body
    assert b"an item that broke" in results[3].body
    assert json.loads(results[1].body)["batch"] == 4  # they did share a batch
    assert after.status == 200  # the worker lives on


async def test_an_idle_pool_answers_a_lone_call_at_once_as_a_batch_of_one() -> None:
    async with running(batching_spec()) as pool:  # type: ignore[arg-type]
        await submit(pool, b"warm", "w")
        started = time.perf_counter()
        result = await submit(pool, b"alone", "c1")
        elapsed = time.perf_counter() - started
    assert json.loads(result.body)["batch"] == 1
    assert elapsed < 1.0  # generous: no waiting for a batch to fill


@pytest.mark.parametrize(
    ("body", "words"),
    [(b"wrong-length", "returned 3 items for a batch of 2"), (b"raise", "the whole batch failed")],
)
async def test_a_batch_that_fails_as_a_whole_fails_each_of_its_calls(
    body: bytes, words: str
) -> None:
    async with running(batching_spec()) as pool:  # type: ignore[arg-type]
        first = submit(pool, b"first", "c0", b"sleep=0.3")
        await asyncio.sleep(0.1)
        pair = [submit(pool, body, "c1"), submit(pool, b"innocent", "c2")]
        results = await asyncio.gather(first, *pair)
        after = await submit(pool, b"next", "c3")
    assert results[0].status == 200
    for result in results[1:]:
        assert result.status == 500
        assert words in result.body.decode()
    assert after.status == 200


async def test_a_module_without_handle_batch_does_not_start() -> None:
    spec = dataclasses.replace(
        make_spec("echo", min=1, max=1), name="nobatch", batch=BatchSpec(4, 5)
    )
    async with running(spec) as pool:
        with pytest.raises(Unavailable, match="defines no handle_batch"):
            await submit(pool, b"x", "c1")


async def test_a_free_worker_holds_a_stream_of_calls_for_at_most_max_wait() -> None:
    spec = dataclasses.replace(
        make_spec("handle", module="tests.fixtures.batching", min=2, max=2),
        name="batcher",
        batch=BatchSpec(8, 100),
    )
    async with running(spec) as pool:
        await until(lambda: pool.serving_count() == 2, "two workers")
        busy = submit(pool, b"busy", "c0", b"sleep=1.5")  # one worker is taken
        await asyncio.sleep(0.05)
        sent: list[tuple[float, asyncio.Future[Result]]] = []
        for n in range(24):  # a call every 10 ms: closer together than max_wait_ms
            sent.append((time.perf_counter(), submit(pool, b"s%d" % n, f"s{n}")))
            await asyncio.sleep(0.01)
        answers = []
        for at, future in sent:
            result = await future
            answers.append((time.perf_counter() - at, json.loads(result.body)["batch"]))
        await busy
    assert max(size for _, size in answers) > 1  # the stream was batched on the free worker
    # held at most max_wait_ms (0.1 s) plus a batch's run: generous slack for a busy machine
    assert max(waited for waited, _ in answers) < 1.0
