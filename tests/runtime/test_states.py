from __future__ import annotations

import itertools
from typing import TypeVar

import pytest

from runtime.states import (
    POOL_TRANSITIONS,
    WORKER_TRANSITIONS,
    IllegalTransition,
    PoolState,
    WorkerPhase,
    check_pool,
    check_worker,
)

W = WorkerPhase
P = PoolState
S = TypeVar("S")

WORKER_ALLOWED = {
    (W.STARTING, W.SERVING),
    (W.STARTING, W.DRAINING),
    (W.STARTING, W.STOPPED),
    (W.SERVING, W.DRAINING),
    (W.SERVING, W.STOPPED),
    (W.DRAINING, W.STOPPED),
}

POOL_ALLOWED = {
    (P.STOPPED, P.STARTING),
    (P.STARTING, P.RUNNING),
    (P.STARTING, P.BACKOFF),
    (P.STARTING, P.FATAL),
    (P.STARTING, P.STOPPING),
    (P.RUNNING, P.BACKOFF),
    (P.RUNNING, P.FATAL),
    (P.RUNNING, P.STOPPING),
    (P.RUNNING, P.STARTING),
    (P.BACKOFF, P.RUNNING),
    (P.BACKOFF, P.STARTING),
    (P.BACKOFF, P.FATAL),
    (P.BACKOFF, P.STOPPING),
    (P.FATAL, P.STARTING),
    (P.FATAL, P.RUNNING),  # scaling a FATAL pool whose zygote lives retries init()
    (P.FATAL, P.STOPPING),
    (P.STOPPING, P.STOPPED),
}


def edges(table: dict[S, frozenset[S]]) -> set[tuple[S, S]]:
    return {(old, new) for old, targets in table.items() for new in targets}


def test_tables_cover_every_state_and_match_the_documented_edges() -> None:
    assert set(WORKER_TRANSITIONS) == set(WorkerPhase)
    assert set(POOL_TRANSITIONS) == set(PoolState)
    assert edges(WORKER_TRANSITIONS) == WORKER_ALLOWED
    assert edges(POOL_TRANSITIONS) == POOL_ALLOWED


@pytest.mark.parametrize(("old", "new"), sorted(WORKER_ALLOWED, key=str))
def test_allowed_worker_transitions(old: WorkerPhase, new: WorkerPhase) -> None:
    assert check_worker(old, new) is new


@pytest.mark.parametrize(("old", "new"), sorted(POOL_ALLOWED, key=str))
def test_allowed_pool_transitions(old: PoolState, new: PoolState) -> None:
    assert check_pool(old, new) is new


@pytest.mark.parametrize(
    ("old", "new"),
    sorted(set(itertools.product(WorkerPhase, repeat=2)) - WORKER_ALLOWED, key=str),
)
def test_forbidden_worker_transitions(old: WorkerPhase, new: WorkerPhase) -> None:
    with pytest.raises(IllegalTransition) as info:
        check_worker(old, new)

    assert str(info.value) == f"worker cannot go from {old.value} to {new.value}"


@pytest.mark.parametrize(
    ("old", "new"),
    sorted(set(itertools.product(PoolState, repeat=2)) - POOL_ALLOWED, key=str),
)
def test_forbidden_pool_transitions(old: PoolState, new: PoolState) -> None:
    with pytest.raises(IllegalTransition) as info:
        check_pool(old, new)

    assert str(info.value) == f"pool cannot go from {old.value} to {new.value}"


def test_notable_forbidden_transitions() -> None:
    for old, new in [
        (W.DRAINING, W.SERVING),  # a draining worker takes no new calls
        (W.STOPPED, W.STARTING),  # workers are never revived; a new one is forked
        (W.SERVING, W.STARTING),
    ]:
        with pytest.raises(IllegalTransition):
            check_worker(old, new)
    for old, new in [
        (P.FATAL, P.BACKOFF),  # a fatal pool comes back only when scaled
        (P.STOPPED, P.RUNNING),
        (P.STOPPING, P.STARTING),
        (P.STOPPED, P.STOPPING),
    ]:
        with pytest.raises(IllegalTransition):
            check_pool(old, new)


def test_failing_start_goes_to_backoff_then_fatal() -> None:
    state = P.STOPPED
    for new in (P.STARTING, P.BACKOFF, P.STARTING, P.BACKOFF, P.FATAL, P.STOPPING, P.STOPPED):
        state = check_pool(state, new)

    assert state is P.STOPPED


def test_illegal_transition_is_a_runtime_error() -> None:
    assert issubclass(IllegalTransition, RuntimeError)
