"""Stopping a node: the first SIGTERM or SIGINT drains in-flight calls and exits 0, a
second one forces the exit, and a SIGKILL to the gateway alone still takes every zygote
and worker with it. In every case the node's process group ends up empty."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import NodeProcess, group_members, wait_for, write_manifest

pytestmark = pytest.mark.slow

StartNode = Callable[..., NodeProcess]

MANIFEST = """\
  slow:
    handler: tests.fixtures.handlers:sleep_for
    timeout_s: 30
    pool: {min: 2, max: 2}
  echo:
    handler: tests.fixtures.handlers:echo
"""


def start_with_pools(start_node: StartNode, tmp_path: Path) -> NodeProcess:
    """A node whose group holds the gateway, two zygotes and three workers — and, when the
    node sandboxes its functions, each zygote's keeper."""
    node = start_node(write_manifest(tmp_path, MANIFEST), "--grace-s", "10")
    sandboxed = httpx.get(node.url + "/readyz", timeout=10).json()["sandbox"]["active"]
    expected = 8 if sandboxed else 6
    wait_for(
        lambda: len(group_members(node.pgid)) == expected,
        what=f"gateway, 2 zygotes, 3 workers{' and 2 keepers' if sandboxed else ''}",
    )
    return node


def call_in_background(node: NodeProcess, ms: int) -> tuple[threading.Thread, list[Any]]:
    """Call ``slow`` in a thread, and wait until a worker is running it."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(httpx.post(f"{node.url}/function/slow?ms={ms}", timeout=30))
        except httpx.HTTPError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    wait_for(lambda: in_flight(node) == 1, what="the slow call in flight")
    return thread, outcome


def in_flight(node: NodeProcess) -> int:
    response = httpx.get(
        f"{node.url}/system/functions/slow", headers=node.admin_headers(), timeout=5
    )
    count: int = response.json()["in_flight"]
    return count


def wait_exit(node: NodeProcess, timeout_s: float) -> int:
    try:
        return node.process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the node did not exit within {timeout_s} s:\n{node.log()}")


@pytest.mark.parametrize(
    ("first", "whole_group"),
    [(signal.SIGTERM, False), (signal.SIGINT, False), (signal.SIGTERM, True)],
    ids=["SIGTERM", "SIGINT", "SIGTERM-to-the-group"],
)
def test_first_signal_drains_in_flight_calls_then_exits_0(
    start_node: StartNode, tmp_path: Path, first: signal.Signals, whole_group: bool
) -> None:
    """Service managers (systemd's default) signal every process of the group at once:
    zygotes and workers must leave the drain to the gateway."""
    node = start_with_pools(start_node, tmp_path)
    thread, outcome = call_in_background(node, ms=1500)

    if whole_group:
        os.killpg(node.pgid, first)
    else:
        node.signal(first)
    code = wait_exit(node, timeout_s=10 + 5)  # --grace-s 10, and a margin for the cleanup
    thread.join(10)

    assert code == 0, node.log()
    [response] = outcome
    assert isinstance(response, httpx.Response), response
    assert response.status_code == 200
    assert response.json()["slept_ms"] == 1500
    assert group_members(node.pgid) == []


def test_second_signal_forces_the_exit_during_the_drain(
    start_node: StartNode, tmp_path: Path
) -> None:
    node = start_with_pools(start_node, tmp_path)
    thread, outcome = call_in_background(node, ms=20_000)

    node.signal(signal.SIGTERM)
    wait_for(lambda: "Shutting down" in node.log(), what="the drain to begin")
    time.sleep(0.2)
    assert node.process.poll() is None, "the first SIGTERM should wait for the slow call"
    node.signal(signal.SIGTERM)
    wait_exit(node, timeout_s=8)  # far less than the 20 s the call would still take
    thread.join(10)

    [result] = outcome
    assert not (isinstance(result, httpx.Response) and result.status_code == 200), result
    assert group_members(node.pgid) == []


def test_sigkill_to_the_gateway_alone_takes_zygotes_and_workers_with_it(
    start_node: StartNode, tmp_path: Path
) -> None:
    node = start_with_pools(start_node, tmp_path)
    thread, _ = call_in_background(node, ms=20_000)

    node.signal(signal.SIGKILL)  # the gateway process only, not its group
    wait_exit(node, timeout_s=5)
    wait_for(lambda: group_members(node.pgid) == [], 5, what="no zygote or worker left")
    thread.join(10)
    assert not thread.is_alive()


def test_call_cut_off_by_the_end_of_the_grace_period_gets_a_json_503(
    start_node: StartNode, tmp_path: Path
) -> None:
    node = start_node(write_manifest(tmp_path, MANIFEST), "--grace-s", "1")
    thread, outcome = call_in_background(node, ms=20_000)

    node.signal(signal.SIGTERM)
    thread.join(1 + 5)  # the call is cut off when the 1 s grace period ends
    [response] = outcome
    assert isinstance(response, httpx.Response), response
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "unavailable"
    assert response.headers.get("x-call-id")
    assert response.headers.get("x-served-by") == "local"

    # the grace period, the pool's stop timeout for busy workers, and a margin
    assert wait_exit(node, timeout_s=1 + 3 + 5) == 0
    assert group_members(node.pgid) == []
