"""Lifecycle states of workers and pools, with the transitions each allows.

A transition not in the table is a bug in the supervisor, not a user error: it raises
:class:`IllegalTransition` so that tests catch it.
"""

from __future__ import annotations

from enum import Enum


class IllegalTransition(RuntimeError):
    pass


class WorkerPhase(Enum):
    """Where a worker is in its life. A SERVING worker is reported READY or BUSY depending
    on whether it has calls in flight; that is derived, not stored."""

    STARTING = "starting"
    SERVING = "serving"
    DRAINING = "draining"
    STOPPED = "stopped"


class PoolState(Enum):
    STARTING = "starting"  # the zygote is importing the handler module
    RUNNING = "running"
    BACKOFF = "backoff"  # the last start failed; waiting before the next attempt
    FATAL = "fatal"  # start failed too often; only scaling or a redeploy retries it
    STOPPING = "stopping"
    STOPPED = "stopped"


WORKER_TRANSITIONS: dict[WorkerPhase, frozenset[WorkerPhase]] = {
    WorkerPhase.STARTING: frozenset(
        {WorkerPhase.SERVING, WorkerPhase.DRAINING, WorkerPhase.STOPPED}
    ),
    WorkerPhase.SERVING: frozenset({WorkerPhase.DRAINING, WorkerPhase.STOPPED}),
    WorkerPhase.DRAINING: frozenset({WorkerPhase.STOPPED}),
    WorkerPhase.STOPPED: frozenset(),
}

POOL_TRANSITIONS: dict[PoolState, frozenset[PoolState]] = {
    PoolState.STOPPED: frozenset({PoolState.STARTING}),
    PoolState.STARTING: frozenset(
        {PoolState.RUNNING, PoolState.BACKOFF, PoolState.FATAL, PoolState.STOPPING}
    ),
    PoolState.RUNNING: frozenset(
        {PoolState.BACKOFF, PoolState.FATAL, PoolState.STOPPING, PoolState.STARTING}
    ),
    PoolState.BACKOFF: frozenset(
        {PoolState.RUNNING, PoolState.STARTING, PoolState.FATAL, PoolState.STOPPING}
    ),
    PoolState.FATAL: frozenset({PoolState.STARTING, PoolState.RUNNING, PoolState.STOPPING}),
    PoolState.STOPPING: frozenset({PoolState.STOPPED}),
}


def check_worker(old: WorkerPhase, new: WorkerPhase) -> WorkerPhase:
    if new not in WORKER_TRANSITIONS[old]:
        raise IllegalTransition(f"worker cannot go from {old.value} to {new.value}")
    return new


def check_pool(old: PoolState, new: PoolState) -> PoolState:
    if new not in POOL_TRANSITIONS[old]:
        raise IllegalTransition(f"pool cannot go from {old.value} to {new.value}")
    return new
