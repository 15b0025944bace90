"""The job store of asynchronous calls, step by step, against a real Redis: what each Lua
step writes (status, queue, registries, lease, fields), that RQ's own classes read the jobs
as RQ jobs, and that a run which lost its job cannot overwrite the outcome of the run that
replaced it.

Each test has its own key prefix, so its queue (``PREFIX.echo``) and its job ids
(``PREFIX-…``) are its own; the ``rq:*`` keys they name (which the ``redis_prefix`` fixture
does not remove) are deleted at teardown.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
import zlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.registry import (
    CanceledJobRegistry,
    FailedJobRegistry,
    FinishedJobRegistry,
    StartedJobRegistry,
)

from gateway.jobs import layout, scripts
from gateway.jobs.intake import NewCall
from gateway.jobs.layout import DEAD_TTL_S, RESULT_TTL_S
from gateway.jobs.store import (
    CALLBACK_LEASE_S,
    LEASE_MS,
    MOST_LOST_RUNS,
    JobStore,
    Outcome,
    Run,
)

pytestmark = pytest.mark.anyio

FN = "echo"
WORKER = "node-a.echo.boot1"
NODE = "node-a"
OK = Outcome(200, b"content-type: text/plain\r\n", b"done", 0.25)
FAILED = Outcome(500, b"", b"boom", 0.5, "Traceback: boom")


@pytest.fixture
def rq_keys(redis_client: redis.Redis, redis_prefix: str) -> Iterator[str]:
    """The test's prefix; at teardown, every ``rq:*`` key naming it (queue, registries,
    jobs, anything RQ's classes wrote) goes, and so does its queue's entry in ``rq:queues``."""
    yield redis_prefix
    pattern = "rq:*" + re.sub(r"([*?\[\]\\])", r"\\\1", redis_prefix) + "*"
    keys = list(redis_client.scan_iter(match=pattern, count=500))
    if keys:
        redis_client.unlink(*keys)
    queues = [q for q in redis_client.smembers(layout.QUEUES) if redis_prefix.encode() in q]
    if queues:
        redis_client.srem(layout.QUEUES, *queues)
    assert not list(redis_client.scan_iter(match=pattern, count=500))


@pytest.fixture
async def store(redis_url: str, rq_keys: str) -> AsyncIterator[JobStore]:
    client = redis.asyncio.Redis.from_url(redis_url)
    blocking = redis.asyncio.Redis.from_url(redis_url)
    yield JobStore(client, blocking, rq_keys)
    await client.aclose()
    await blocking.aclose()


def job_id(store: JobStore, name: str) -> str:
    return f"{store.prefix}-{name}"


def new_call(store: JobStore, name: str, retries: int = 2, function: str = FN) -> NewCall:
    return NewCall(
        job_id=job_id(store, name),
        function=function,
        method=b"POST",
        path=b"/work",
        query=b"a=1",
        headers=b"x-test: " + name.encode() + b"\r\n",
        body=b"body of " + name.encode(),
        callback_url="http://127.0.0.1:9/cb",
        idempotency_key="idem-" + name,
        retries=retries,
        timeout_s=2.5,
    )


async def accepted(store: JobStore, *names: str, retries: int = 2) -> list[str]:
    for name in names:
        assert await store.accept(new_call(store, name, retries)) is None
    return [job_id(store, name) for name in names]


async def queued(store: JobStore, function: str = FN) -> list[str]:
    return [i.decode() for i in await store.redis.lrange(store.queue_key(function), 0, -1)]


async def field(store: JobStore, jid: str, name: str) -> str | None:
    value = await store.redis.hget(layout.job_key(jid), name)
    return None if value is None else value.decode()


async def wip(store: JobStore) -> list[str]:
    return [m.decode() for m in await store.redis.zrange(store.registry("wip", FN), 0, -1)]


async def members(store: JobStore, kind: str) -> list[str]:
    return [m.decode() for m in await store.redis.zrange(store.registry(kind, FN), 0, -1)]


async def claim_one(store: JobStore) -> Run:
    runs = await store.claim(FN, 1, WORKER, NODE)
    assert len(runs) == 1
    return runs[0]


async def lose_lease(store: JobStore, run: Run) -> None:
    """The run's node stops renewing: its lease lapses."""
    assert await store.redis.delete(store.leases + run.job_id) == 1


# ------------------------------------------------------------------ accept


async def test_accept_stores_a_job_rq_reads_and_the_same_id_twice_is_one_job(
    store: JobStore, redis_client: redis.Redis
) -> None:
    [jid] = await accepted(store, "a")
    name = store.queue(FN)

    job = Job.fetch(jid, connection=redis_client)
    assert job.get_status() == JobStatus.QUEUED
    assert job.origin == name
    assert job.func_name == "edgefaas.call"
    assert job.args == (FN,)
    assert job.timeout == 3
    assert job.result_ttl == RESULT_TTL_S
    assert job.failure_ttl == DEAD_TTL_S
    assert job.retries_left == 2
    assert job.enqueued_at is not None
    assert Queue(name, connection=redis_client).count == 1
    assert Queue(name, connection=redis_client).get_job_ids() == [jid]
    assert layout.queue_key(name).encode() in redis_client.smembers(layout.QUEUES)

    assert await store.accept(new_call(store, "a")) == "queued"
    assert Queue(name, connection=redis_client).count == 1
    assert await field(store, jid, "ef_attempts") == "0"

    await claim_one(store)
    assert await store.accept(new_call(store, "a")) == "started"
    assert await queued(store) == []


# ------------------------------------------------------------------ claim


async def test_claim_takes_at_most_n_in_order_and_holds_a_lease(store: JobStore) -> None:
    a, b, c = await accepted(store, "a", "b", "c")

    runs = await store.claim(FN, 2, WORKER, NODE)

    assert [r.job_id for r in runs] == [a, b]
    assert await queued(store) == [c]
    first = runs[0]
    assert first.attempt == 1
    assert first.function == FN
    assert (first.method, first.path, first.query) == (b"POST", b"/work", b"a=1")
    assert first.headers == b"x-test: a\r\n"
    assert first.body == b"body of a"
    assert first.callback_url == "http://127.0.0.1:9/cb"
    assert first.idempotency_key == "idem-a"
    assert first.retries_left == 2
    assert 0 < time.time() - first.age_from < 60
    for run in runs:
        assert await field(store, run.job_id, "status") == "started"
        assert await field(store, run.job_id, "worker_name") == WORKER
        assert await field(store, run.job_id, "ef_node") == NODE
        assert await field(store, run.job_id, "ef_token") == run.token
        assert await store.redis.get(store.leases + run.job_id) == run.token.encode()
        assert 0 < await store.redis.pttl(store.leases + run.job_id) <= LEASE_MS
    assert sorted(await wip(store)) == sorted(f"{r.job_id}:{r.token}" for r in runs)

    rest = await store.claim(FN, 5, WORKER, NODE)
    assert [r.job_id for r in rest] == [c]
    assert await store.claim(FN, 5, WORKER, NODE) == []


async def test_claim_skips_jobs_that_are_no_longer_queued(store: JobStore) -> None:
    a, b, c = await accepted(store, "a", "b", "c")
    assert await store.cancel(a) == "canceled"
    # b was canceled by a step that left its id in the queue: claim drops it on the way
    await store.redis.hset(layout.job_key(b), "status", "canceled")
    assert await queued(store) == [b, c]

    runs = await store.claim(FN, 3, WORKER, NODE)

    assert [r.job_id for r in runs] == [c]
    assert await queued(store) == []
    assert await field(store, a, "status") == "canceled"
    assert await field(store, b, "status") == "canceled"
    assert await field(store, b, "ef_attempts") == "0"
    assert await store.redis.exists(store.leases + b) == 0
    assert await wip(store) == [f"{c}:{runs[0].token}"]


async def test_rq_started_registry_cleanup_leaves_claimed_runs_alone(
    store: JobStore, redis_client: redis.Redis
) -> None:
    [jid] = await accepted(store, "a", retries=2)
    run = await claim_one(store)
    name = store.queue(FN)

    registry = StartedJobRegistry(name, connection=redis_client)
    assert registry.count == 1  # runs RQ's cleanup of "expired" started jobs
    assert registry.get_job_ids() == [jid]

    assert Job.fetch(jid, connection=redis_client).get_status() == JobStatus.STARTED
    assert await field(store, jid, "status") == "started"
    assert await wip(store) == [f"{jid}:{run.token}"]
    assert await queued(store) == []
    assert FailedJobRegistry(name, connection=redis_client).get_job_ids() == []
    score = await store.redis.zscore(store.registry("wip", FN), f"{jid}:{run.token}")
    assert score > time.time() + layout.WIP_SCORE_AHEAD_S - 60


# ------------------------------------------------------------------ finish


async def test_finish_keeps_the_result_and_the_first_outcome_wins(
    store: JobStore, redis_client: redis.Redis
) -> None:
    [jid] = await accepted(store, "a")
    run = await claim_one(store)

    assert await store.finish(run, OK) is True

    assert await field(store, jid, "status") == "finished"
    assert await field(store, jid, "ef_code") == "200"
    assert await field(store, jid, "ef_rh") == "content-type: text/plain\r\n"
    assert await field(store, jid, "ef_rb") == "done"
    assert await field(store, jid, "ef_dur") == "0.25"
    assert await field(store, jid, "ef_error") == ""
    assert await field(store, jid, "ended_at")
    assert await members(store, "finished") == [jid]
    score = await store.redis.zscore(store.registry("finished", FN), jid)
    assert abs(score - (time.time() + RESULT_TTL_S)) < 60
    assert RESULT_TTL_S - 60 < await store.redis.ttl(layout.job_key(jid)) <= RESULT_TTL_S
    assert await store.redis.exists(store.leases + jid) == 0
    assert await wip(store) == []
    name = store.queue(FN)
    assert Job.fetch(jid, connection=redis_client).get_status() == JobStatus.FINISHED
    assert FinishedJobRegistry(name, connection=redis_client).get_job_ids() == [jid]

    assert await store.finish(run, Outcome(201, b"", b"again", 1.0)) is False
    assert await store.bury(run, FAILED) is False
    assert await field(store, jid, "status") == "finished"
    assert await field(store, jid, "ef_rb") == "done"
    assert await field(store, jid, "ef_code") == "200"


async def test_a_run_replaced_by_another_cannot_settle_the_job(store: JobStore) -> None:
    [jid] = await accepted(store, "a")
    old = await claim_one(store)
    await lose_lease(store, old)
    assert await store.reap(FN) == [(jid, "queued")]
    new = await claim_one(store)
    assert new.attempt == old.attempt + 1

    assert await store.finish(old, Outcome(200, b"", b"late", 9.0)) is False
    assert await store.retry(old, FAILED, time.time()) is False
    assert await store.requeue(old) is False

    assert await field(store, jid, "status") == "started"
    assert await field(store, jid, "ef_token") == new.token
    assert await field(store, jid, "ef_rb") is None
    assert await store.redis.get(store.leases + jid) == new.token.encode()
    assert await wip(store) == [f"{jid}:{new.token}"]

    assert await store.finish(new, OK) is True
    assert await field(store, jid, "ef_rb") == "done"


async def test_a_lapsed_run_finishes_its_job_while_it_waits_in_the_queue(
    store: JobStore,
) -> None:
    a, b = await accepted(store, "a", "b")
    run = await claim_one(store)
    await lose_lease(store, run)
    assert await store.reap(FN) == [(a, "queued")]
    assert await queued(store) == [a, b]

    assert await store.finish(run, OK) is True

    assert await field(store, a, "status") == "finished"
    assert await queued(store) == [b]
    assert await wip(store) == []
    assert [r.job_id for r in await store.claim(FN, 5, WORKER, NODE)] == [b]


# ------------------------------------------------------------------ retry, promote


async def test_retry_schedules_the_job_and_promote_queues_it_when_due(
    store: JobStore, redis_client: redis.Redis
) -> None:
    a, b, c = await accepted(store, "a", "b", "c", retries=2)
    runs = await store.claim(FN, 2, WORKER, NODE)
    assert [r.job_id for r in runs] == [a, b]
    due, later = time.time() - 1, time.time() + 600

    assert await store.retry(runs[0], FAILED, due) is True
    assert await store.retry(runs[1], FAILED, later) is True

    for jid, at in ((a, due), (b, later)):
        assert await field(store, jid, "status") == "scheduled"
        assert await field(store, jid, "retries_left") == "1"
        assert await field(store, jid, "ef_error") == "Traceback: boom"
        assert await field(store, jid, "ef_code") == "500"
        assert float(await field(store, jid, "ef_retry_at") or 0) == at
        assert await store.redis.zscore(store.registry("scheduled", FN), jid) == pytest.approx(at)
        assert await store.redis.exists(store.leases + jid) == 0
        assert await store.redis.ttl(layout.job_key(jid)) == -1
    assert Job.fetch(a, connection=redis_client).get_status() == JobStatus.SCHEDULED
    assert await wip(store) == []
    assert await queued(store) == [c]

    assert await store.promote(FN) == 1

    assert await queued(store) == [c, a]
    assert await field(store, a, "status") == "queued"
    assert await field(store, b, "status") == "scheduled"
    assert await members(store, "scheduled") == [b]
    assert await store.promote(FN) == 0
    again = await store.claim(FN, 2, WORKER, NODE)
    assert [(r.job_id, r.attempt, r.retries_left) for r in again] == [(c, 1, 2), (a, 2, 1)]


# ------------------------------------------------------------------ bury


async def test_bury_makes_a_dead_letter_rq_lists(
    store: JobStore, redis_client: redis.Redis
) -> None:
    [jid] = await accepted(store, "a")
    run = await claim_one(store)

    assert await store.bury(run, FAILED) is True

    assert await field(store, jid, "status") == "failed"
    raw = await store.redis.hget(layout.job_key(jid), "exc_info")
    assert zlib.decompress(raw) == b"Traceback: boom"
    assert await field(store, jid, "ef_error") == "Traceback: boom"
    name = store.queue(FN)
    assert FailedJobRegistry(name, connection=redis_client).get_job_ids() == [jid]
    assert Job.fetch(jid, connection=redis_client).get_status() == JobStatus.FAILED
    assert DEAD_TTL_S - 60 < await store.redis.ttl(layout.job_key(jid)) <= DEAD_TTL_S
    assert await store.redis.exists(store.leases + jid) == 0
    assert await wip(store) == []
    assert await store.dead_count(FN) == 1
    assert await store.finish(run, OK) is False


# ------------------------------------------------------------------ requeue


async def test_requeue_puts_the_job_back_at_the_head_uncounted(store: JobStore) -> None:
    a, b = await accepted(store, "a", "b")
    run = await claim_one(store)
    assert run.job_id == a

    assert await store.requeue(run) is True

    assert await queued(store) == [a, b]
    assert await field(store, a, "status") == "queued"
    assert await field(store, a, "worker_name") == ""
    assert await store.redis.exists(store.leases + a) == 0
    assert await wip(store) == []
    again = await claim_one(store)
    assert again.job_id == a
    assert again.attempt == run.attempt
    assert again.token != run.token
    assert await store.requeue(run) is False
    assert await field(store, a, "status") == "started"


# ------------------------------------------------------------------ renew


async def test_renew_keeps_held_leases_and_returns_the_lost_ones(store: JobStore) -> None:
    await accepted(store, "a", "b", "c", "d")
    a, b, c, d = await store.claim(FN, 4, WORKER, NODE)
    await lose_lease(store, d)
    assert await store.reap(FN) == [(d.job_id, "queued")]  # d's run is over
    await store.redis.pexpire(store.leases + a.job_id, 500)
    await lose_lease(store, b)  # lapsed (Redis was down a while, say), but nobody reaped it
    await store.redis.set(store.leases + c.job_id, "someone-else", px=LEASE_MS)

    lost = await store.renew([a, b, c, d])

    assert [r.job_id for r in lost] == [c.job_id, d.job_id]
    for run in (a, b):  # b's run still holds its job: its lease is taken again
        assert await store.redis.get(store.leases + run.job_id) == run.token.encode()
        assert LEASE_MS - 1000 < await store.redis.pttl(store.leases + run.job_id) <= LEASE_MS
    assert await store.redis.get(store.leases + c.job_id) == b"someone-else"
    assert await store.redis.exists(store.leases + d.job_id) == 0  # not taken by the lost run

    [d2] = await store.claim(FN, 1, WORKER, NODE)  # d runs again
    await lose_lease(store, d2)
    assert await store.renew([d, d2]) == [d]
    assert await store.redis.get(store.leases + d.job_id) == d2.token.encode()
    assert await store.renew([]) == []


# ------------------------------------------------------------------ reap


async def test_reap_requeues_a_lapsed_run_at_the_head_and_leaves_live_ones(
    store: JobStore,
) -> None:
    a, b = await accepted(store, "a", "b")
    lapsed, live = await store.claim(FN, 2, WORKER, NODE)
    [c] = await accepted(store, "c")
    await lose_lease(store, lapsed)

    assert await store.reap(FN) == [(a, "queued")]

    assert await queued(store) == [a, c]
    assert await field(store, a, "status") == "queued"
    assert await field(store, a, "ef_lost") == "1"
    assert "lease" in (await field(store, a, "ef_error") or "")
    assert await field(store, b, "status") == "started"
    assert await field(store, b, "ef_lost") is None
    assert await store.redis.get(store.leases + b) == live.token.encode()
    assert await wip(store) == [f"{b}:{live.token}"]
    assert await store.reap(FN) == []


async def test_reap_buries_a_job_lost_too_many_times(
    store: JobStore, redis_client: redis.Redis
) -> None:
    [jid] = await accepted(store, "a")
    reaped = []
    for attempt in range(1, MOST_LOST_RUNS + 1):
        run = await claim_one(store)
        assert run.attempt == attempt
        await lose_lease(store, run)
        reaped += await store.reap(FN)

    assert reaped == [(jid, "queued")] * (MOST_LOST_RUNS - 1) + [(jid, "dead")]
    assert await field(store, jid, "status") == "failed"
    assert await field(store, jid, "ef_lost") == str(MOST_LOST_RUNS)
    assert await queued(store) == []
    assert await wip(store) == []
    name = store.queue(FN)
    assert FailedJobRegistry(name, connection=redis_client).get_job_ids() == [jid]
    assert DEAD_TTL_S - 60 < await store.redis.ttl(layout.job_key(jid)) <= DEAD_TTL_S
    assert await store.claim(FN, 1, WORKER, NODE) == []


# ------------------------------------------------------------------ cancel


async def test_cancel_only_what_waits(store: JobStore, redis_client: redis.Redis) -> None:
    waiting, retrying, running, done, other = await accepted(
        store, "waiting", "retrying", "running", "done", "other"
    )
    assert await store.cancel(waiting) == "canceled"
    assert await queued(store) == [retrying, running, done, other]
    run_r, run_s, run_d = await store.claim(FN, 3, WORKER, NODE)
    assert [run_r.job_id, run_s.job_id, run_d.job_id] == [retrying, running, done]
    assert await store.retry(run_r, FAILED, time.time() + 600) is True
    assert await store.finish(run_d, OK) is True

    assert await store.cancel(retrying) == "canceled"
    assert await store.cancel(running) == "started"
    assert await store.cancel(done) == "finished"
    assert await store.cancel(job_id(store, "unknown")) == "missing"

    assert await members(store, "scheduled") == []
    assert sorted(await members(store, "canceled")) == sorted([waiting, retrying])
    for jid in (waiting, retrying):
        assert await field(store, jid, "status") == "canceled"
        assert await field(store, jid, "ended_at")
        assert DEAD_TTL_S - 60 < await store.redis.ttl(layout.job_key(jid)) <= DEAD_TTL_S
    assert await field(store, running, "status") == "started"
    assert await field(store, done, "status") == "finished"
    assert await queued(store) == [other]
    assert await store.promote(FN) == 0
    name = store.queue(FN)
    assert sorted(CanceledJobRegistry(name, connection=redis_client).get_job_ids()) == sorted(
        [waiting, retrying]
    )
    assert Job.fetch(waiting, connection=redis_client).get_status() == JobStatus.CANCELED
    assert await store.redis.exists(layout.job_key(job_id(store, "unknown"))) == 0


# ------------------------------------------------------------------ dead letters, redrive


async def test_redrive_puts_dead_letters_back_with_fresh_retries(store: JobStore) -> None:
    a, b, c, d = await accepted(store, "a", "b", "c", "d", retries=1)
    runs = await store.claim(FN, 4, WORKER, NODE)
    for run in runs[:3]:
        assert await store.bury(run, FAILED) is True
    assert await store.finish(runs[3], OK) is True
    # the dead letters' count of retries ran out on the way
    await store.redis.hset(layout.job_key(a), "retries_left", 0)

    assert await store.dead_count(FN) == 3
    letters = await store.dead_letters(FN, 10)
    assert sorted(letter["id"] for letter in letters) == sorted(x.encode() for x in (a, b, c))
    for letter in letters:
        assert letter["ef_fn"] == FN.encode()
        assert letter["ef_attempts"] == b"1"
        assert letter["ef_error"] == b"Traceback: boom"
        assert float(letter["ef_ended"]) >= float(letter["ef_created"])
    assert len(await store.dead_letters(FN, 2)) == 2
    age_before = float(await field(store, a, "ef_age_from") or 0)
    redriven_at = time.time()

    assert await store.redrive(FN, 3, [a, d, job_id(store, "unknown")]) == 1

    assert await queued(store) == [a]
    assert await field(store, a, "status") == "queued"
    assert await field(store, a, "retries_left") == "3"
    assert float(await field(store, a, "ef_age_from") or 0) >= redriven_at > age_before
    assert await field(store, a, "ended_at") == ""
    assert await store.redis.ttl(layout.job_key(a)) == -1
    assert await field(store, b, "status") == "failed"
    assert await field(store, c, "status") == "failed"
    assert await field(store, d, "status") == "finished"
    assert await members(store, "finished") == [d]
    assert sorted(await members(store, "failed")) == sorted([b, c])
    assert await store.dead_count(FN) == 2

    assert await store.redrive(FN, 2, []) == 2

    assert sorted((await queued(store))[1:]) == sorted([b, c])
    assert await store.dead_count(FN) == 0
    assert await store.dead_letters(FN, 10) == []
    runs = await store.claim(FN, 3, WORKER, NODE)
    assert {r.job_id: r.retries_left for r in runs} == {a: 3, b: 2, c: 2}
    assert all(r.attempt == 2 for r in runs)


async def test_redrive_resets_the_lost_runs_of_a_reaped_dead_letter(store: JobStore) -> None:
    [jid] = await accepted(store, "a")
    for _ in range(MOST_LOST_RUNS):
        await lose_lease(store, await claim_one(store))
        await store.reap(FN)
    assert await field(store, jid, "status") == "failed"

    assert await store.redrive(FN, 2, []) == 1

    assert await field(store, jid, "ef_lost") == "0"
    run = await claim_one(store)
    await lose_lease(store, run)
    assert await store.reap(FN) == [(jid, "queued")]


# ------------------------------------------------------------------ wait


async def test_wait_returns_at_once_when_a_job_waits_and_leaves_the_queue(
    store: JobStore,
) -> None:
    a, b = await accepted(store, "a", "b")
    started = time.monotonic()

    assert await store.wait(FN, 1) is True

    assert time.monotonic() - started < 0.5
    assert await queued(store) == [a, b]


async def test_wait_times_out_on_an_empty_queue(store: JobStore) -> None:
    started = time.monotonic()

    assert await store.wait(FN, 1) is False

    assert 0.9 <= time.monotonic() - started < 3
    assert await store.redis.exists(store.queue_key(FN)) == 0


async def test_a_wait_may_be_shorter_than_a_second(store: JobStore) -> None:
    waited = []
    for timeout_s in (0.3, 1.0):
        started = time.monotonic()
        assert await store.wait(FN, timeout_s) is False
        waited.append(time.monotonic() - started)
    short, whole = waited
    assert short < 0.7 * whole  # not rounded up to a whole second (Redis takes a decimal)


async def test_the_same_id_again_in_another_lane_of_the_function_is_the_same_job(
    store: JobStore,
) -> None:
    [jid] = await accepted(store, "again")
    elsewhere = dataclasses.replace(new_call(store, "again"), lane=layout.lane(FN, "node-b"))
    assert await store.accept(elsewhere) == "queued"  # a duplicate, not a conflict
    assert await queued(store) == [jid]
    assert await store.redis.exists(store.queue_key(layout.lane(FN, "node-b"))) == 0


async def test_an_id_in_use_by_another_function_is_a_conflict_and_enqueues_nothing(
    store: JobStore,
) -> None:
    await accepted(store, "shared")
    other = new_call(store, "shared", function="other")
    assert await store.accept(other) == "conflict"
    assert await queued(store, "other") == []
    assert await queued(store) == [job_id(store, "shared")]


async def test_another_mesh_s_job_is_neither_shown_nor_canceled(
    store: JobStore, redis_url: str
) -> None:
    [jid] = await accepted(store, "mine")
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        foreign = JobStore(client, client, store.prefix + "x")  # queue names "PREFIXx.…"
        assert await foreign.get(jid) is None
        assert await foreign.cancel(jid) == "missing"
        nested = JobStore(client, client, store.prefix + ".lab")  # "PREFIX.lab.motion"
        [theirs] = await accepted(nested, "theirs")
        assert await store.get(theirs) is None
        assert await store.cancel(theirs) == "missing"
        assert await field(nested, theirs, "status") == "queued"
        pinned = dataclasses.replace(new_call(store, "pinned"), lane=layout.lane(FN, "a.b"))
        assert await store.accept(pinned) is None  # (a node's own lane is this mesh's)
        assert (await store.get(pinned.job_id) or {}).get("status") == b"queued"
        assert await store.cancel(pinned.job_id) == "canceled"
    finally:
        await client.aclose()
    assert await field(store, jid, "status") == "queued"
    assert (await store.get(jid) or {})["status"] == b"queued"


async def test_a_finished_job_keeps_its_result_but_not_the_call_s_headers_and_body(
    store: JobStore,
) -> None:
    await accepted(store, "done", "dead")
    done = await claim_one(store)
    assert await store.finish(done, OK)
    assert await field(store, done.job_id, "ef_h") is None
    assert await field(store, done.job_id, "ef_b") is None
    assert await field(store, done.job_id, "ef_rb") == "done"
    dead = await claim_one(store)
    assert await store.bury(dead, FAILED)
    assert await field(store, dead.job_id, "ef_b") == "body of dead"  # kept for a redrive


async def test_a_settled_run_resets_the_count_of_lost_runs(store: JobStore) -> None:
    [jid] = await accepted(store, "lost-once")
    run = await claim_one(store)
    await store.redis.delete(store.leases + run.job_id)
    assert await store.reap(FN) == [(jid, "queued")]
    assert await field(store, jid, "ef_lost") == "1"
    again = await claim_one(store)
    assert await store.retry(again, FAILED, time.time() + 60)
    assert await field(store, jid, "ef_lost") == "0"


async def test_trim_drops_registry_entries_whose_time_is_up(store: JobStore) -> None:
    for kind in ("finished", "failed", "canceled"):
        await store.redis.zadd(
            store.registry(kind, FN), {"gone": time.time() - 1, "kept": time.time() + 60}
        )
    await store.trim([FN])
    for kind in ("finished", "failed", "canceled"):
        assert await members(store, kind) == ["kept"]


async def test_accepts_go_on_after_redis_lost_its_scripts(store: JobStore) -> None:
    await accepted(store, "before")
    await store.redis.script_flush()
    calls = [new_call(store, f"after-{n}") for n in range(3)]
    answers = await asyncio.gather(*(store.accept(call) for call in calls))
    assert answers == [None, None, None]
    assert await queued(store) == [
        job_id(store, n) for n in ("before", "after-0", "after-1", "after-2")
    ]


async def test_a_script_load_between_a_pipelines_accepts_resends_only_those_not_run(
    store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another node loads the script while this node's pipeline runs: the accepts before it
    fail with NOSCRIPT, those after it are accepted — and must not be sent again."""
    real = store.intake._pipelined_accepts
    first = True

    async def interleaved(batch: list[Any]) -> list[Any]:
        nonlocal first
        if not first:
            return await real(batch)
        first = False
        await store.redis.script_flush()
        early = await real(batch[:2])  # NOSCRIPT
        await store.redis.script_load(scripts.ACCEPT)  # the other node's
        return early + await real(batch[2:])

    monkeypatch.setattr(store.intake, "_pipelined_accepts", interleaved)
    calls = [new_call(store, f"mixed-{n}") for n in range(5)]
    answers = await asyncio.gather(*(store.accept(call) for call in calls))
    assert answers == [None] * 5  # each accepted once, none a "duplicate"
    assert sorted(await queued(store)) == sorted(job_id(store, f"mixed-{n}") for n in range(5))


async def test_accepts_that_arrive_together_are_each_answered(store: JobStore) -> None:
    calls = [new_call(store, f"burst-{n}") for n in range(50)]
    again = new_call(store, "burst-7")
    answers = await asyncio.gather(*(store.accept(call) for call in [*calls, again]))
    assert answers == [None] * 50 + ["queued"]
    assert len(await queued(store)) == 50


async def outbox(store: JobStore) -> dict[str, float]:
    return {
        m.decode(): s for m, s in await store.redis.zrange(store.outbox, 0, -1, withscores=True)
    }


async def test_a_final_outcome_enters_the_callback_outbox_in_the_same_step(
    store: JobStore,
) -> None:
    await accepted(store, "fin", "again", "dead")
    runs = [await claim_one(store) for _ in range(2)]
    assert await store.finish(runs[0], OK)
    assert await store.retry(runs[1], FAILED, time.time() + 60)  # not final: no callback yet
    dead_run = await claim_one(store)
    assert await store.bury(dead_run, FAILED)
    waiting = await outbox(store)
    assert set(waiting) == {runs[0].job_id, dead_run.job_id}
    for due in waiting.values():  # due only if the node that delivers it never confirms
        assert time.time() + CALLBACK_LEASE_S - 5 < due <= time.time() + CALLBACK_LEASE_S
    assert await store.due_callbacks() == []
    await store.callback_done(runs[0].job_id)
    assert set(await outbox(store)) == {dead_run.job_id}


async def test_an_unconfirmed_callback_is_leased_again_to_one_node(store: JobStore) -> None:
    await store.redis.zadd(store.outbox, {"j-due": time.time() - 1, "j-later": time.time() + 60})
    assert await store.due_callbacks() == ["j-due"]
    assert await store.due_callbacks() == []  # leased: not handed out twice
    assert (await outbox(store))["j-due"] > time.time() + CALLBACK_LEASE_S - 5


async def test_a_call_dead_after_its_node_was_lost_is_due_for_its_callback_at_once(
    store: JobStore,
) -> None:
    [jid] = await accepted(store, "lost")
    for _ in range(MOST_LOST_RUNS):
        run = await claim_one(store)
        await store.redis.delete(store.leases + run.job_id)
        await store.reap(FN)
    assert await field(store, jid, "status") == "failed"
    assert await store.due_callbacks() == [jid]


async def test_the_mesh_lanes_are_those_with_a_queue_under_its_prefix(
    store: JobStore, redis_url: str
) -> None:
    assert await store.lanes() == []
    await accepted(store, "a")
    assert await store.accept(new_call(store, "b", function="other")) is None
    client = redis.asyncio.Redis.from_url(redis_url)
    try:  # other meshes on the same Redis (their prefixes start with this one's)
        elsewhere = JobStore(client, client, store.prefix + "-next")
        assert await elsewhere.accept(new_call(elsewhere, "c", function="third")) is None
        assert await elsewhere.lanes() == ["third"]
        nested = JobStore(client, client, store.prefix + ".lab")  # queue "PREFIX.lab.motion"
        assert await nested.accept(new_call(nested, "d", function="motion")) is None
        assert await nested.lanes() == ["motion"]
        # the same job id sent to this mesh: another mesh's job, not this function's
        assert await store.accept(new_call(store, "x", function="motion")) is None
        assert await nested.accept(new_call(store, "x", function="motion")) == "conflict"
    finally:
        await client.aclose()
    pinned = dataclasses.replace(new_call(store, "e", function="other"), lane="other@node-b")
    assert await store.accept(pinned) is None
    assert await store.lanes() == [FN, "motion", "other", "other@node-b"]


async def test_expired_dead_letters_are_not_counted_even_untrimmed(store: JobStore) -> None:
    [jid] = await accepted(store, "dead", retries=0)
    assert await store.bury(await claim_one(store), FAILED) is True
    await store.redis.zadd(store.registry("failed", FN), {"expired-letter": time.time() - 1})
    assert await store.redis.zcard(store.registry("failed", FN)) == 2
    assert await store.dead_count(FN) == 1
    assert [letter["id"] for letter in await store.dead_letters(FN, 10)] == [jid.encode()]
