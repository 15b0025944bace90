"""Per-pool counters and running estimates, cheap enough to update on every call."""

from __future__ import annotations

import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from runtime.defaults import (
    INITIAL_SERVICE_S,
    INITIAL_SPAWN_S,
    SERVICE_EWMA_WEIGHT,
    SPAWN_SAMPLES,
)
from runtime.protocol import Outcome


@dataclass
class PoolStats:
    """Counters since the pool was created, plus the recent service and spawn times."""

    calls: int = 0
    ok: int = 0
    handler_errors: int = 0
    function_errors: int = 0
    soft_timeouts: int = 0
    hard_timeouts: int = 0
    crashes: int = 0
    saturated: int = 0
    spawned: int = 0
    retired: int = 0
    start_failures: int = 0
    service_s: float = INITIAL_SERVICE_S
    spawn_s: deque[float] = field(default_factory=lambda: deque(maxlen=SPAWN_SAMPLES))
    # zygote starts: process start to handler loaded (the sandbox is built in between)
    zygote_start_s: deque[float] = field(default_factory=lambda: deque(maxlen=SPAWN_SAMPLES))

    def record_call(self, seconds: float, outcome: int) -> None:
        self.calls += 1
        if self.calls == 1:
            self.service_s = seconds
        else:
            self.service_s += SERVICE_EWMA_WEIGHT * (seconds - self.service_s)
        if outcome == Outcome.OK:
            self.ok += 1
        elif outcome == Outcome.HANDLER_ERROR:
            self.handler_errors += 1
        elif outcome == Outcome.FUNCTION_ERROR:
            self.function_errors += 1
        else:
            self.soft_timeouts += 1

    def spawn_p50_s(self) -> float:
        return statistics.median(self.spawn_s) if self.spawn_s else INITIAL_SPAWN_S

    def to_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "ok": self.ok,
            "handler_errors": self.handler_errors,
            "function_errors": self.function_errors,
            "soft_timeouts": self.soft_timeouts,
            "hard_timeouts": self.hard_timeouts,
            "crashes": self.crashes,
            "saturated": self.saturated,
            "spawned": self.spawned,
            "retired": self.retired,
            "start_failures": self.start_failures,
            "service_ms": round(self.service_s * 1000, 3),
            "spawn_ms_p50": round(self.spawn_p50_s() * 1000, 3) if self.spawn_s else None,
            "zygote_starts": len(self.zygote_start_s),
            "zygote_start_ms_p50": (
                round(statistics.median(self.zygote_start_s) * 1000, 3)
                if self.zygote_start_s
                else None
            ),
        }
