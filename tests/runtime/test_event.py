from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.errors import HTTPError
from runtime.event import Event, Headers, Query, build_header_block, parse_header_block

header_names = st.text(st.characters(codec="latin-1", exclude_characters=":\n"), max_size=20)
header_values = st.text(st.characters(codec="latin-1", exclude_characters="\n"), max_size=40)


def event(
    body: bytes = b"", query_string: bytes = b"", raw_headers: bytes = b"", call_id: str = ""
) -> Event:
    return Event("POST", "/sensors/motion", query_string, raw_headers, body, call_id)


def test_headers_are_case_insensitive() -> None:
    headers = Headers([("Content-Type", "application/json"), ("X-Tag", "a")])

    assert headers["content-type"] == "application/json"
    assert headers["CONTENT-TYPE"] == "application/json"
    assert "x-TAG" in headers
    assert "x-other" not in headers
    assert 1 not in headers
    assert headers.get("X-Missing", "default") == "default"
    assert sorted(headers) == ["content-type", "x-tag"]
    assert len(headers) == 2


def test_repeated_headers_join_and_getlist_keeps_them_apart() -> None:
    headers = Headers([("Accept", "a"), ("X-Tag", "one"), ("x-tag", "two"), ("X-TAG", "three")])

    assert headers["x-tag"] == "one, two, three"
    assert headers.getlist("X-Tag") == ["one", "two", "three"]
    assert headers.getlist("missing") == []
    assert len(headers) == 2


def test_missing_header_raises_key_error() -> None:
    with pytest.raises(KeyError):
        Headers([])["x"]


def test_event_headers_come_from_the_wire_block() -> None:
    ev = event(raw_headers=b"Content-Type:application/json\nX-Tag:a\nx-tag:b:c")

    assert ev.headers["content-type"] == "application/json"
    assert ev.headers["x-tag"] == "a, b:c"
    assert ev.headers is ev.headers  # decoded once


def test_query_last_value_wins_and_getlist_has_all() -> None:
    query = event(query_string=b"a=1&b=x&a=2").query

    assert query["a"] == "2"
    assert query.getlist("a") == ["1", "2"]
    assert query.getlist("b") == ["x"]
    assert query.getlist("c") == []
    assert list(query) == ["a", "b"]
    assert len(query) == 2


def test_query_keeps_blank_values_and_decodes_escapes() -> None:
    query = event(query_string=b"empty=&flag&q=a+b&name=caf%C3%A9").query

    assert dict(query) == {"empty": "", "flag": "", "q": "a b", "name": "café"}


def test_query_names_are_case_sensitive() -> None:
    query = Query([("Key", "1")])

    assert "key" not in query
    assert query["Key"] == "1"


def test_empty_query_and_headers() -> None:
    ev = event()

    assert len(ev.query) == 0
    assert len(ev.headers) == 0


def test_header_block_wire_form() -> None:
    block = build_header_block([(b"host", b"edge:8080"), (b"x-empty", b"")])

    assert block == b"host:edge:8080\nx-empty:"
    assert parse_header_block(block) == [("host", "edge:8080"), ("x-empty", "")]
    assert build_header_block([]) == b""
    assert parse_header_block(b"") == []


def test_build_header_block_takes_an_iterator() -> None:
    assert build_header_block(iter([(b"a", b"1"), (b"b", b"2")])) == b"a:1\nb:2"


@given(st.lists(st.tuples(header_names, header_values), max_size=10))
def test_header_block_round_trip(pairs: list[tuple[str, str]]) -> None:
    raw = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in pairs]

    assert parse_header_block(build_header_block(raw)) == pairs


def test_json_body() -> None:
    assert event(b'{"weight_g": 12.5, "tags": ["a"]}').json() == {"weight_g": 12.5, "tags": ["a"]}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "request body is empty; expected JSON"),
        (b'{"a": ', "request body is not valid JSON: Expecting value: line 1 column 7"),
        (b"not json", "request body is not valid JSON: Expecting value: line 1 column 1"),
        (b'{"a": "\xff"}', "request body is not valid JSON: 'utf-8' codec can't decode byte 0xff"),
    ],
)
def test_json_errors_are_the_callers_fault(body: bytes, message: str) -> None:
    with pytest.raises(HTTPError) as info:
        event(body).json()

    assert info.value.http_status == 400
    assert info.value.error_code == "bad_request"
    assert info.value.message.startswith(message)


def test_deeply_nested_json_is_the_callers_fault() -> None:
    with pytest.raises(HTTPError) as info:
        event(b"[" * 100_000 + b"]" * 100_000).json()

    assert info.value.http_status == 400


def test_text_body() -> None:
    assert event("café".encode()).text() == "café"
    assert event(b"").text() == ""


def test_text_that_is_not_utf_8_is_the_callers_fault() -> None:
    with pytest.raises(HTTPError) as info:
        event(b"ab\xffcd").text()

    assert info.value.http_status == 400
    assert info.value.message == "request body is not valid UTF-8 (byte 2)"


def test_event_repr() -> None:
    assert repr(event(b"abc", call_id="c-1")) == (
        "Event(POST /sensors/motion, 3 bytes, call_id='c-1')"
    )


@pytest.mark.parametrize("status", [0, 200, 302, 399, 600, 999])
def test_http_error_rejects_statuses_outside_4xx_5xx(status: int) -> None:
    with pytest.raises(ValueError, match=f"HTTPError status must be 400–599, got {status}"):
        HTTPError(status, "nope")


@pytest.mark.parametrize(
    ("status", "code"),
    [(400, "bad_request"), (404, "not_found"), (429, "too_many_requests"), (418, "error")],
)
def test_http_error_codes(status: int, code: str) -> None:
    error = HTTPError(status, "message")

    assert (error.http_status, error.error_code) == (status, code)
    assert error.to_dict() == {"code": code, "message": "message"}
    assert str(error) == "message"


def test_http_error_explicit_code_wins() -> None:
    error = HTTPError(599, "upstream sensor offline", code="sensor_offline")

    assert error.to_dict() == {"code": "sensor_offline", "message": "upstream sensor offline"}
