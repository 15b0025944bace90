"""Sandboxes, from the outside: a hostile function (``tests/fixtures/hostile.py``) tries to
get out, on a node that sandboxes its functions and on a control node started with
``--sandbox off``. Every escape is first shown to work on the control node — a check that
cannot fail proves nothing — and then to fail in the sandbox.

The nodes are shared by the module's tests (starting one takes a second or two). Two more
nodes run as an unprivileged user, to see what ``--sandbox strict`` and ``auto`` do on a node
that cannot sandbox.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import REPO, NodeProcess, free_port, up_command, wait_for
from tests.integration.test_node import pool

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.geteuid() != 0,
        reason="sandboxes need a node running as root (uids, mounts, cgroups); run as root",
    ),
]

NOBODY = 65534
TASK_DATA = b"the function's own file, readable at /var/task\n"
TASK_HANDLER = "from tests.fixtures.hostile import init, probe\n\n__all__ = ['init', 'probe']\n"

MANIFEST = """\
version: 1
defaults:
  timeout_s: 10
  pool: {min: 1, max: 2}
functions:
  probe:
    handler: tests.fixtures.hostile:probe
    sandbox: {tmp_mb: 8}
  task:
    handler: task/handler.py:probe
  echo:
    handler: tests.fixtures.handlers:echo
  offline:
    handler: tests.fixtures.hostile:probe
    sandbox: {network: none}
  tight:
    handler: tests.fixtures.hostile:probe
    memory_mb: 100
    timeout_s: 8
    pool: {min: 2, max: 2}
    sandbox: {pids: 32}
"""
SANDBOXED_FUNCTIONS = ("probe", "task", "echo", "offline", "tight")
PROBE_MAX_WORKERS = 2  # pool.max of ``probe``, from the defaults


# ------------------------------------------------------------------------------- nodes


def launch(
    folder: Path,
    name: str,
    manifest: Path,
    *args: str,
    prefix: tuple[str, ...] = (),
    pythonpath: tuple[Path, ...] = (),
) -> NodeProcess:
    """Start ``edgefaas up`` (as conftest's ``start_node`` does) without waiting for it. The
    admin token is left to the node, which keeps it in ``DATA_DIR/admin-token``."""
    port = free_port()
    data_dir = folder / f"{name}-data"
    log_path = folder / f"{name}.log"
    command = [*prefix, *up_command(port, data_dir, name), "--manifest", str(manifest), *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFAAS_")}
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in (REPO, *pythonpath))
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            command,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
            start_new_session=True,
        )
    return NodeProcess(process, f"http://127.0.0.1:{port}", data_dir, log_path, token="")


def wait_up(node: NodeProcess, ready: bool, timeout_s: float = 40.0) -> None:
    """Wait for /healthz (and /readyz 200 when ``ready``); then read the admin token."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if node.process.poll() is not None:
            pytest.fail(f"node exited with {node.process.returncode}:\n{node.log()}")
        with contextlib.suppress(httpx.HTTPError):
            path = "/readyz" if ready else "/healthz"
            response = httpx.get(node.url + path, timeout=2)
            if response.status_code == 200 or not ready:
                node.token = (node.data_dir / "admin-token").read_text().strip()
                return
        time.sleep(0.1)
    pytest.fail(f"node did not come up within {timeout_s} s:\n{node.log()}")


def stop(node: NodeProcess) -> None:
    """SIGTERM, so that the node removes its cgroups; then its whole process group is
    killed, whatever happened."""
    if node.process.poll() is None:
        node.signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            node.process.wait(timeout=10)
    node.kill_group()


@pytest.fixture(scope="module")
def started() -> Iterator[list[NodeProcess]]:
    """Every node the module starts; each is stopped at the end."""
    nodes: list[NodeProcess] = []
    yield nodes
    for node in nodes:
        stop(node)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The manifest's folder, apart from the nodes' data dirs: the module functions, and
    ``task``, a file handler with a file of its own."""
    folder = tmp_path_factory.mktemp("project")
    (folder / "task").mkdir()
    (folder / "task" / "handler.py").write_text(TASK_HANDLER)
    (folder / "task" / "data.txt").write_bytes(TASK_DATA)
    (folder / "functions.yaml").write_text(MANIFEST)
    return folder


@dataclass
class Nodes:
    sandboxed: NodeProcess
    control: NodeProcess


@pytest.fixture(scope="module")
def nodes(
    project: Path, tmp_path_factory: pytest.TempPathFactory, started: list[NodeProcess]
) -> Nodes:
    """The same manifest on a sandboxing node and on a control node (``--sandbox off``)."""
    folder = tmp_path_factory.mktemp("nodes")
    manifest = project / "functions.yaml"
    sandboxed = launch(folder, "boxed", manifest, "--sandbox", "strict")
    control = launch(folder, "control", manifest, "--sandbox", "off")
    started += [sandboxed, control]
    wait_up(sandboxed, ready=True)
    wait_up(control, ready=True)
    return Nodes(sandboxed, control)


@pytest.fixture
def boxed(nodes: Nodes) -> NodeProcess:
    return nodes.sandboxed


@pytest.fixture
def control(nodes: Nodes) -> NodeProcess:
    return nodes.control


# ------------------------------------------------------------------------------- helpers


def call(node: NodeProcess, function: str, timeout_s: float = 20, **query: Any) -> httpx.Response:
    return httpx.get(f"{node.url}/function/{function}", params=query, timeout=timeout_s)


def probe(node: NodeProcess, function: str, do: str, **query: Any) -> dict[str, Any]:
    """Run one probe of the hostile function; it must answer 200."""
    response = call(node, function, do=do, **query)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def metric(text: str, name: str, function: str) -> float | None:
    """The value of ``name{function="..."}`` in a Prometheus text page (None: no line)."""
    pattern = rf'^{re.escape(name)}\{{function="{re.escape(function)}"\}} (\S+)$'
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else None


def metrics(node: NodeProcess) -> str:
    response = httpx.get(f"{node.url}/metrics", timeout=10)
    assert response.status_code == 200
    return response.text


def port_of(node: NodeProcess) -> int:
    port = urlsplit(node.url).port
    assert port is not None
    return port


def unpacked_folder(node: NodeProcess, function: str) -> Path:
    """Where the node unpacked the function's bundle (its folder on the node)."""
    for document in (node.data_dir / "bundles" / "unpacked").glob("*/function.json"):
        if f'"name":"{function}"' in document.read_text().replace(" ", ""):
            return document.parent / "files"
    raise AssertionError(f"no unpacked bundle of {function} in {node.data_dir}")


def ready_workers(node: NodeProcess, name: str, count: int) -> list[int]:
    """Wait until the pool has ``count`` ready workers; their pids."""
    seen: dict[str, Any] = {}

    def enough() -> bool:
        seen.update(pool(node, name))
        return bool(seen["workers"]["ready"] >= count and len(seen["worker_pids"]) >= count)

    wait_for(enough, timeout_s=10, what=f"{count} ready workers of {name}")
    return list(seen["worker_pids"])


# ------------------------------------------------------------------------------- identity


def test_functions_run_as_their_own_uid_without_capabilities(
    boxed: NodeProcess, control: NodeProcess
) -> None:
    node_uid = os.stat(f"/proc/{boxed.process.pid}").st_uid
    unboxed = probe(control, "probe", "whoami")
    assert (unboxed["uid"], unboxed["gid"]) == (0, 0)  # the control runs functions as root
    assert unboxed["cap_eff"] != 0
    assert unboxed["seccomp"] == 0

    seen = probe(boxed, "probe", "whoami")
    for key in ("uid", "euid", "gid", "egid"):
        assert seen[key] not in (0, node_uid), seen
    assert seen["uid"] == seen["euid"]
    assert seen["gid"] == seen["egid"]
    assert seen["groups"] in ([], [seen["gid"]])
    assert seen["cap_eff"] == 0
    assert seen["cap_prm"] == 0
    assert seen["cap_bnd"] == 0
    assert seen["no_new_privs"] == 1
    assert seen["seccomp"] == 2  # a filter
    assert seen["hostname"] == "probe"  # a UTS namespace of its own
    assert seen["edgefaas_env"] == []

    other = probe(boxed, "offline", "whoami")
    assert other["uid"] not in (0, node_uid, seen["uid"])  # one uid per function
    assert pool(boxed, "probe")["sandbox"]["uid"] == seen["uid"]


# ------------------------------------------------------------------------------- files


def test_the_node_s_keys_and_data_dir_cannot_be_read(
    boxed: NodeProcess, control: NodeProcess
) -> None:
    for node in (boxed, control):
        for name in ("admin-token", "mesh-key", "signing.key"):
            assert (node.data_dir / name).is_file()
    secrets = ["admin-token", "mesh-key", "signing.key", "redis/redis.sock"]

    for name in secrets[:3]:
        path = control.data_dir / name
        seen = probe(control, "probe", "read", path=str(path))
        assert seen["ok"], seen
        assert seen["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert probe(control, "probe", "read", path=str(control.data_dir))["exists"]
    other = unpacked_folder(control, "task") / "data.txt"
    assert probe(control, "probe", "read", path=str(other))["ok"]
    # a world-readable file of the node's checkout outside its packages
    assert probe(control, "probe", "read", path=str(REPO / "pyproject.toml"))["ok"]

    for name in secrets:
        seen = probe(boxed, "probe", "read", path=str(boxed.data_dir / name))
        assert (seen["ok"], seen["exists"], seen["error"]) == (False, False, "ENOENT"), seen
    for path in (
        boxed.data_dir,
        boxed.data_dir.parent,
        unpacked_folder(boxed, "task") / "data.txt",  # another function's folder
        REPO / "pyproject.toml",
    ):
        seen = probe(boxed, "probe", "read", path=str(path))
        assert (seen["ok"], seen["exists"]) == (False, False), seen
    listed = probe(boxed, "probe", "listdir", path="/var/task")
    assert listed == {"ok": True, "entries": []}  # a module function: an empty folder


def test_only_tmp_is_writable_and_the_function_s_folder_is_var_task(
    boxed: NodeProcess, control: NodeProcess
) -> None:
    mark = f"edgefaas-escape-{uuid.uuid4().hex[:12]}"
    control_root = probe(control, "probe", "whoami")["root"]
    for folder in ("/usr/local", "/etc", control_root, "/tmp"):
        seen = probe(control, "probe", "write", path=f"{folder}/{mark}")
        assert seen["ok"], seen
        assert not os.path.exists(f"{folder}/{mark}")

    for folder in ("/usr/local", "/etc", "/var/task", "/usr/lib", "/"):
        seen = probe(boxed, "probe", "write", path=f"{folder.rstrip('/')}/{mark}")
        assert (seen["ok"], seen["error"]) == (False, "EROFS"), seen
    for folder in ("/tmp", "/dev/shm"):
        seen = probe(boxed, "probe", "write", path=f"{folder}/{mark}")
        assert seen["ok"], seen

    seen = probe(boxed, "task", "whoami")
    assert (seen["home"], seen["cwd"], seen["root"]) == ("/tmp", "/var/task", "/var/task")
    listed = probe(boxed, "task", "listdir", path="/var/task")
    assert {"handler.py", "data.txt"} <= set(listed["entries"]), listed
    data = probe(boxed, "task", "read", path="/var/task/data.txt")
    assert data["ok"], data
    assert data["sha256"] == hashlib.sha256(TASK_DATA).hexdigest()

    unboxed = probe(control, "task", "whoami")
    assert unboxed["cwd"] == unboxed["root"] != "/var/task"
    assert unboxed["home"] != "/tmp"


def test_tmp_is_capped_at_tmp_mb_and_the_function_keeps_serving(
    boxed: NodeProcess, control: NodeProcess
) -> None:
    unboxed = call(control, "probe", do="fill_tmp", mb=16)
    assert unboxed.status_code == 200, unboxed.text
    assert unboxed.json()["written_mb"] == 16

    full = call(boxed, "probe", do="fill_tmp", mb=16)  # tmp_mb is 8
    assert full.status_code == 507, full.text
    seen = full.json()
    assert seen["error"] == "ENOSPC"
    assert seen["dir"] == "/tmp"
    assert seen["written_mb"] <= 8

    after = call(boxed, "probe", do="fill_tmp", mb=4)
    assert after.status_code == 200, after.text
    assert after.json()["written_mb"] == 4


# ------------------------------------------------------------------------------- processes


def test_only_the_function_s_own_processes_are_visible(
    boxed: NodeProcess, control: NodeProcess
) -> None:
    needle = "gateway.cli.main"
    unboxed = probe(control, "probe", "procs", needle=needle)
    assert unboxed["needle_seen"]
    assert control.process.pid in unboxed["pids"]

    seen = probe(boxed, "probe", "procs", needle=needle)
    assert not seen["needle_seen"], seen
    assert 1 in seen["pids"]
    assert "runtime.zygote" in seen["pid_1"]  # PID 1 is the function's own zygote
    assert seen["count"] <= 1 + PROBE_MAX_WORKERS, seen  # the zygote and its workers
    assert unboxed["count"] > seen["count"]


def test_the_node_cannot_be_signalled(boxed: NodeProcess, control: NodeProcess) -> None:
    assert probe(control, "probe", "kill", pid=control.process.pid) == {"ok": True}

    seen = probe(boxed, "probe", "kill", pid=boxed.process.pid)
    assert seen["ok"] is False
    assert seen["error"] in ("ESRCH", "EPERM"), seen
    assert boxed.process.poll() is None


# ------------------------------------------------------------------------------- network


def test_network_none_reaches_nothing_but_its_own_loopback(
    boxed: NodeProcess, control: NodeProcess
) -> None:
    redis_control = str(control.data_dir / "redis" / "redis.sock")
    assert probe(control, "offline", "connect", port=port_of(control)) == {"ok": True}
    assert probe(control, "offline", "connect", unix=redis_control) == {"ok": True}
    assert probe(boxed, "probe", "connect", port=port_of(boxed)) == {"ok": True}  # host

    redis_boxed = str(boxed.data_dir / "redis" / "redis.sock")
    refused = probe(boxed, "offline", "connect", port=port_of(boxed))
    assert refused["ok"] is False
    assert refused["error"] == "ECONNREFUSED", refused  # its loopback is up, and empty
    assert probe(boxed, "offline", "interfaces")["names"] == ["lo"]
    assert len(probe(boxed, "probe", "interfaces")["names"]) > 1
    for function in ("offline", "probe"):
        seen = probe(boxed, function, "connect", unix=redis_boxed)
        assert (seen["ok"], seen["error"]) == (False, "ENOENT"), seen


def test_a_fork_bomb_hits_the_pids_cap_while_other_functions_keep_serving(
    boxed: NodeProcess, control: NodeProcess
) -> None:
    unboxed = probe(control, "tight", "fork_bomb", max=64, seconds=3)
    assert (unboxed["forks"], unboxed["error"]) == (64, None), unboxed

    bomb: list[httpx.Response] = []
    thread = threading.Thread(
        target=lambda: bomb.append(
            call(boxed, "tight", do="fork_bomb", max=64, seconds=2, hold_s=5)
        ),
        daemon=True,
    )
    thread.start()
    echoes: list[httpx.Response] = []
    while thread.is_alive() and len(echoes) < 500:
        echoes.append(httpx.post(f"{boxed.url}/function/echo", content=b"alive", timeout=5))
        time.sleep(0.02)
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert echoes, "the bomb was over before echo could be called"
    assert all(r.status_code == 200 and r.content == b"alive" for r in echoes)

    assert bomb[0].status_code == 200, bomb[0].text
    seen = bomb[0].json()
    assert seen["forks"] < 32, seen  # sandbox.pids: 32, for the whole function
    assert seen["failures"] > 0
    assert seen["error"] == "EAGAIN"

    after = httpx.post(f"{boxed.url}/function/echo", content=b"after", timeout=5)
    assert (after.status_code, after.content) == (200, b"after")
    assert probe(boxed, "tight", "whoami")["uid"] != 0  # the bomb's function serves again


def test_a_worker_over_memory_mb_is_killed_alone(boxed: NodeProcess, control: NodeProcess) -> None:
    before = ready_workers(boxed, "tight", 2)
    response = call(boxed, "tight", do="hog", mb=300)
    assert response.status_code == 502, response.text
    message = response.json()["error"]["message"]
    assert "ran out of memory" in message
    assert "memory_mb limit of 100 MiB" in message

    after = ready_workers(boxed, "tight", 2)
    assert len(set(before) & set(after)) == 1  # its sibling lives on
    assert probe(boxed, "tight", "whoami")["uid"] != 0
    assert probe(boxed, "tight", "hog", mb=8) == {"allocated_mb": 8}

    oom_kills = metric(metrics(boxed), "edgefaas_function_oom_kills_total", "tight")
    assert oom_kills is not None
    assert oom_kills >= 1
    assert pool(boxed, "tight")["sandbox"]["oom_kills"] >= 1


# ------------------------------------------------------------------------------- seccomp


def test_seccomp_denies_namespaces_mounts_and_ptrace(
    boxed: NodeProcess, control: NodeProcess
) -> None:
    assert probe(control, "probe", "unshare") == {"error": None}
    assert probe(control, "probe", "mount") == {"unshare": None, "private": None, "mount": None}
    assert probe(control, "probe", "ptrace") == {"error": None}

    assert probe(boxed, "probe", "unshare") == {"error": "EPERM"}
    assert probe(boxed, "probe", "unshare", flags=0x10000000) == {"error": "EPERM"}  # user ns
    seen = probe(boxed, "probe", "mount")
    assert (seen["unshare"], seen["mount"]) == ("EPERM", "EPERM"), seen
    assert probe(boxed, "probe", "ptrace") == {"error": "EPERM"}


# ------------------------------------------------------------------------------- reports


def test_pools_and_metrics_report_each_sandbox(boxed: NodeProcess, control: NodeProcess) -> None:
    assert pool(control, "probe")["sandbox"] is None
    text = metrics(control)
    assert metric(text, "edgefaas_function_memory_bytes", "probe") is None

    uid = probe(boxed, "probe", "whoami")["uid"]
    sandbox = pool(boxed, "probe")["sandbox"]
    assert sandbox["uid"] == uid
    assert sandbox["memory_bytes"] > 0
    assert (sandbox["network"], sandbox["tmp_mb"]) == ("host", 8)
    assert pool(boxed, "offline")["sandbox"]["network"] == "none"
    assert pool(boxed, "tight")["sandbox"]["pids"] == 32

    text = metrics(boxed)
    for function in SANDBOXED_FUNCTIONS:
        memory = metric(text, "edgefaas_function_memory_bytes", function)
        cpu = metric(text, "edgefaas_function_cpu_seconds_total", function)
        assert memory is not None, function
        assert memory > 0
        assert cpu is not None, function
        assert cpu > 0
    ready = httpx.get(f"{boxed.url}/readyz", timeout=5).json()["sandbox"]
    assert (ready["active"], ready["mode"], ready["warning"]) == (True, "strict", None)


# ------------------------------------------------------------------------------- no root


@dataclass
class Unprivileged:
    strict: NodeProcess
    auto: NodeProcess


def _blocked_ancestor(path: Path) -> Path | None:
    """The first folder above ``path`` that others may not enter (e.g. /root, mode 0700)."""
    for parent in reversed(path.parents):
        if parent != Path("/") and not os.stat(parent).st_mode & 0o001:
            return parent
    return None


def unprivileged_prefix() -> tuple[str, ...]:
    """A command prefix that runs a program as ``nobody`` with this same Python. When the
    interpreter lies below a folder ``nobody`` cannot enter (pyenv under /root, 0700), a
    mount namespace of the program's own shows only the interpreter's folder there."""
    for tool in ("unshare", "setpriv", "mount"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed: cannot start a node as an unprivileged user")
    drop = ("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--")
    needed = [Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve(), REPO]
    blocked = {b for b in map(_blocked_ancestor, needed) if b is not None}
    if not blocked:
        return drop
    if len(blocked) > 1:
        pytest.skip(f"the interpreter and checkout lie below several closed folders: {blocked}")
    top = blocked.pop()
    children = sorted({p.relative_to(top).parts[0] for p in needed if p.is_relative_to(top)})
    script = ["set -e", 'stage="$(mktemp -d)"']
    for child in children:
        source, staged = shlex.quote(str(top / child)), f'"$stage"/{shlex.quote(child)}'
        script.append(f"mkdir {staged} && mount --bind {source} {staged}")
    script.append(f"mount -t tmpfs -o mode=0755 edgefaas-test {shlex.quote(str(top))}")
    for child in children:
        target, staged = shlex.quote(str(top / child)), f'"$stage"/{shlex.quote(child)}'
        script.append(f"mkdir {target} && mount --move {staged} {target} && rmdir {staged}")
    script.append('rmdir "$stage"')
    script.append('exec "$@"')
    isolate = ("unshare", "--mount", "--propagation", "private")
    return (*isolate, "sh", "-c", "\n".join(script), "sh", *drop)


@pytest.fixture(scope="module")
def unprivileged(started: list[NodeProcess]) -> Iterator[Unprivileged]:
    """Two nodes run by ``nobody`` (who cannot sandbox): ``--sandbox strict`` and ``auto``,
    serving ``echo`` from a file handler in a folder ``nobody`` may read."""
    prefix = unprivileged_prefix()
    check = subprocess.run(
        [*prefix, sys.executable, "-c", "import os, gateway.cli.main; print(os.geteuid())"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        cwd=REPO,
        timeout=60,
        check=False,
    )
    if check.stdout.strip() != str(NOBODY):
        pytest.skip(
            "cannot run this Python as an unprivileged user here "
            f"({shlex.join(prefix)}): {check.stderr.strip()[-500:]}"
        )
    base = Path(tempfile.mkdtemp(prefix="edgefaas-unprivileged-", dir="/tmp"))
    try:
        base.chmod(0o755)
        os.chown(base, NOBODY, NOBODY)
        (base / "echo").mkdir()
        (base / "echo" / "handler.py").write_text("def handle(event):\n    return event.body\n")
        manifest = base / "functions.yaml"
        manifest.write_text(
            "version: 1\nfunctions:\n  echo:\n    handler: echo/handler.py:handle\n"
        )
        for path in (base / "echo", base / "echo" / "handler.py", manifest):
            path.chmod(0o755 if path.is_dir() else 0o644)
        strict = launch(base, "strict", manifest, "--sandbox", "strict", prefix=prefix)
        auto = launch(base, "auto", manifest, "--sandbox", "auto", prefix=prefix)
        started += [strict, auto]
        wait_up(strict, ready=False)
        wait_up(auto, ready=True)
        yield Unprivileged(strict, auto)
    finally:
        for node in started:
            if node.data_dir.parent == base:
                stop(node)
        shutil.rmtree(base, ignore_errors=True)


def test_strict_refuses_to_run_a_function_it_cannot_sandbox(unprivileged: Unprivileged) -> None:
    node = unprivileged.strict
    assert os.stat(f"/proc/{node.process.pid}").st_uid == NOBODY
    response = httpx.post(f"{node.url}/function/echo", content=b"hi", timeout=20)
    assert response.status_code == 503, response.text
    message = response.json()["error"]["message"]
    assert "cannot be sandboxed" in message
    assert "does not run as root" in message
    sandbox = httpx.get(f"{node.url}/readyz", timeout=5).json()["sandbox"]
    assert (sandbox["mode"], sandbox["active"]) == ("strict", False)


def test_auto_serves_unsandboxed_with_a_warning(unprivileged: Unprivileged) -> None:
    node = unprivileged.auto
    assert os.stat(f"/proc/{node.process.pid}").st_uid == NOBODY
    wait_for(lambda: "without a sandbox" in node.log(), what="the start-up warning")
    ready = httpx.get(f"{node.url}/readyz", timeout=5)
    assert ready.status_code == 200
    sandbox = ready.json()["sandbox"]
    assert (sandbox["mode"], sandbox["active"]) == ("auto", False)
    assert "without a sandbox" in sandbox["warning"]
    assert "does not run as root" in sandbox["warning"]
    response = httpx.post(f"{node.url}/function/echo", content=b"hi", timeout=20)
    assert (response.status_code, response.content) == (200, b"hi")


# ------------------------------------------------------------------------------- lifelines


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as found:
        return [int(child) for child in found.read().split()]


def test_a_killed_keeper_takes_its_zygote_and_workers_with_it(boxed: NodeProcess) -> None:
    """The process the node started (the keeper) is killed: the zygote inside, PID 1 of its
    namespace, must die with it — a uid change clears the parent-death signal, so the
    sandbox asks for it again — and with it every worker. Then the pool starts again."""
    before = pool(boxed, "echo")
    keeper = before["zygote_pid"]
    inside = [*children(keeper), *before["worker_pids"]]
    assert len(inside) >= 2  # the zygote and at least one worker
    os.kill(keeper, signal.SIGKILL)

    def all_gone() -> bool:
        return not any(Path(f"/proc/{pid}").exists() for pid in inside)

    wait_for(all_gone, timeout_s=5, what=f"the processes of echo's sandbox {inside} to end")

    def serving_again() -> bool:
        now = pool(boxed, "echo")
        return bool(now["state"] == "running" and now["zygote_pid"] != keeper)

    wait_for(serving_again, timeout_s=15, what="echo's pool to start again")
    response = httpx.post(f"{boxed.url}/function/echo", content=b"back", timeout=20)
    assert response.status_code == 200 and response.content == b"back"


def test_python_packages_in_the_node_s_tmp_are_importable(
    tmp_path_factory: pytest.TempPathFactory, started: list[NodeProcess]
) -> None:
    """A folder on the node's PYTHONPATH under /tmp (a checkout, a ``pip --target``) is
    bound into the function's own /tmp, read-only: the package imports; the rest of the
    node's /tmp stays out of sight."""
    folder = tmp_path_factory.mktemp("pythonpath")
    assert str(folder).startswith("/tmp/")
    package = folder / "sandbox_tmp_pkg"
    package.mkdir()
    (package / "__init__.py").write_text(
        "import os\n\n\ndef handle(event):\n"
        "    return {'file': __file__, 'secret': os.path.exists(os.environ['SECRET'])}\n"
    )
    secret = folder / "not-a-package.txt"
    secret.write_text("the node's\n")
    project = tmp_path_factory.mktemp("pythonpath-project")
    manifest = project / "functions.yaml"
    manifest.write_text(
        "version: 1\nfunctions:\n  mine:\n    handler: sandbox_tmp_pkg:handle\n"
        f"    env: {{SECRET: {secret}}}\n"
    )
    node = launch(project, "tmp-path", manifest, "--sandbox", "strict", pythonpath=(folder,))
    started.append(node)
    wait_up(node, ready=True)
    response = httpx.get(f"{node.url}/function/mine", timeout=20)
    assert response.status_code == 200, response.text
    assert response.json() == {"file": str(package / "__init__.py"), "secret": False}


def test_scaling_beyond_the_process_cap_keeps_the_pool_serving(boxed: NodeProcess) -> None:
    """More workers than ``sandbox.pids`` allows (tight: 32): the forks beyond the cap fail
    inside the function, and the zygote lives on (it used to die of the failed fork, and its
    pool with it) while the workers it has go on serving."""
    zygote = pool(boxed, "tight")["zygote_pid"]
    scaled = httpx.post(
        f"{boxed.url}/system/scale-function/tight",
        json={"replicas": 60},
        headers=boxed.admin_headers(),
        timeout=10,
    )
    assert scaled.status_code == 202, scaled.text
    try:
        wait_for(lambda: "no more workers for now" in boxed.log(), 10, what="a refused fork")
        time.sleep(1.5)  # a spawn pause, and more forks that fail
        state = pool(boxed, "tight")
        assert state["state"] == "running", state
        assert state["zygote_pid"] == zygote, "the zygote died"
        assert 2 <= state["workers"]["ready"] + state["workers"]["busy"] < 32, state
        assert call(boxed, "tight", do="whoami").status_code == 200
    finally:
        httpx.post(
            f"{boxed.url}/system/scale-function/tight",
            json={"min": 2, "max": 2},
            headers=boxed.admin_headers(),
            timeout=10,
        )
        wait_for(lambda: len(pool(boxed, "tight")["worker_pids"]) == 2, 15, what="2 workers")
