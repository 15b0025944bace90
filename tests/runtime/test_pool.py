"""Warm pools with real zygotes and workers, driven in-process (no HTTP)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from registry.specs import FunctionSpec, HandlerRef, PoolSpec
from runtime.admission import Verdict
from runtime.errors import CallTimedOut, Overloaded, WorkerCrashed
from runtime.pool import WarmPool
from runtime.protocol import Outcome
from runtime.states import PoolState
from runtime.supervisor import Supervisor
from runtime.worker_link import Result
from tests.conftest import REPO

pytestmark = pytest.mark.anyio


def make_spec(
    attr: str,
    *,
    module: str = "tests.fixtures.handlers",
    root: Path = REPO,
    kind: str = "module",
    timeout_s: float = 5.0,
    memory_mb: int = 256,
    env: dict[str, str] | None = None,
    **pool: Any,
) -> FunctionSpec:
    bounds = {
        "min": 1,
        "max": 2,
        "concurrency": 1,
        "queue_max": 64,
        "max_queue_wait_ms": 5000,
        "idle_timeout_s": 30.0,
        **pool,
    }
    return FunctionSpec(
        name=attr.replace("_", "-"),
        handler=HandlerRef(kind, module, attr),  # type: ignore[arg-type]
        root=root,
        triggers=(),
        pool=PoolSpec(**bounds),
        timeout_s=timeout_s,
        memory_mb=memory_mb,
        env=env or {},
    )


class Timings:
    def __init__(self) -> None:
        self.spawned: list[float] = []
        self.cold: list[float] = []

    def worker_spawned(self, function: str, seconds: float) -> None:
        self.spawned.append(seconds)

    def cold_start(self, function: str, seconds: float) -> None:
        self.cold.append(seconds)


@pytest.fixture(autouse=True)
def fast_housekeeping(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("runtime.supervisor.TICK_S", 0.05)
    monkeypatch.setattr("runtime.pool.BACKOFF_S", (0.1, 0.2))


@asynccontextmanager
async def running(spec: FunctionSpec, observer: Timings | None = None) -> AsyncIterator[WarmPool]:
    async with Supervisor([spec], observer) as supervisor:
        pool = supervisor.pools[spec.name]
        await until(lambda: pool.state is not PoolState.STARTING, "the zygote to load")
        yield pool


async def until(predicate: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def call(pool: WarmPool, query: str = "", body: bytes = b"") -> Result:
    admission = pool.admit()
    if not admission.admitted:
        raise admission.failure()
    handle = pool.submit(b"POST", b"/", query.encode(), b"content-type:text/plain", "c1", body)
    return await handle.future


def pid_of(result: Result) -> int:
    return int(json.loads(result.body)["pid"])


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


async def test_a_call_reaches_a_warm_worker_and_comes_back() -> None:
    async with running(make_spec("echo")) as pool:
        result = await call(pool, body=b"hello")
        assert (result.status, result.body, result.outcome) == (200, b"hello", Outcome.OK)
        assert pool.stats.calls == 1


async def test_init_runs_once_per_worker_after_the_fork() -> None:
    async with running(make_spec("whoami", min=1, max=1)) as pool:
        first = await call(pool)
        second = await call(pool)
        assert pid_of(first) == pid_of(second)
        assert json.loads(second.body)["inits"] == 1


@pytest.mark.parametrize(
    ("query", "words"),
    [
        ("do=segfault", r"SIGSEGV \(segmentation fault\)"),
        ("do=exit&code=9", "exited with code 9"),
        ("do=kill", "SIGKILL"),
        ("do=sys_exit", r"called sys\.exit\(\)"),
    ],
)
async def test_a_worker_that_dies_mid_call_fails_only_that_call(query: str, words: str) -> None:
    async with running(make_spec("misbehave", min=2, max=2)) as pool:
        await until(lambda: pool.serving_count() == 2, "two workers")
        slow = asyncio.ensure_future(call(pool, "do=sleep&ms=400"))
        await asyncio.sleep(0.05)
        with pytest.raises(WorkerCrashed, match=words):
            await call(pool, query)
        assert (await slow).status == 200, "the other worker's call must be unaffected"
        assert (await call(pool, "do=whoami")).status == 200
        assert pool.stats.crashes == 1
        await until(lambda: pool.serving_count() == 2, "the dead worker to be replaced")


async def test_the_memory_limit_ends_the_call_with_a_clear_message() -> None:
    async with running(make_spec("misbehave", memory_mb=128)) as pool:
        with pytest.raises(WorkerCrashed, match=r"ran out of memory .*128 MiB"):
            await call(pool, "do=hog&mib=512")
        assert (await call(pool, "do=hog&mib=8")).status == 200


async def test_soft_timeout_answers_504_and_keeps_the_worker() -> None:
    async with running(make_spec("misbehave", timeout_s=0.3, min=1, max=1)) as pool:
        before = pid_of(await call(pool, "do=whoami"))
        result = await call(pool, "do=sleep&ms=3000")
        assert (result.status, result.outcome) == (504, Outcome.SOFT_TIMEOUT)
        assert b"timed out after 0.3 s" in result.body
        assert pid_of(await call(pool, "do=whoami")) == before


async def test_hard_timeout_kills_and_replaces_the_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("runtime.pool.KILL_GRACE_S", 0.2)
    async with running(make_spec("ignore_timeout", timeout_s=0.3, min=1, max=1)) as pool:
        await until(lambda: pool.serving_count() == 1, "the worker")
        first = pool.snapshot()["worker_pids"]
        with pytest.raises(CallTimedOut, match="killed and replaced"):
            await call(pool, "s=30")
        assert pool.stats.hard_timeouts == 1
        await until(lambda: pool.serving_count() == 1, "a replacement worker")
        assert pool.snapshot()["worker_pids"] != first


@pytest.mark.parametrize(
    ("module", "words"),
    [
        ("tests.fixtures.fail_import", "definitely_not_an_installed_module"),
        (
            "tests.fixtures.crash_on_init",
            r"KeyError: 'model_path' \(.*crash_on_init.py, line \d+\)",
        ),
    ],
)
@pytest.mark.parametrize("minimum", [1, 3])
async def test_a_function_that_cannot_start_backs_off_then_is_fatal(
    module: str, words: str, minimum: int
) -> None:
    async with running(make_spec("handle", module=module, min=minimum, max=3)) as pool:
        await until(lambda: pool.state is PoolState.FATAL, "FATAL", timeout_s=15)
        failures = pool.stats.start_failures
        # the first try and one per backoff step (0.1 s, 0.2 s), however many workers each
        # attempt spawned: every attempt gets to fork ``minimum`` workers again
        assert failures == 3
        per_attempt = minimum if "init" in module else 0
        assert pool.stats.spawned == 3 * per_attempt
        admission = pool.admit()
        assert admission.verdict is Verdict.UNAVAILABLE
        assert admission.failure().status == 503
        assert pool.last_error is not None
        assert re.search(words, pool.last_error["message"])
        await asyncio.sleep(0.5)
        assert pool.stats.start_failures == failures, "a FATAL pool must not respawn"


async def test_scaling_a_fatal_function_gives_it_a_fresh_start(tmp_path: Path) -> None:
    handler = tmp_path / "flaky.py"
    handler.write_text(
        "import pathlib\n"
        "if pathlib.Path(__file__).with_name('broken').exists():\n"
        "    raise RuntimeError('not yet')\n"
        "def handle(event):\n    return b'ok'\n"
    )
    (tmp_path / "broken").touch()
    spec = make_spec("handle", module=str(handler), kind="file", root=tmp_path)
    async with running(spec) as pool:
        await until(lambda: pool.state is PoolState.FATAL, "FATAL", timeout_s=15)
        (tmp_path / "broken").unlink()
        pool.scale(1, 1)
        await until(
            lambda: pool.state is PoolState.RUNNING and pool.serving_count() == 1, "a fresh start"
        )
        assert (await call(pool)).body == b"ok"


async def test_min_zero_waits_for_a_fork_instead_of_failing() -> None:
    timings = Timings()
    async with running(make_spec("echo", min=0, max=1), timings) as pool:
        assert pool.serving_count() == 0
        result = await call(pool, body=b"cold")
        assert result.body == b"cold"
        assert len(timings.cold) == 1 and len(timings.spawned) == 1


async def test_autoscaler_adds_workers_under_load_and_retires_them_when_idle() -> None:
    spec = make_spec("sleep_for", min=1, max=3, idle_timeout_s=0.3)
    async with running(spec) as pool:
        await until(lambda: pool.serving_count() == 1, "the first worker")
        calls = [asyncio.ensure_future(call(pool, "ms=300")) for _ in range(6)]
        await until(lambda: pool.serving_count() == 3, "scale-up to max")
        results = await asyncio.gather(*calls)
        assert {r.status for r in results} == {200}
        assert len({pid_of(r) for r in results}) == 3
        await until(lambda: len(pool.workers) == 1, "scale-down to min")
        assert pool.stats.retired == 2


async def test_a_full_queue_is_refused_with_a_retry_hint() -> None:
    async with running(make_spec("sleep_for", min=1, max=1, queue_max=1)) as pool:
        await until(lambda: pool.serving_count() == 1, "the worker")
        busy = asyncio.ensure_future(call(pool, "ms=500"))
        queued = asyncio.ensure_future(call(pool, "ms=1"))
        await asyncio.sleep(0.05)
        admission = pool.admit()
        assert admission.verdict is Verdict.QUEUE_FULL
        failure = admission.failure()
        assert isinstance(failure, Overloaded) and failure.retry_after_s >= 1
        assert (await busy).status == 200 and (await queued).status == 200


async def test_a_call_that_waits_past_max_queue_wait_is_refused() -> None:
    spec = make_spec("sleep_for", min=1, max=1, max_queue_wait_ms=100)
    async with running(spec) as pool:
        await until(lambda: pool.serving_count() == 1, "the worker")
        busy = asyncio.ensure_future(call(pool, "ms=600"))
        await asyncio.sleep(0.02)
        handle = pool.submit(b"GET", b"/", b"ms=1", b"", "late", b"")
        with pytest.raises(Overloaded, match="within 100 ms") as refused:
            await handle.future
        assert refused.value.reason == "queue_timeout"
        assert (await busy).status == 200


async def test_the_wait_estimate_refuses_calls_that_would_wait_too_long() -> None:
    spec = make_spec("sleep_for", min=1, max=1, max_queue_wait_ms=200)
    async with running(spec) as pool:
        await until(lambda: pool.serving_count() == 1, "the worker")
        for _ in range(3):
            await call(pool, "ms=150")  # teaches the pool its service time
        busy = [asyncio.ensure_future(call(pool, "ms=150")) for _ in range(2)]
        await asyncio.sleep(0.02)
        assert pool.admit().verdict is Verdict.WAIT_TOO_LONG
        await asyncio.gather(*busy)


async def test_async_handlers_serve_several_calls_per_worker() -> None:
    spec = make_spec("async_sleep", min=1, max=1, concurrency=4)
    async with running(spec) as pool:
        await until(lambda: pool.serving_count() == 1, "the worker")
        assert pool.concurrency == 4
        calls = [asyncio.ensure_future(call(pool, "ms=300")) for _ in range(4)]
        await until(lambda: pool.snapshot()["in_flight"] == 4, "four calls on one worker")
        assert pool.snapshot()["queue_depth"] == 0
        results = await asyncio.gather(*calls)
        assert len({pid_of(r) for r in results}) == 1


async def test_sync_handlers_get_concurrency_one_whatever_the_manifest_says() -> None:
    async with running(make_spec("echo", concurrency=8)) as pool:
        assert pool.concurrency == 1


async def test_scale_changes_bounds_and_rejects_nonsense() -> None:
    async with running(make_spec("echo", min=1, max=4)) as pool:
        pool.scale(3, 3)
        await until(lambda: pool.serving_count() == 3, "three workers")
        pool.scale(1, 1)
        await until(lambda: len(pool.workers) == 1, "one worker")
        pool.scale(0, 4, exact=True)  # replicas: 0 -- scale to zero now, not after idling
        await until(lambda: len(pool.workers) == 0, "zero workers")
        assert (await call(pool, body=b"back")).body == b"back"
        with pytest.raises(ValueError, match="min ≤ max"):
            pool.scale(2, 1)


async def test_a_dead_zygote_is_restarted_and_the_pool_serves_again() -> None:
    async with running(make_spec("whoami", min=1, max=1)) as pool:
        old_worker = pid_of(await call(pool))
        assert pool.zygote is not None and pool.zygote.pid is not None
        os.kill(pool.zygote.pid, signal.SIGKILL)
        await until(lambda: not alive(old_worker), "the worker to die with its zygote")
        await until(
            lambda: pool.state is PoolState.RUNNING and pool.serving_count() == 1,
            "a restarted pool",
        )
        assert pid_of(await call(pool)) != old_worker


async def test_stopping_leaves_no_process_behind() -> None:
    spec = make_spec("echo", min=2, max=2)
    async with running(spec) as pool:
        await until(lambda: pool.serving_count() == 2, "two workers")
        assert pool.zygote is not None and pool.zygote.pid is not None
        pids = [pool.zygote.pid, *pool.snapshot()["worker_pids"]]
        assert all(alive(pid) for pid in pids)
    await until(lambda: not any(alive(pid) for pid in pids), "every process to end")
    assert pool.state is PoolState.STOPPED


@pytest.fixture
def short_is_50ms(monkeypatch: pytest.MonkeyPatch) -> None:
    """Calls under 50 ms count as short: a loaded CI machine's round trips (several ms,
    over the 2 ms default) must still teach the pool to pipeline."""
    monkeypatch.setattr("runtime.dispatcher.PIPELINE_MAX_SERVICE_S", 0.05)


async def short_calls_taught(pool: WarmPool) -> None:
    """Teach the pool that its calls are short, so that it pipelines."""
    for _ in range(5):
        await call(pool, "do=whoami")
    assert pool.dispatch.depth() == 2


@pytest.mark.usefixtures("short_is_50ms")
async def test_short_calls_are_pipelined_into_busy_workers_only() -> None:
    async with running(make_spec("misbehave", min=2, max=2)) as pool:
        await until(lambda: pool.serving_count() == 2, "two workers")
        await short_calls_taught(pool)
        first = asyncio.ensure_future(call(pool, "do=sleep&ms=300"))
        second = asyncio.ensure_future(call(pool, "do=sleep&ms=300"))
        await asyncio.sleep(0.05)
        assert sorted(len(w.calls) for w in pool.workers.values()) == [1, 1], (
            "an idle worker must be used before pipelining"
        )
        third = asyncio.ensure_future(call(pool, "do=whoami"))
        await asyncio.sleep(0.02)
        assert sorted(len(w.calls) for w in pool.workers.values()) == [1, 2]
        assert len(pool.dispatch.queue) == 0
        assert {r.status for r in await asyncio.gather(first, second, third)} == {200}


async def test_long_calls_are_not_pipelined() -> None:
    async with running(make_spec("sleep_for", min=1, max=1)) as pool:
        await until(lambda: pool.serving_count() == 1, "the worker")
        await call(pool, "ms=50")  # 50 ms is far above the pipelining threshold
        assert pool.dispatch.depth() == 1
        calls = [asyncio.ensure_future(call(pool, "ms=200")) for _ in range(2)]
        await asyncio.sleep(0.05)
        assert len(pool.dispatch.queue) == 1
        await asyncio.gather(*calls)


@pytest.mark.usefixtures("short_is_50ms")
async def test_a_call_pipelined_behind_a_crash_is_run_elsewhere_not_failed() -> None:
    async with running(make_spec("misbehave", min=1, max=1)) as pool:
        await until(lambda: pool.serving_count() == 1, "the worker")
        await short_calls_taught(pool)
        crashing = asyncio.ensure_future(call(pool, "do=segfault"))
        behind = asyncio.ensure_future(call(pool, "do=whoami"))
        await asyncio.sleep(0)
        assert [len(w.calls) for w in pool.workers.values()] == [2]
        with pytest.raises(WorkerCrashed):
            await crashing
        assert (await behind).status == 200
        assert pool.stats.crashes == 1


@pytest.mark.usefixtures("short_is_50ms")
async def test_a_call_pipelined_behind_a_hung_call_is_run_elsewhere(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("runtime.pool.KILL_GRACE_S", 0.2)
    async with running(make_spec("misbehave", timeout_s=0.3, min=1, max=1)) as pool:
        await until(lambda: pool.serving_count() == 1, "the worker")
        await short_calls_taught(pool)
        hung = asyncio.ensure_future(call(pool, "do=hang&s=30"))
        behind = asyncio.ensure_future(call(pool, "do=whoami"))
        await asyncio.sleep(0)
        assert [len(w.calls) for w in pool.workers.values()] == [2]
        with pytest.raises(CallTimedOut):
            await hung
        result = await behind
        assert result.status == 200 and result.outcome == Outcome.OK


def zygote_children() -> list[int]:
    """Zygote processes that are children of this test process."""
    found = []
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children") as children:
            for pid in children.read().split():
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                        if b"runtime.zygote" in cmdline.read() and alive(int(pid)):
                            found.append(int(pid))
                except FileNotFoundError:
                    pass
    return found


async def test_scaling_a_fatal_pool_twice_starts_one_zygote(tmp_path: Path) -> None:
    handler = tmp_path / "flaky.py"
    handler.write_text(
        "import pathlib\n"
        "def init(context):\n"
        "    if pathlib.Path(__file__).with_name('broken').exists():\n"
        "        raise RuntimeError('not yet')\n"
        "def handle(event):\n    return b'ok'\n"
    )
    (tmp_path / "broken").touch()
    spec = make_spec("handle", module=str(handler), kind="file", root=tmp_path)
    async with running(spec) as pool:
        await until(lambda: pool.state is PoolState.FATAL, "FATAL", timeout_s=15)
        (tmp_path / "broken").unlink()
        pool.scale(1, 2)
        pool.scale(1, 2)
        await until(lambda: pool.serving_count() == 1, "a worker after the fresh start")
        assert (await call(pool)).body == b"ok"
        assert len(zygote_children()) == 1
        assert pool.stats.spawned < 10, "no spawn loop"


async def test_programs_a_handler_leaves_running_are_stopped_with_the_pool() -> None:
    async with running(make_spec("misbehave", min=1, max=1)) as pool:
        result = json.loads((await call(pool, "do=spawn")).body)
        assert alive(result["child"])
    await until(lambda: not alive(result["child"]), "the handler's child to be stopped")
