"""Tie a child process's life to its parent's, so no process outlives the node.

The zygote dies with the gateway and each worker with its zygote: Linux delivers the
parent-death signal even when the parent is killed with SIGKILL.
"""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Callable
from typing import Any

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, value: int, name: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({name}) failed: {os.strerror(err)}")


def become_subreaper() -> None:
    """Adopt orphaned descendants (instead of init), so that they can be stopped too."""
    _prctl(_PR_SET_CHILD_SUBREAPER, 1, "PR_SET_CHILD_SUBREAPER")


def die_with_parent(expected_parent: int) -> None:
    """Ask the kernel for SIGKILL when the parent exits; exit now if it already has."""
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, "PR_SET_PDEATHSIG")
    if os.getppid() != expected_parent:
        # The parent died between fork and prctl: the signal will never come.
        os._exit(1)


def preexec_die_with(parent: int) -> Callable[[], None]:
    """A ``preexec_fn`` for a child that must die with ``parent`` (SIGKILL), even across
    ``exec``. ``prctl`` is looked up here, in the parent: the child of a threaded process
    should do no dynamic loading between fork and exec."""
    prctl: Any = ctypes.CDLL(None, use_errno=True).prctl

    def preexec() -> None:
        if prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:  # the parent died before prctl: no signal would come
            os._exit(1)

    return preexec
