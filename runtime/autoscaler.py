"""How many workers a pool should have: the scaling rules, as pure functions.

Up, at once: when a call has to queue, the pool asks for enough workers to give every call
in flight or queued a slot (``ceil(demand / concurrency)``), counting workers that are still
starting, up to ``max``. Forking from a warm zygote takes milliseconds, so there is no
panic window to wait for: the reaction is the fork time.

Down, after a stable window: idle workers are handed calls last-in first-out, so a worker
that has been idle for ``idle_timeout_s`` was not needed at any moment of that window; such
workers are retired, never below ``min``.
"""

from __future__ import annotations

import math


def workers_wanted(demand: int, concurrency: int, min_workers: int, max_workers: int) -> int:
    """The worker count that gives each of ``demand`` calls a slot, within [min, max]."""
    needed = math.ceil(demand / concurrency) if demand > 0 else 0
    return max(min_workers, min(max_workers, needed))


def retirable(idle_for_s: list[float], live: int, min_workers: int, idle_timeout_s: float) -> int:
    """How many of the idle workers (their idle times given) may retire now."""
    excess = live - min_workers
    if excess <= 0:
        return 0
    return min(excess, sum(1 for t in idle_for_s if t >= idle_timeout_s))
