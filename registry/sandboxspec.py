"""A function's ``sandbox`` settings, and their rules, shared by the manifest (which reports a
fault with its key path and line) and :class:`SandboxSpec` (which raises it, because specs
read from a bundle are untrusted input).

``network``: ``host`` (the node's network: local screens, devices, the site's services) or
``none`` (a network namespace of its own with only loopback, for compute-only functions).
``tmp_mb``: the size of the function's private ``/tmp`` (counted in its memory).
``cpu``: cores for all the function's workers together. ``pids``: the most processes and
threads the function's zygote, workers and what they start may have at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from registry import defaults
from registry.asyncspec import Fault

SANDBOX_KEYS = ("network", "tmp_mb", "cpu", "pids")  # the fields of SandboxSpec, in order
NETWORKS = ("host", "none")


def sandbox_fault(key: str, value: object) -> Fault | None:
    """The fault in ``value`` as the sandbox setting ``key`` (one of :data:`SANDBOX_KEYS`)."""
    return _RULES[key](value)


def _network(value: object) -> Fault | None:
    return None if value in NETWORKS else Fault("", "host or none", value)


def _tmp_mb(value: object) -> Fault | None:
    most = defaults.SANDBOX_MAX_TMP_MB
    if _whole(value) and 1 <= value <= most:  # type: ignore[operator]
        return None
    return Fault("", f"an integer from 1 to {most}", value)


def _cpu(value: object) -> Fault | None:
    most = defaults.SANDBOX_MAX_CPU
    expected = f"a number of cores from 0.01 to {most:g} (e.g. 0.5)"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return Fault("", expected, value)
    if not (math.isfinite(value) and 0.01 <= value <= most):
        return Fault("", expected, value)
    return None


def _pids(value: object) -> Fault | None:
    least, most = defaults.SANDBOX_MIN_PIDS, defaults.SANDBOX_MAX_PIDS
    if _whole(value) and least <= value <= most:  # type: ignore[operator]
        return None
    return Fault("", f"an integer from {least} to {most}", value)


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_RULES: dict[str, Callable[[object], Fault | None]] = {
    "network": _network,
    "tmp_mb": _tmp_mb,
    "cpu": _cpu,
    "pids": _pids,
}


@dataclass(frozen=True, slots=True)
class SandboxSpec:
    """What a function's sandbox allows it: see the module's docstring. Bad values raise
    ValueError (TypeError for a document that is not an object)."""

    network: str = defaults.SANDBOX_NETWORK
    tmp_mb: int = defaults.SANDBOX_TMP_MB
    cpu: float = defaults.SANDBOX_CPU
    pids: int = defaults.SANDBOX_PIDS

    def __post_init__(self) -> None:
        for key in SANDBOX_KEYS:
            fault = sandbox_fault(key, getattr(self, key))
            if fault is not None:
                raise ValueError(f"sandbox.{key}: expected {fault.expected}, got {fault.value!r}")
        object.__setattr__(self, "cpu", float(self.cpu))

    def to_dict(self) -> dict[str, Any]:
        return {"network": self.network, "tmp_mb": self.tmp_mb, "cpu": self.cpu, "pids": self.pids}

    @classmethod
    def from_dict(cls, data: object) -> SandboxSpec:
        if not isinstance(data, dict):
            raise TypeError(f"sandbox: expected an object, got {data!r}")
        for key in data:
            if key not in SANDBOX_KEYS:
                raise ValueError(
                    f"sandbox: unknown key {key!r}; expected {', '.join(SANDBOX_KEYS)}"
                )
        for key in SANDBOX_KEYS:
            if key not in data:
                raise ValueError(f"sandbox: missing key {key!r}")
        return cls(data["network"], data["tmp_mb"], data["cpu"], data["pids"])
