"""Shared fixtures: free ports, fixture manifests, and real `edgefaas up` processes.

Every node started here runs in its own process group and is killed by that group at the
end of the test, whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

pytest_plugins = ["tests.redis_fixtures"]

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"
ADMIN_TOKEN = "test-admin-token-0123456789"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def write_manifest(folder: Path, functions: str, defaults: str = "") -> Path:
    """Write ``folder/functions.yaml``. The fixture handlers live outside ``folder``, so
    refer to them as modules: ``handler: tests.fixtures.handlers:echo``."""
    text = "version: 1\n"
    if defaults:
        text += "defaults:\n" + defaults
    text += "functions:\n" + functions
    path = folder / "functions.yaml"
    path.write_text(text)
    return path


def group_members(pgid: int) -> list[int]:
    """PIDs still alive in a process group (zombies excluded)."""
    out = subprocess.run(
        ["ps", "-eo", "pid=,pgid=,stat="], capture_output=True, text=True, check=True
    ).stdout
    members = []
    for line in out.splitlines():
        pid, group, stat = line.split()[:3]
        if int(group) == pgid and not stat.startswith("Z"):
            members.append(int(pid))
    return members


@dataclass
class NodeProcess:
    """A running `edgefaas up` started by a test."""

    process: subprocess.Popen[bytes]
    url: str
    data_dir: Path
    log_path: Path
    token: str = ADMIN_TOKEN
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def pgid(self) -> int:
        return self.process.pid  # started with start_new_session=True

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)  # type: ignore[arg-type]

    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)


def cli_command() -> list[str]:
    return [sys.executable, "-c", "from gateway.cli.main import main; main()"]


def up_command(port: int, data_dir: Path, name: str) -> list[str]:
    """``edgefaas up`` on ``port`` with its own data dir and node name."""
    return [*cli_command(), "up", "--port", str(port), "--data-dir", str(data_dir), "--node", name]


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    """Factory: ``start_node(manifest, *extra_args, env={...})`` starts a node on a free port
    and waits until /readyz answers (any status) — or fails with the node's log."""
    nodes: list[NodeProcess] = []

    def start(
        manifest: Path | None,
        *args: str,
        env: dict[str, str] | None = None,
        wait_ready: bool = True,
        cwd: Path | None = None,
    ) -> NodeProcess:
        port = free_port()
        data_dir = tmp_path / f"node-{len(nodes)}"
        log_path = tmp_path / f"node-{len(nodes)}.log"
        command = up_command(port, data_dir, f"test{len(nodes)}")
        if manifest is not None:
            command += ["--manifest", str(manifest)]
        command += list(args)
        full_env = {
            **os.environ,
            "EDGEFAAS_ADMIN_TOKEN": ADMIN_TOKEN,
            "PYTHONPATH": str(REPO),
            **(env or {}),
        }
        with open(log_path, "wb") as log_file:
            process = subprocess.Popen(
                command,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=cwd or REPO,
                start_new_session=True,
            )
        node = NodeProcess(
            process, f"http://127.0.0.1:{port}", data_dir, log_path, extra_env=env or {}
        )
        nodes.append(node)
        if wait_ready:
            wait_until_up(node)
        return node

    yield start
    for node in nodes:
        node.kill_group()


def wait_until_up(node: NodeProcess, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if node.process.poll() is not None:
            pytest.fail(f"node exited with {node.process.returncode}:\n{node.log()}")
        try:
            httpx.get(node.url + "/healthz", timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    pytest.fail(f"node did not come up within {timeout_s} s:\n{node.log()}")


def wait_for(
    predicate: Callable[[], bool],
    timeout_s: float = 10.0,
    interval_s: float = 0.05,
    what: str = "condition",
) -> None:
    """Poll until ``predicate()`` is true; fail the test with ``what`` on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")
