from __future__ import annotations

import time
from types import ModuleType

import pytest

from runtime import HTTPError
from tests.functions.conftest import StartFunction
from tests.functions.events import make_event


@pytest.fixture
def echo(function_factory: StartFunction) -> ModuleType:
    return function_factory("echo")


@pytest.fixture
def sleeps(echo: ModuleType, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record the handler's sleeps (in seconds) instead of sleeping."""
    recorded: list[float] = []
    monkeypatch.setattr(echo.time, "sleep", recorded.append)
    return recorded


def test_returns_body_with_the_request_content_type(echo: ModuleType) -> None:
    event = make_event(b'{"a": 1}', headers={"Content-Type": "application/json"})
    assert echo.handle(event) == (b'{"a": 1}', 200, {"content-type": "application/json"})


def test_keeps_content_type_parameters(echo: ModuleType) -> None:
    event = make_event(b"hi", headers={"host": "x", "content-type": "text/plain; charset=utf-8"})
    assert echo.handle(event) == (b"hi", 200, {"content-type": "text/plain; charset=utf-8"})


def test_without_content_type_returns_plain_bytes(echo: ModuleType) -> None:
    body = bytes(range(256))
    assert echo.handle(make_event(body, headers={"x-other": "1"})) == body


def test_empty_get(echo: ModuleType) -> None:
    assert echo.handle(make_event(method="GET")) == b""


@pytest.mark.parametrize(
    ("query", "expected_s"),
    [
        ([("sleep_ms", "250")], [0.25]),
        ([("sleep_ms", "0")], []),  # no sleep at all, not sleep(0)
        ([("sleep_ms", "60000")], [60.0]),
        ([("sleep_ms", "00007")], [0.007]),
        ([("sleep_ms", "5"), ("sleep_ms", "7")], [0.007]),
        ([("other", "1")], []),
        ([], []),
    ],
)
def test_sleep_ms(
    echo: ModuleType, sleeps: list[float], query: list[tuple[str, str]], expected_s: list[float]
) -> None:
    assert echo.handle(make_event(b"x", query=query)) == b"x"
    assert sleeps == expected_s


def test_really_sleeps(echo: ModuleType) -> None:
    started = time.monotonic()
    result = echo.handle(make_event(b"x", query=[("sleep_ms", "30")]))
    assert time.monotonic() - started >= 0.03
    assert result == b"x"


@pytest.mark.parametrize(
    "value",
    [
        "",
        "abc",
        "-1",
        "1.5",
        "+5",
        " 5",
        "5_000",
        "1e3",
        "60001",
        "99999",
        "123456",
        "\u0663",  # ARABIC-INDIC DIGIT THREE: isdigit() and int() accept it
        "0" * 5000,
    ],
)
def test_bad_sleep_ms_is_400(echo: ModuleType, sleeps: list[float], value: str) -> None:
    with pytest.raises(HTTPError) as caught:
        echo.handle(make_event(b"x", query=[("sleep_ms", value)]))
    assert caught.value.http_status == 400
    assert caught.value.message == "query parameter 'sleep_ms' must be an integer from 0 to 60000"
    assert sleeps == []
