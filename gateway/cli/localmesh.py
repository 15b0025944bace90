"""``edgefaas mesh up``: a whole mesh on this machine, for demos and tests.

One embedded Redis, one signing key and one mesh key shared by every node, N edge nodes on
consecutive loopback ports (the first publishes the manifest) and, with ``--cloud``, a node
with the cloud role after them. Ctrl-C or SIGTERM stops the nodes (each drains) and then
Redis; the nodes also die if this process is killed. A node that exits (or is killed, to
watch the others carry on) is reported, and the mesh runs on until every node is gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TextIO

import httpx

from gateway.auth import load_or_create_token
from gateway.errors import StartupFailed
from gateway.mesh.agent import load_or_create_secret
from registry.redis_server import EmbeddedRedis
from registry.signing import generate_key_pair
from runtime.lifeline import preexec_die_with

STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 40.0


@dataclass
class MemberProcess:
    name: str
    role: str
    url: str
    process: subprocess.Popen[bytes]


def run_local_mesh(
    count: int,
    cloud: bool,
    host: str,
    base_port: int,
    data_dir: Path,
    manifest: Path | None,
    out: TextIO = sys.stdout,
) -> int:
    """Start the mesh, print where everything is, and run until signalled; exit code."""
    stop = _stop_flag()
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = data_dir / "signing.key"
    if not key.exists():
        generate_key_pair(data_dir, "signing")
    env = {
        **os.environ,
        "EDGEFAAS_MESH_KEY": load_or_create_secret(data_dir / "mesh-key").decode(),
        "EDGEFAAS_ADMIN_TOKEN": load_or_create_token(data_dir),
    }
    redis = EmbeddedRedis(data_dir / "redis")
    url = redis.start()
    members: list[MemberProcess] = []
    try:
        plan = [(f"edge-{i + 1}", "edge") for i in range(count)]
        if cloud:
            plan.append(("cloud", "cloud"))
        for index, (name, role) in enumerate(plan):
            publish = manifest if index == 0 else None
            members.append(
                _start_member(name, role, host, base_port + index, url, data_dir, key, publish, env)
            )
        _wait_until_up(members, stop)
        _print_summary(members, url, data_dir, out)
        gone: set[str] = set()
        while not stop() and len(gone) < len(members):
            for member in members:  # a node that dies (or is killed, to watch the mesh
                status = member.process.poll()  # carry on without it) is reported once
                if status is not None and member.name not in gone:
                    gone.add(member.name)
                    print(f"node {member.name} exited with status {status}", file=out, flush=True)
            time.sleep(0.2)
        return 1 if len(gone) == len(members) and not stop() else 0
    finally:
        _stop_members(members)
        redis.stop()


def _stop_flag() -> Callable[[], bool]:
    received: list[int] = []

    def record(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, record)
    return lambda: bool(received)


def _start_member(
    name: str,
    role: str,
    host: str,
    port: int,
    redis_url: str,
    data_dir: Path,
    key: Path,
    manifest: Path | None,
    env: dict[str, str],
) -> MemberProcess:
    command = [
        sys.executable,
        "-m",
        "gateway.cli.main",
        "up",
        "--node",
        name,
        "--role",
        role,
        "--host",
        host,
        "--port",
        str(port),
        "--redis",
        redis_url,
        "--data-dir",
        str(data_dir / name),
        "--signing-key",
        str(key),
        "--trusted-keys",
        str(key.with_suffix(".pub")),
    ]
    if manifest is not None:
        command += ["--manifest", str(manifest)]
    home = data_dir / name
    home.mkdir(exist_ok=True, mode=0o700)
    log = open(data_dir / f"{name}.log", "ab")  # noqa: SIM115 (the child keeps it)
    process = subprocess.Popen(
        command,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=home,  # not the caller's folder: only the first node publishes a manifest
        start_new_session=True,  # a Ctrl-C or a group signal is for us; we stop each once
        preexec_fn=preexec_die_with(os.getpid()),  # noqa: PLW1509 (no dynamic loading in it)
    )
    log.close()
    return MemberProcess(name, role, f"http://{host}:{port}", process)


def _wait_until_up(members: list[MemberProcess], stop: Callable[[], bool]) -> None:
    """Until every node answers /healthz (a node whose functions fail still counts: the
    failures show in its /readyz and logs)."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    for member in members:
        while True:
            if stop():
                raise StartupFailed("interrupted while the mesh was starting")
            if member.process.poll() is not None:
                raise StartupFailed(f"node {member.name} exited at start; see its log")
            try:
                if httpx.get(member.url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise StartupFailed(f"node {member.name} did not come up in time; see its log")
            time.sleep(0.1)


def _print_summary(
    members: list[MemberProcess], redis_url: str, data_dir: Path, out: TextIO
) -> None:
    lines = [
        f"local mesh: {len(members)} node(s), Redis {redis_url}",
        f"{'NODE':<10} {'ROLE':<6} {'PID':<8} URL",
    ]
    lines += [f"{m.name:<10} {m.role:<6} {m.process.pid:<8} {m.url}" for m in members]
    lines += [
        f"admin token: {data_dir / 'admin-token'} (export EDGEFAAS_ADMIN_TOKEN=$(cat ...))",
        f"logs: {data_dir}/<node>.log — Ctrl-C stops the mesh",
    ]
    print("\n".join(lines), file=out, flush=True)


def _stop_members(members: list[MemberProcess]) -> None:
    for member in members:
        if member.process.poll() is None:
            member.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for member in members:
        try:
            member.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            member.process.kill()
            member.process.wait()
