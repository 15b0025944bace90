"""describe_exit against wait statuses of real child processes."""

from __future__ import annotations

import os
import resource
import signal
from collections.abc import Callable

import pytest

from runtime.exits import (
    EXIT_INIT_FAILED,
    EXIT_LOAD_FAILED,
    EXIT_OK,
    EXIT_OUT_OF_MEMORY,
    EXIT_PROTOCOL,
    describe_exit,
)

SENTINEL_EXIT = 99  # the child got past what should have ended it


def wait_status_of(child: Callable[[], None], options: int = 0) -> tuple[int, int]:
    """Fork, run ``child`` in the child and return ``(pid, wait status)``."""
    pid = os.fork()
    if pid == 0:
        try:
            child()
        finally:
            os._exit(SENTINEL_EXIT)
    _, status = os.waitpid(pid, options)
    return pid, status


def exit_status(code: int) -> int:
    _, status = wait_status_of(lambda: os._exit(code))
    assert os.WIFEXITED(status)
    assert os.WEXITSTATUS(status) == code
    return status


def signal_status(number: int) -> int:
    def die() -> None:
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if number != signal.SIGKILL:
            signal.signal(number, signal.SIG_DFL)  # pytest's faulthandler hooks SIGSEGV
        os.kill(os.getpid(), number)

    _, status = wait_status_of(die)
    assert os.WIFSIGNALED(status), f"child ended with wait status {status}"
    assert os.WTERMSIG(status) == number
    return status


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (EXIT_OK, "exited normally"),
        (EXIT_INIT_FAILED, "exited because init() failed"),
        (EXIT_LOAD_FAILED, "exited because the handler could not be loaded"),
        (EXIT_PROTOCOL, "exited after a protocol error"),
        (42, "exited with code 42"),
        (1, "exited with code 1"),
    ],
)
def test_exit_codes(code: int, words: str) -> None:
    assert describe_exit(exit_status(code)) == words


def test_exit_code_constants() -> None:
    assert (EXIT_OK, EXIT_INIT_FAILED, EXIT_LOAD_FAILED, EXIT_OUT_OF_MEMORY, EXIT_PROTOCOL) == (
        0,
        3,
        4,
        75,
        76,
    )


def test_out_of_memory_names_the_limit() -> None:
    status = exit_status(EXIT_OUT_OF_MEMORY)

    assert describe_exit(status, memory_mb=256) == (
        "ran out of memory (hit its memory_mb limit of 256 MiB)"
    )
    assert describe_exit(status) == "ran out of memory (hit its memory_mb limit)"


def test_memory_limit_is_not_mentioned_for_other_exits() -> None:
    assert describe_exit(exit_status(EXIT_INIT_FAILED), memory_mb=256) == (
        "exited because init() failed"
    )


@pytest.mark.parametrize(
    ("number", "words"),
    [
        (signal.SIGSEGV, "killed by SIGSEGV (segmentation fault)"),
        (signal.SIGABRT, "killed by SIGABRT (aborted)"),
        (signal.SIGTERM, "killed by SIGTERM (terminated)"),
        (
            signal.SIGKILL,
            "killed by SIGKILL (out of memory, or killed by the supervisor or an operator?)",
        ),
        (signal.SIGUSR1, "killed by SIGUSR1"),
    ],
)
def test_signals(number: int, words: str) -> None:
    assert describe_exit(signal_status(number)) == words


def test_sigkill_words_do_not_change_with_a_memory_limit() -> None:
    assert describe_exit(signal_status(signal.SIGKILL), memory_mb=128) == (
        "killed by SIGKILL (out of memory, or killed by the supervisor or an operator?)"
    )


def test_signal_without_a_name() -> None:
    number = signal.SIGRTMIN + 3
    try:
        signal.Signals(number)
    except ValueError:
        pass
    else:
        pytest.skip(f"signal {number} has a name on this platform")

    assert describe_exit(signal_status(number)) == f"killed by signal {number}"


def test_stopped_process_falls_back_to_the_raw_status() -> None:
    pid, status = wait_status_of(lambda: os.kill(os.getpid(), signal.SIGSTOP), os.WUNTRACED)
    try:
        assert os.WIFSTOPPED(status)
        assert describe_exit(status) == f"ended with wait status {status}"
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
