"""The gateway's handle on one zygote process: start it, ask it to fork workers, stop it.

See :mod:`runtime.zygote` for the control messages. Messages from the zygote other than the
load report (``spawned``, ``exited``, and a synthetic ``lost`` when the zygote's socket
closes) go to the ``on_event`` callback, from the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from registry.specs import FunctionSpec
from runtime.defaults import CONTROL_PACKET_BYTES, LOAD_TIMEOUT_S, STOP_TIMEOUT_S
from runtime.errors import Unavailable
from runtime.exits import describe_exit
from runtime.sandbox.sandboxes import PoolSandbox

_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)

ZygoteEvent = dict[str, Any]


def function_environment(spec: FunctionSpec) -> dict[str, str]:
    """The environment of a function's processes: the node's, minus edgefaas' own settings
    (they hold secrets such as the admin token), plus the function's declared ``env``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFAAS_")}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (_PACKAGE_ROOT, os.environ.get("PYTHONPATH", "")) if p
    )
    env.update(spec.env)
    return env


class ZygoteLink:
    """One zygote process and its control socket."""

    def __init__(
        self,
        spec: FunctionSpec,
        on_event: Callable[[ZygoteEvent], None],
        sandbox: PoolSandbox | None = None,
    ) -> None:
        self.spec = spec
        self.on_event = on_event
        self.sandbox = sandbox
        self.process: asyncio.subprocess.Process | None = None
        self.is_async = False
        self._sock: socket.socket | None = None
        self._loaded: asyncio.Future[ZygoteEvent] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def alive(self) -> bool:
        return self._sock is not None

    async def start(self) -> None:
        """Start the zygote and wait until it has imported the handler.

        Raises :class:`Unavailable` with the function's own error if the import fails.
        """
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "runtime.zygote",
                str(theirs.fileno()),
                str(os.getpid()),
                pass_fds=[theirs.fileno()],
                env=function_environment(self.spec),
                cwd=self.spec.root,
                stdin=asyncio.subprocess.DEVNULL,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        self._sock = ours
        self._loaded = loop.create_future()
        loop.add_reader(ours.fileno(), self._on_readable)
        plan = None
        if self.sandbox is not None:
            try:  # before it loads anything: whatever it allocates is charged there
                self.sandbox.place_zygote(self.process.pid)
            except OSError as exc:
                await self.kill()
                raise Unavailable(f"its zygote could not be put in its cgroup: {exc}") from None
            plan = self.sandbox.plan.to_dict()
        load = {"cmd": "load", "spec": self.spec.to_dict(), "sandbox": plan}
        ours.send(json.dumps(load).encode())
        try:
            report = await asyncio.wait_for(asyncio.shield(self._loaded), LOAD_TIMEOUT_S)
        except TimeoutError:
            await self.kill()
            raise Unavailable(
                f"loading the handler took longer than {LOAD_TIMEOUT_S:g} s"
            ) from None
        if report["event"] != "loaded":
            await self.wait_exit()
            raise Unavailable(str(report["message"]))
        self.is_async = bool(report["is_async"])

    def spawn(self, worker_end: socket.socket, token: int) -> None:
        """Ask for a worker that will serve on ``worker_end`` (sent over with SCM_RIGHTS)."""
        if self._sock is None:
            raise Unavailable(f"function {self.spec.name}: its zygote is not running")
        message = json.dumps({"cmd": "spawn", "token": token}).encode()
        socket.send_fds(self._sock, [message], [worker_end.fileno()])

    async def stop(self) -> None:
        """Ask the zygote to stop (it reaps its workers first); SIGKILL if it lingers."""
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.send(b'{"cmd": "stop"}')
        try:
            await asyncio.wait_for(self.wait_exit(), STOP_TIMEOUT_S + 1.0)
        except TimeoutError:
            await self.kill()

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGKILL)
        await self.wait_exit()

    async def wait_exit(self) -> str:
        """Wait for the zygote to end and return how it ended, in words."""
        self._close()
        if self.process is None:
            return "never started"
        code = await self.process.wait()
        return describe_exit(_wait_status(code))

    def _close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    def _on_readable(self) -> None:
        sock = self._sock
        while sock is not None:
            try:
                packet, fds, _, _ = socket.recv_fds(sock, CONTROL_PACKET_BYTES, 1)
            except BlockingIOError:
                return
            except OSError:
                packet, fds = b"", []
            if not packet:
                for fd in fds:
                    os.close(fd)
                self._on_lost()
                return
            message = json.loads(packet)
            if fds:  # a sandboxed worker's pidfd, with its "spawned" event
                message["pidfd"] = fds[0]
            self._dispatch(message)

    def _dispatch(self, message: ZygoteEvent) -> None:
        if message["event"] in ("loaded", "load_failed"):
            if self._loaded is not None and not self._loaded.done():
                self._loaded.set_result(message)
            return
        self.on_event(message)

    def _on_lost(self) -> None:
        self._close()
        if self._loaded is None:
            return
        if not self._loaded.done():
            self._loaded.set_result(
                {"event": "load_failed", "message": "its zygote process died while loading"}
            )
        elif self._loaded.result()["event"] == "loaded":
            self.on_event({"event": "lost"})  # a load failure was reported already


def _wait_status(returncode: int) -> int:
    """Turn asyncio's returncode (negative for signals) back into a wait status."""
    return -returncode if returncode < 0 else returncode << 8
