"""The cloud's circuit breaker: open on one failure, closed again by a background probe."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from gateway.mesh.breaker import CircuitBreaker

pytestmark = pytest.mark.anyio

PROBE_S = 0.01


class Probe:
    """A probe that answers from a script (True, False, or an exception to raise) and then
    repeats its last answer."""

    def __init__(self, *answers: bool | Exception) -> None:
        self.answers = list(answers)
        self.calls = 0

    async def __call__(self) -> bool:
        self.calls += 1
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


async def until(predicate: Callable[[], bool], what: str, timeout_s: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def test_a_new_breaker_is_closed_and_does_not_probe() -> None:
    probe = Probe(True)
    breaker = CircuitBreaker("the cloud", probe, PROBE_S)
    await asyncio.sleep(PROBE_S * 5)
    assert breaker.closed and probe.calls == 0


async def test_a_trip_opens_it_until_a_probe_succeeds() -> None:
    probe = Probe(False, OSError("connection refused"), False, True)
    breaker = CircuitBreaker("the cloud", probe, PROBE_S)
    breaker.trip("the cloud could not be reached")
    assert not breaker.closed
    assert breaker.reason == "the cloud could not be reached"
    await until(lambda: breaker.closed, "the breaker to close")
    assert probe.calls == 4, "it closes on the first successful probe, not before"
    assert breaker.reason == ""
    await asyncio.sleep(PROBE_S * 5)
    assert probe.calls == 4, "a closed breaker stops probing"
    await breaker.close()


async def test_it_stays_open_while_probes_fail() -> None:
    probe = Probe(False, RuntimeError("odd"), False)
    breaker = CircuitBreaker("the cloud", probe, PROBE_S)
    breaker.trip("refused")
    await until(lambda: probe.calls >= 10, "ten probes")
    assert not breaker.closed and breaker.reason == "refused"
    await breaker.close()


async def test_it_probes_in_the_background_not_at_once() -> None:
    probe = Probe(True)
    breaker = CircuitBreaker("the cloud", probe, probe_s=1.0)
    breaker.trip("refused")
    await asyncio.sleep(0.05)
    assert probe.calls == 0 and not breaker.closed
    await breaker.close()


async def test_tripping_an_open_breaker_keeps_one_probe_and_the_latest_reason() -> None:
    running = 0
    most = 0
    answer = asyncio.Event()

    async def probe() -> bool:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await answer.wait()
        running -= 1
        return True

    breaker = CircuitBreaker("the cloud", probe, PROBE_S)
    breaker.trip("first")
    opened_at = breaker.opened_at
    breaker.trip("second")
    await until(lambda: running == 1, "a probe")
    await asyncio.sleep(PROBE_S * 5)
    assert most == 1
    assert (breaker.reason, breaker.opened_at) == ("second", opened_at)
    answer.set()
    await until(lambda: breaker.closed, "the breaker to close")
    await breaker.close()


async def test_it_opens_again_after_closing() -> None:
    probe = Probe(True)
    breaker = CircuitBreaker("the cloud", probe, PROBE_S)
    breaker.trip("once")
    await until(lambda: breaker.closed, "the first close")
    breaker.trip("twice")
    assert not breaker.closed and breaker.reason == "twice"
    await until(lambda: breaker.closed, "the second close")
    assert probe.calls == 2
    await breaker.close()


async def test_closing_stops_the_probes() -> None:
    probe = Probe(False)
    breaker = CircuitBreaker("the cloud", probe, PROBE_S)
    breaker.trip("refused")
    await until(lambda: probe.calls >= 2, "two probes")
    await breaker.close()
    calls = probe.calls
    await asyncio.sleep(PROBE_S * 5)
    assert probe.calls == calls
