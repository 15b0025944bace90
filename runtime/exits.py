"""Exit codes of zygotes and workers, and wait statuses described in words."""

from __future__ import annotations

import os
import signal

EXIT_OK = 0
EXIT_INIT_FAILED = 3  # init(context) raised; the pool backs off instead of respawning
EXIT_LOAD_FAILED = 4  # the zygote could not import the handler
EXIT_OUT_OF_MEMORY = 75  # MemoryError under the memory_mb limit (RLIMIT_AS)
EXIT_PROTOCOL = 76  # the gateway sent something the worker could not read
EXIT_HANDLER_EXIT = 77  # the function called sys.exit() (or raised SystemExit)

_CODE_WORDS = {
    EXIT_OK: "exited normally",
    EXIT_INIT_FAILED: "exited because init() failed",
    EXIT_LOAD_FAILED: "exited because the handler could not be loaded",
    EXIT_PROTOCOL: "exited after a protocol error",
    EXIT_HANDLER_EXIT: "exited because the function called sys.exit()",
}

_SIGNAL_WORDS = {
    signal.SIGSEGV: "segmentation fault",
    signal.SIGBUS: "bus error",
    signal.SIGFPE: "floating-point exception",
    signal.SIGILL: "illegal instruction",
    signal.SIGABRT: "aborted",
    signal.SIGKILL: "out of memory, or killed by the supervisor or an operator?",
    signal.SIGTERM: "terminated",
}


def describe_exit(wait_status: int, memory_mb: int | None = None) -> str:
    """Say in words how a process ended, e.g. ``killed by SIGSEGV (segmentation fault)``."""
    if os.WIFSIGNALED(wait_status):
        number = os.WTERMSIG(wait_status)
        try:
            sig = signal.Signals(number)
        except ValueError:
            return f"killed by signal {number}"
        words = _SIGNAL_WORDS.get(sig)
        return f"killed by {sig.name} ({words})" if words else f"killed by {sig.name}"
    if os.WIFEXITED(wait_status):
        code = os.WEXITSTATUS(wait_status)
        if code == EXIT_OUT_OF_MEMORY:
            limit = f" of {memory_mb} MiB" if memory_mb is not None else ""
            return f"ran out of memory (hit its memory_mb limit{limit})"
        return _CODE_WORDS.get(code, f"exited with code {code}")
    return f"ended with wait status {wait_status}"
