"""A local mesh for the benchmarks: ``edgefaas mesh up`` in a temporary folder, the folder
itself, and the machine it runs on.

The mesh runs in a process group of its own, started by :func:`local_mesh` and ended by the
group when the ``with`` block ends, however it ends (Ctrl-C, an error): SIGTERM first (mesh
up stops its nodes, each drains, then its Redis), SIGKILL if it lingers, and then any process
still running from the temporary folder is ended by pid.
"""

from __future__ import annotations

import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 45.0


@dataclass(frozen=True)
class Mesh:
    """A running local mesh: its nodes (edge-1 .. edge-N, then ``cloud``) and its folder,
    which holds the admin token, the keys and each node's log."""

    names: list[str]
    urls: list[str]
    dir: Path

    def url(self, name: str) -> str:
        return self.urls[self.names.index(name)]

    def admin_token(self) -> str:
        return (self.dir / "admin-token").read_text().strip()

    def logs(self) -> str:
        return ", ".join(str(self.dir / f"{name}.log") for name in self.names)


@dataclass
class Workdir:
    """A benchmark's temporary folder. It is kept (and its path printed) unless the run sets
    ``keep`` to False: a run that fails or is interrupted leaves its logs behind."""

    path: Path
    keep: bool = True


@contextmanager
def workdir(prefix: str) -> Iterator[Workdir]:
    work = Workdir(Path(tempfile.mkdtemp(prefix=prefix)))
    try:
        yield work
    finally:
        if work.keep:
            print(f"\nlogs and data kept in {work.path}", file=sys.stderr)
        else:
            shutil.rmtree(work.path, ignore_errors=True)


def consecutive_ports(count: int) -> int:
    """A base port such that base .. base+count-1 are all free on 127.0.0.1."""
    for _ in range(200):
        base = random.randint(20_000, 60_000 - count)
        sockets = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                sockets.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise SystemExit(f"no {count} consecutive free ports found on 127.0.0.1")


@contextmanager
def local_mesh(
    workdir: Path,
    count: int,
    *,
    cloud: bool = False,
    manifest: Path | None = None,
    settings: dict[str, str] | None = None,
) -> Iterator[Mesh]:
    """``edgefaas mesh up`` with ``count`` edge nodes (and a ``--role cloud`` node after
    them when ``cloud``); the first edge node publishes ``manifest``. ``settings`` are
    ``EDGEFAAS_*`` variables every node gets; the caller's own are not passed on. Yields once
    every node answers ``/readyz``."""
    mesh_dir = workdir / "mesh"
    names = [f"edge-{i + 1}" for i in range(count)] + (["cloud"] if cloud else [])
    base = consecutive_ports(len(names))
    command = [sys.executable, "-m", "gateway.cli.main", "mesh", "up", "--nodes", str(count)]
    command += ["--base-port", str(base), "--dir", str(mesh_dir)]
    command += ["--cloud"] if cloud else []
    command += ["--manifest", str(manifest)] if manifest is not None else []
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFAAS_")}
    env.update(settings or {})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    mesh = Mesh(names, [f"http://127.0.0.1:{base + i}" for i in range(len(names))], mesh_dir)
    log = workdir / "mesh-up.log"
    with open(log, "wb") as out:
        # cwd: the temporary folder, so that mesh up finds no functions.yaml of its own
        proc = subprocess.Popen(
            command, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        _until_ready(proc, mesh, log)
        yield mesh
    finally:
        _end_group(proc)
        _end_leftovers(workdir)


def _until_ready(proc: subprocess.Popen[bytes], mesh: Mesh, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    for name, url in zip(mesh.names, mesh.urls, strict=True):
        while True:
            if proc.poll() is not None:
                raise SystemExit(
                    f"edgefaas mesh up exited ({proc.returncode}) before node {name} was "
                    f"ready; see {log} and {mesh.logs()}"
                )
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"node {name} ({url}) was not ready within {START_TIMEOUT_S:g} s; "
                    f"see {log} and {mesh.logs()}"
                )
            time.sleep(0.1)


def _end_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the group (mesh up stops its nodes, then its Redis); SIGKILL if it lingers."""
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    with suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=STOP_TIMEOUT_S)
    while time.monotonic() < deadline:  # the nodes and their workers, after mesh up
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        print(f"the mesh did not stop within {STOP_TIMEOUT_S:g} s; killing it", file=sys.stderr)
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.wait(timeout=10)


def _end_leftovers(workdir: Path) -> None:
    """Processes still running from the temporary folder (e.g. the embedded redis-server,
    which runs in a session of its own): end them by pid."""
    mark = str(workdir).encode()
    leftovers = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if mark in (entry / "cmdline").read_bytes():
                leftovers.append(int(entry.name))
        except OSError:
            continue
    for pid in leftovers:
        print(f"process {pid} outlived the mesh; ending it", file=sys.stderr)
        try:
            os.kill(pid, signal.SIGTERM)
            time.sleep(1)
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{date.today()}, {os.cpu_count()} CPUs ({cpu}), Python {platform.python_version()}"
