"""The zygote process: imports one function's handler module once, then forks a warm worker
each time the gateway asks for one.

Run as ``python -m runtime.zygote CONTROL_FD GATEWAY_PID``. The control socket is a
``SOCK_SEQPACKET`` Unix socket carrying one JSON message per packet:

gateway → zygote
    ``{"cmd": "load", "spec": {...}, "sandbox": {...} | null}`` first, then
    ``{"cmd": "spawn", "token": n}`` with the worker's end of a fresh socket pair attached
    (``SCM_RIGHTS``), or ``{"cmd": "stop"}``.
zygote → gateway
    ``{"event": "loaded", "is_async": bool, "vm_mib": n}`` or
    ``{"event": "load_failed", "message": str, "trace": str}``;
    ``{"event": "spawned", "token": n, "pid": p}`` (in a sandbox, with a pidfd of the worker
    attached: ``p`` is its pid in the sandbox's namespace, the pidfd tells the node its
    own); ``{"event": "spawn_failed", "token": n, "message": str}`` when a fork fails (the
    process cap); ``{"event": "exited", "pid": p, "status": wait_status}`` for every worker that
    ends.

With a sandbox plan, the zygote first builds its sandbox around itself
(:func:`runtime.sandbox.steps.enter`): the process the gateway started stays outside as its
keeper, and the zygote proper — PID 1 of its own namespace, as the function's uid — imports
the handler and forks every worker inside.

The zygote and its workers ignore SIGINT and SIGTERM (a Ctrl-C in the terminal, or a
service manager signalling the whole group, is for the gateway: it drains, then stops them).
The zygote dies with the gateway, its workers die with it, and as a subreaper it adopts and
finally kills whatever processes the handlers leave behind.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import select
import signal
import socket
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

from registry.specs import FunctionSpec
from runtime import exits, worker
from runtime.defaults import CONTROL_PACKET_BYTES, STOP_TIMEOUT_S
from runtime.lifeline import become_subreaper, die_with_parent
from runtime.loader import LoadedFunction, LoadError, load_function
from runtime.sandbox import steps
from runtime.sandbox.plan import FUNCTION_ROOT, SandboxPlan

# Address space the runtime needs on top of what the loaded module maps, for a worker to run.
WORKER_HEADROOM_MIB = 16


class Zygote:
    """One function's template process: owns the control socket and the forked workers."""

    def __init__(self, control: socket.socket) -> None:
        self.control = control
        self.children: set[int] = set()
        self.plan: SandboxPlan | None = None
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)

    def send(self, message: dict[str, Any]) -> None:
        self.control.send(json.dumps(message).encode())

    def load(self) -> tuple[FunctionSpec, LoadedFunction] | None:
        """Receive the spec and import the handler; report the outcome to the gateway."""
        packet = self.control.recv(CONTROL_PACKET_BYTES)
        if not packet:
            return None
        message = json.loads(packet)
        spec = FunctionSpec.from_dict(message["spec"])
        if message.get("sandbox") is not None:
            self.plan = SandboxPlan.from_dict(message["sandbox"])
            try:
                steps.enter(self.plan, self.control.close)
            except steps.SandboxFailed as exc:
                self.send({"event": "load_failed", "message": str(exc), "trace": ""})
                return None
            spec = spec.relocated(Path(FUNCTION_ROOT))
        os.environ.update(spec.env)
        os.chdir(spec.root)
        try:
            loaded = load_function(spec)
        except LoadError as exc:
            self.send({"event": "load_failed", "message": exc.message, "trace": exc.trace})
            return None
        by_cgroup = self.plan is not None and self.plan.await_start
        vm_mib = _memory_mib("VmRSS:" if by_cgroup else "VmSize:")
        if vm_mib + WORKER_HEADROOM_MIB > spec.memory_mb:
            need = vm_mib + WORKER_HEADROOM_MIB
            what = "memory" if by_cgroup else "address space"
            message = (
                f"memory_mb={spec.memory_mb} is below the {vm_mib} MiB of {what} "
                f"the loaded function already uses; raise memory_mb to at least {need}"
            )
            self.send({"event": "load_failed", "message": message, "trace": ""})
            return None
        self.send({"event": "loaded", "is_async": loaded.is_async, "vm_mib": vm_mib})
        return spec, loaded

    def serve(self, spec: FunctionSpec, loaded: LoadedFunction) -> None:
        """Fork workers on request until told to stop or the gateway goes away."""
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        gc.freeze()  # keep the imported objects' pages shared with the workers
        while True:
            control = self.control.fileno()
            readable, _, _ = select.select([control, self.wake_r], [], [])
            if self.wake_r in readable:
                os.read(self.wake_r, 4096)
                self.reap()
            if control in readable and not self.handle_command(spec, loaded):
                return

    def handle_command(self, spec: FunctionSpec, loaded: LoadedFunction) -> bool:
        """Act on one control packet; False when the zygote should stop."""
        packet, fds, _, _ = socket.recv_fds(self.control, CONTROL_PACKET_BYTES, 1)
        if not packet:
            return False
        message = json.loads(packet)
        if message["cmd"] == "spawn" and fds:
            self.spawn(spec, loaded, fds[0], int(message["token"]))
            return True
        for fd in fds:
            os.close(fd)
        return bool(message["cmd"] != "stop")

    def spawn(self, spec: FunctionSpec, loaded: LoadedFunction, fd: int, token: int) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        parent = os.getpid()
        try:
            pid = os.fork()
        except OSError as exc:  # the process cap (sandbox.pids), or the machine's
            os.close(fd)
            reason = f"fork failed: {exc.strerror or exc}"
            self.send({"event": "spawn_failed", "token": token, "message": reason})
            return
        if pid == 0:
            self._become_worker()
            by_cgroup = self.plan is not None and self.plan.await_start
            worker.run(socket.socket(fileno=fd), spec, loaded, parent, placed=by_cgroup)
        os.close(fd)
        self.children.add(pid)
        message = json.dumps({"event": "spawned", "token": token, "pid": pid}).encode()
        if self.plan is None:
            self.control.send(message)
            return
        pidfd = os.pidfd_open(pid)  # the node learns the worker's pid in its own namespace
        try:
            socket.send_fds(self.control, [message], [pidfd])
        finally:
            os.close(pidfd)

    def _become_worker(self) -> None:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        self.control.close()
        os.close(self.wake_r)
        os.close(self.wake_w)

    def reap(self) -> None:
        """Collect every ended child: report workers; adopted orphans (processes a handler
        started and left behind) are only reaped."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid in self.children:
                self.children.discard(pid)
                with contextlib.suppress(OSError):  # the gateway may be gone; keep reaping
                    self.send({"event": "exited", "pid": pid, "status": status})

    def stop_children(self) -> None:
        """Workers exit when the gateway closes their sockets; SIGKILL those that linger and
        every process a handler left behind (the zygote adopted them as subreaper)."""
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while self.children and time.monotonic() < deadline:
            self.reap()
            time.sleep(0.01)
        for _ in range(10):  # killing a worker can orphan more of its descendants
            left = self.children | _direct_children()
            if not left:
                return
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                while True:
                    pid, _ = os.waitpid(-1, 0)
                    self.children.discard(pid)


def _direct_children() -> set[int]:
    """This process's children, from /proc (including adopted orphans)."""
    found: set[int] = set()
    with contextlib.suppress(OSError):
        for task in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{task}/children", encoding="ascii") as children:
                found.update(int(pid) for pid in children.read().split())
    return found


def _ignore_signal(signum: int, frame: FrameType | None) -> None:
    """SIGINT and SIGTERM are for the gateway, which drains and then stops the pools. A
    handler rather than SIG_IGN, so that programs a function starts get the default back."""


def _memory_mib(field: str) -> int:
    """``VmSize:`` (address space, what RLIMIT_AS limits) or ``VmRSS:`` (resident memory,
    what a cgroup limits) of this process, in MiB."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1]) // 1024
    return 0


def main(argv: list[str]) -> int:
    control_fd, gateway_pid = int(argv[0]), int(argv[1])
    die_with_parent(gateway_pid)
    become_subreaper()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _ignore_signal)
    zygote = Zygote(socket.socket(fileno=control_fd))
    loaded = zygote.load()
    if loaded is None:
        return exits.EXIT_LOAD_FAILED
    try:
        zygote.serve(*loaded)
    finally:
        zygote.stop_children()
    return exits.EXIT_OK


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
