"""Callback URLs against the allow-list, and deliveries to a scripted server on 127.0.0.1.

Host names are resolved by a fake resolver (``callbacks._lookup``) except in the one test that
resolves ``localhost`` for real; nothing leaves the machine.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
import time
from collections.abc import AsyncIterator, Callable

import pytest

from gateway.errors import SettingsError
from gateway.jobs import callbacks
from gateway.jobs.callbacks import AllowList, CallbackPolicy, CallbackSender, Delivery
from gateway.settings import resolve
from tests.conftest import free_port
from tests.gateway.stub_server import Handler, Received, response, stub_server

pytestmark = pytest.mark.anyio


def fake_dns(
    monkeypatch: pytest.MonkeyPatch, table: dict[str, list[str]] | Callable[[str], list[str]]
) -> list[str]:
    """Answer host names from ``table``; returns the names looked up, in order."""
    asked: list[str] = []

    async def lookup(host: str, port: int) -> list[str]:
        asked.append(host)
        answer = table(host) if callable(table) else table.get(host)
        if not answer:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return answer

    monkeypatch.setattr(callbacks, "_lookup", lookup)
    return asked


def statuses(*codes: int, headers: list[tuple[str, str]] | None = None) -> Handler:
    """Answer with ``codes`` in turn, then keep answering the last one."""
    remaining = list(codes)

    async def handle(request: Received, writer: asyncio.StreamWriter) -> None:
        code = remaining.pop(0) if len(remaining) > 1 else remaining[0]
        writer.write(response(code, headers, b"thanks"))

    return handle


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(callbacks, "BACKOFF_S", (0.01, 0.02, 0.04))


@pytest.fixture
async def sender() -> AsyncIterator[CallbackSender]:
    sender = CallbackSender(CallbackPolicy("127.0.0.1/32"))
    yield sender
    await sender.close()


async def deliver(sender: CallbackSender, url: str, status: int = 200) -> Delivery:
    return await sender.deliver(url, "call-1", "resize", status, 0.25, b"result", "image/png")


# --- the allow-list setting -------------------------------------------------------------


def test_allow_list_entries() -> None:
    allow = AllowList.parse(" hooks.LAN., *.corp.example ,10.0.0.0/8, 192.168.1.7,fd00::/8,,")

    assert allow.names == frozenset({"hooks.lan"})
    assert allow.suffixes == (".corp.example",)
    assert [str(n) for n in allow.networks] == ["10.0.0.0/8", "192.168.1.7/32", "fd00::/8"]
    assert allow.allows_name("a.corp.example")
    assert allow.allows_name("a.b.corp.example")
    assert not allow.allows_name("corp.example")
    assert not allow.allows_name("evilcorp.example")


def test_the_setting_is_read_from_flag_and_environment() -> None:
    assert resolve({}, {}).callback_allow == ""
    assert resolve({}, {"EDGEFAAS_CALLBACK_ALLOW": "10.0.0.0/8"}).callback_allow == "10.0.0.0/8"
    assert resolve({"callback_allow": "hooks.lan"}, {}).callback_allow == "hooks.lan"


@pytest.mark.parametrize(
    ("value", "entry_message"),
    [
        ("10.0.0.300/32", "'10.0.0.300/32' is not a CIDR"),
        ("10.0.0.300", "'10.0.0.300' is not a host name, a *.domain wildcard or a CIDR"),
        ("fd00::/8x", "'fd00::/8x' is not a CIDR"),
        ("10.1.2.3/8", "'10.1.2.3/8' is not a CIDR (10.1.2.3/8 has host bits set)"),
        ("10.0.0.0/8, hooks lan", "'hooks lan' is not a host name, a *.domain wildcard or a CIDR"),
        ("hooks.lan:8080", "'hooks.lan:8080' is not a host name"),
        ("*", "'*' is not a host name"),
        ("*example.com", "'*example.com' is not a host name"),
        ("a.*.example.com", "'a.*.example.com' is not a host name"),
        ("http://hooks.lan", "'http://hooks.lan' is not a host name"),
        ("-hooks.lan", "'-hooks.lan' is not a host name"),
        ("999.1.1.1", "'999.1.1.1' is not a host name, a *.domain wildcard or a CIDR"),
    ],
)
def test_bad_allow_lists_are_refused_naming_the_entry(value: str, entry_message: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(entry_message)):
        AllowList.parse(value)
    with pytest.raises(SettingsError) as env_error:
        resolve({}, {"EDGEFAAS_CALLBACK_ALLOW": value})
    assert str(env_error.value).startswith(
        "EDGEFAAS_CALLBACK_ALLOW: expected comma-separated host names, *.domain wildcards or "
        "CIDRs such as 10.0.0.0/8 or fd00::/8, got"
    )
    with pytest.raises(SettingsError, match=r"^--callback-allow: expected comma-separated"):
        resolve({"callback_allow": value}, {})
    with pytest.raises(SettingsError, match=r"^--callback-allow: "):
        CallbackPolicy(value)


# --- the policy -------------------------------------------------------------------------


async def test_a_private_address_is_refused_with_the_setting_that_allows_it() -> None:
    assert await CallbackPolicy().check("http://10.1.2.3/hook") == (
        "X-Callback-Url: 10.1.2.3 is a private address; allow it with --callback-allow 10.1.2.3/32"
    )


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://127.0.0.1:8080/", "127.0.0.1 is a loopback address"),
        ("http://127.8.9.10/", "127.8.9.10 is a loopback address"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address"),
        ("http://192.168.1.1/", "192.168.1.1 is a private address"),
        ("http://172.16.0.1/", "172.16.0.1 is a private address"),
        ("http://100.64.0.1/", "100.64.0.1 is a non-public address"),
        ("http://0.0.0.0:8080/", "0.0.0.0 is an unspecified address"),
        ("http://224.0.0.1/", "224.0.0.1 is a multicast address"),
        ("http://240.0.0.1/", "240.0.0.1 is a reserved address"),
        ("http://[::1]:8080/", "::1 is a loopback address; allow it with --callback-allow ::1/128"),
        ("http://[fe80::1]/", "fe80::1 is a link-local address"),
        ("http://[fd00::1]/", "fd00::1 is a private address"),
        ("http://[::ffff:10.0.0.1]/", "10.0.0.1 is a private address"),
        ("https://[::ffff:7f00:1]/", "127.0.0.1 is a loopback address"),
    ],
)
async def test_non_public_addresses_are_refused_by_default(url: str, words: str) -> None:
    message = await CallbackPolicy().check(url)

    assert message is not None
    assert words in message


@pytest.mark.parametrize(
    "url", ["http://93.184.216.34/hook", "https://1.1.1.1:8443/x?token=t", "http://[2606:4700::1]/"]
)
async def test_public_addresses_are_allowed_by_default(url: str) -> None:
    assert await CallbackPolicy().check(url) is None


@pytest.mark.parametrize(
    ("allow", "url", "allowed"),
    [
        ("127.0.0.1/32", "http://127.0.0.1:9000/cb", True),
        ("127.0.0.1", "http://127.0.0.1:9000/cb", True),
        ("127.0.0.1/32", "http://127.0.0.2/cb", False),
        ("10.0.0.0/8", "http://10.200.3.4/cb", True),
        ("10.0.0.0/8", "http://192.168.1.1/cb", False),
        ("10.0.0.0/8", "http://[::ffff:10.1.1.1]/cb", True),
        ("169.254.169.254/32", "http://169.254.169.254/", True),
        ("fd00::/8", "http://[fd12::1]/", True),
        ("fd00::/8", "http://10.0.0.1/", False),
    ],
)
async def test_listed_networks_are_allowed(allow: str, url: str, allowed: bool) -> None:
    assert (await CallbackPolicy(allow).check(url) is None) is allowed


async def test_a_name_that_resolves_to_a_private_address_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_dns(monkeypatch, {"hooks.lan": ["10.1.2.3"]})

    assert await CallbackPolicy().check("http://hooks.lan/x") == (
        "X-Callback-Url: hooks.lan resolves to 10.1.2.3, a private address; allow it with "
        "--callback-allow hooks.lan or --callback-allow 10.1.2.3/32"
    )


async def test_one_private_address_among_public_ones_is_enough_to_refuse(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_dns(monkeypatch, {"mixed.example": ["93.184.216.34", "2606:4700::1", "169.254.169.254"]})

    message = await CallbackPolicy().check("https://mixed.example/x")

    assert message is not None
    assert "mixed.example resolves to 169.254.169.254, a link-local address" in message
    assert await CallbackPolicy("169.254.169.254/32").check("https://mixed.example/x") is None


async def test_localhost_really_resolves_to_a_refused_address() -> None:
    message = await CallbackPolicy().check("http://localhost:8080/cb")

    assert message is not None
    assert "localhost resolves to" in message
    assert "a loopback address" in message


async def test_listed_names_and_wildcards_are_allowed_whatever_they_resolve_to(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_dns(
        monkeypatch,
        {"hooks.lan": ["10.1.2.3"], "a.corp.example": ["10.9.9.9"], "corp.example": ["10.9.9.8"]},
    )
    policy = CallbackPolicy("hooks.lan,*.corp.example")

    assert await policy.check("http://HOOKS.lan./x") is None
    assert await policy.check("http://a.corp.example/x") is None
    assert await policy.check("http://corp.example/x") is not None


async def test_a_name_that_does_not_resolve_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_dns(monkeypatch, {})

    message = await CallbackPolicy().check("http://nowhere.invalid/x")

    assert message is not None
    assert message.startswith("X-Callback-Url: cannot resolve nowhere.invalid (")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://93.184.216.34/x", "expected an http:// or https:// URL"),
        ("file:///etc/passwd", "expected an http:// or https:// URL"),
        ("gopher://93.184.216.34:70/", "expected an http:// or https:// URL"),
        ("93.184.216.34/hook", "expected an http:// or https:// URL"),
        ("", "expected an http:// or https:// URL"),
        ("http://user:pw@93.184.216.34/", "user names and passwords are not allowed"),
        ("http://token@93.184.216.34/", "user names and passwords are not allowed"),
        ("http://@93.184.216.34/", "user names and passwords are not allowed"),
        ("http://10.0.0.1\\@93.184.216.34/", "user names and passwords are not allowed"),
        ("http:///hook", "the URL has no host"),
        ("http://:8080/hook", "the URL has no host"),
        ("http://93.184.216.34:99999/", "not a URL"),
        ("http://93.184.216.34:http/", "not a URL"),
        ("http://93.184.216.34:0/", "port 0 cannot be called"),
        ("http://bücher.example/", "the host must be ASCII"),
        ("http://" + "a" * 3000 + ".example/", "longer than 2048 characters"),
    ],
)
async def test_bad_urls_are_refused(url: str, message: str) -> None:
    refused = await CallbackPolicy("0.0.0.0/0,::/0").check(url)

    assert refused is not None
    assert refused.startswith("X-Callback-Url: ")
    assert message in refused


# --- delivery ---------------------------------------------------------------------------


async def test_the_result_is_posted_with_openfaas_callback_headers(
    sender: CallbackSender, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="edgefaas.callbacks")
    async with stub_server(statuses(202)) as stub:
        result = await sender.deliver(
            stub.url + "/hook?token=s3cret", "call-7", "resize", 201, 0.25, b"\x89PNG", "image/png"
        )

    assert result.delivered
    assert (result.attempts, result.last_error, result.status_code) == (1, "", 202)
    (request,) = stub.received
    assert (request.method, request.target, request.body) == (
        "POST",
        "/hook?token=s3cret",
        b"\x89PNG",
    )
    assert request.header("x-call-id") == "call-7"
    assert request.header("x-function-name") == "resize"
    assert request.header("x-function-status") == "201"
    assert request.header("x-duration-seconds") == "0.250000"
    assert request.header("content-type") == "image/png"
    assert request.header("host") == stub.url.removeprefix("http://")
    assert "s3cret" not in caplog.text
    assert "PNG" not in caplog.text
    assert "→ callback 127.0.0.1:" in caplog.text


async def test_a_name_is_sent_to_the_address_that_was_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake_dns(monkeypatch, {"hooks.lan": ["127.0.0.1"]})
    sender = CallbackSender(CallbackPolicy("hooks.lan"))
    try:
        async with stub_server(statuses(200)) as stub:
            port = stub.url.rsplit(":", 1)[1]
            result = await deliver(sender, f"http://hooks.lan:{port}/cb")
    finally:
        await sender.close()

    assert result.delivered
    (request,) = stub.received
    assert request.header("host") == f"hooks.lan:{port}"


async def test_a_name_that_rebinds_to_a_private_address_after_the_check_is_not_called(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answers = [["93.184.216.34"], ["127.0.0.1"]]
    fake_dns(monkeypatch, lambda host: answers.pop(0) if len(answers) > 1 else answers[0])
    sender = CallbackSender(CallbackPolicy())
    try:
        async with stub_server(statuses(200)) as stub:
            port = stub.url.rsplit(":", 1)[1]
            url = f"http://rebind.example:{port}/cb"
            assert await sender.policy.check(url) is None  # accepted: public then
            result = await deliver(sender, url)
    finally:
        await sender.close()

    assert not result.delivered
    assert result.attempts == 1
    assert "rebind.example resolves to 127.0.0.1, a loopback address" in result.last_error
    assert stub.received == []


async def test_503_is_retried_until_it_is_taken(sender: CallbackSender, fast: None) -> None:
    async with stub_server(statuses(503, 503, 200)) as stub:
        result = await deliver(sender, stub.url + "/cb")

    assert (result.delivered, result.attempts, result.status_code) == (True, 3, 200)
    assert len(stub.received) == 3
    assert {r.header("x-call-id") for r in stub.received} == {"call-1"}


async def test_429_is_retried_after_the_receivers_retry_after(
    sender: CallbackSender, fast: None
) -> None:
    async with stub_server(statuses(429, 200, headers=[("Retry-After", "1")])) as stub:
        started = time.monotonic()
        result = await deliver(sender, stub.url + "/cb")

    assert (result.delivered, result.attempts) == (True, 2)
    assert time.monotonic() - started >= 1.0


@pytest.mark.parametrize("code", [400, 403, 404, 410, 302])
async def test_other_answers_are_not_retried(sender: CallbackSender, fast: None, code: int) -> None:
    async with stub_server(statuses(code, 200)) as stub:
        result = await deliver(sender, stub.url + "/cb")

    assert (result.delivered, result.attempts, result.status_code) == (False, 1, code)
    assert result.last_error.startswith(f"answered {code}")
    assert len(stub.received) == 1


async def test_it_gives_up_after_the_last_backoff(
    sender: CallbackSender, fast: None, caplog: pytest.LogCaptureFixture
) -> None:
    async with stub_server(statuses(500)) as stub:
        result = await deliver(sender, stub.url + "/cb?token=s3cret")

    assert (result.delivered, result.attempts, result.status_code) == (False, 4, 500)
    assert result.last_error == "answered 500"
    assert len(stub.received) == 4
    assert "! callback 127.0.0.1:" in caplog.text
    assert "s3cret" not in caplog.text


async def test_connection_errors_are_retried(sender: CallbackSender, fast: None) -> None:
    result = await deliver(sender, f"http://127.0.0.1:{free_port()}/cb")

    assert (result.delivered, result.attempts, result.status_code) == (False, 4, None)
    assert result.last_error.startswith("ConnectError")


async def test_all_attempts_end_by_the_deadline(
    sender: CallbackSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(callbacks, "BACKOFF_S", (0.2,) * 20)
    monkeypatch.setattr(callbacks, "DEADLINE_S", 0.5)
    async with stub_server(statuses(503)) as stub:
        started = time.monotonic()
        result = await deliver(sender, stub.url + "/cb")

    assert time.monotonic() - started < 1.0
    assert not result.delivered
    assert result.last_error == "gave up after 0.5 s (answered 503)"
    assert 2 <= result.attempts <= 4
    assert len(stub.received) == result.attempts


async def test_close_cancels_pending_deliveries() -> None:
    arrived = asyncio.Event()

    async def never_answer(request: Received, writer: asyncio.StreamWriter) -> None:
        arrived.set()
        await asyncio.sleep(60)

    sender = CallbackSender(CallbackPolicy("127.0.0.1/32"))
    async with stub_server(never_answer) as stub:
        task = sender.submit(stub.url + "/cb", "call-1", "resize", 200, 0.1, b"x", "text/plain")
        await asyncio.wait_for(arrived.wait(), 5)
        assert sender.pending == 1
        started = time.monotonic()
        await sender.close()

    assert time.monotonic() - started < 1.0
    assert task.cancelled()
    assert sender.pending == 0
