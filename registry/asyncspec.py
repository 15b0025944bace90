"""The rules for a function's ``async`` settings, shared by the manifest (which reports a
fault with its key path and line) and :class:`~registry.specs.AsyncSpec` (which raises it,
because specs read from a bundle are untrusted input).

Each rule looks at one setting and returns a :class:`Fault`, or None when the value is good.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from registry import defaults

ASYNC_KEYS = ("retries", "backoff_s", "max_age_s")  # the fields of AsyncSpec, in order

_MOST_RETRIES = defaults.ASYNC_MAX_RETRIES
_LONGEST_S = defaults.ASYNC_MAX_AGE_LIMIT_S
_SECONDS = f"a number > 0 and ≤ {_LONGEST_S} (7 days)"


class Fault(NamedTuple):
    """What is wrong with one setting: where below its key (``""``, or ``[i]`` for an item of
    a list), what a good value looks like, and the value that was given there."""

    at: str
    expected: str
    value: object


def async_fault(key: str, value: object) -> Fault | None:
    """The fault in ``value`` as the async setting ``key`` (one of :data:`ASYNC_KEYS`)."""
    return _RULES[key](value)


def _retries(value: object) -> Fault | None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MOST_RETRIES:
        return Fault("", f"an integer from 0 to {_MOST_RETRIES}", value)
    return None


def _backoff(value: object) -> Fault | None:
    expected = f"a list of 1 to {_MOST_RETRIES} numbers of seconds, one per retry"
    if not isinstance(value, list | tuple) or not 1 <= len(value) <= _MOST_RETRIES:
        return Fault("", expected, value)
    for i, item in enumerate(value):
        if not _is_seconds(item):
            return Fault(f"[{i}]", _SECONDS, item)
    return None


def _max_age(value: object) -> Fault | None:
    return None if _is_seconds(value) else Fault("", _SECONDS, value)


def _is_seconds(value: object) -> bool:
    """A number (never a bool) > 0 and within the limit; NaN and infinities fail the
    comparison, and a huge int is compared exactly rather than converted."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return 0 < value <= _LONGEST_S


_RULES: dict[str, Callable[[object], Fault | None]] = {
    "retries": _retries,
    "backoff_s": _backoff,
    "max_age_s": _max_age,
}
