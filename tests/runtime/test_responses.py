from __future__ import annotations

import json
from typing import Any

import pytest

from runtime.responses import (
    BINARY_TYPE,
    JSON_TYPE,
    TEXT_TYPE,
    RenderError,
    error_body,
    render,
)

JSON = [(b"content-type", b"application/json")]
TEXT = [(b"content-type", b"text/plain; charset=utf-8")]
BINARY = [(b"content-type", b"application/octet-stream")]


def test_content_types_are_the_documented_ones() -> None:
    assert (JSON_TYPE, TEXT_TYPE, BINARY_TYPE) == (
        b"application/json",
        b"text/plain; charset=utf-8",
        b"application/octet-stream",
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(
            {"a": 1, "b": [True, None]}, (200, JSON, b'{"a":1,"b":[true,null]}'), id="dict"
        ),
        pytest.param({}, (200, JSON, b"{}"), id="empty-dict"),
        pytest.param([1, "x"], (200, JSON, b'[1,"x"]'), id="list"),
        pytest.param("café", (200, TEXT, "café".encode()), id="str"),
        pytest.param("", (200, TEXT, b""), id="empty-str"),
        pytest.param(b"\x00\xff", (200, BINARY, b"\x00\xff"), id="bytes"),
        pytest.param(bytearray(b"ab"), (200, BINARY, b"ab"), id="bytearray"),
        pytest.param(memoryview(b"mv"), (200, BINARY, b"mv"), id="memoryview"),
        pytest.param(None, (204, [], b""), id="none"),
    ],
)
def test_plain_values(value: Any, expected: tuple[int, list[tuple[bytes, bytes]], bytes]) -> None:
    result = render(value)

    assert result == expected
    assert type(result[2]) is bytes


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(("created", 201), (201, TEXT, b"created"), id="str-status"),
        pytest.param(({"id": 7}, 202), (202, JSON, b'{"id":7}'), id="dict-status"),
        pytest.param((b"raw", 299), (299, BINARY, b"raw"), id="bytes-status"),
        pytest.param((None, 202), (202, [], b""), id="none-status"),
        pytest.param(("x", 100), (100, TEXT, b"x"), id="lowest-status"),
        pytest.param(("x", 599), (599, TEXT, b"x"), id="highest-status"),
        pytest.param(
            ({"id": 7}, 201, {"Location": "/things/7"}),
            (201, [*JSON, (b"location", b"/things/7")], b'{"id":7}'),
            id="dict-status-headers",
        ),
        pytest.param(
            (None, 204, {"X-Count": 3, "X-Ratio": 0.5}),
            (204, [(b"x-count", b"3"), (b"x-ratio", b"0.5")], b""),
            id="numeric-header-values",
        ),
        pytest.param(("x", 200, {}), (200, TEXT, b"x"), id="no-headers"),
    ],
)
def test_tuple_forms(value: Any, expected: tuple[int, list[tuple[bytes, bytes]], bytes]) -> None:
    assert render(value) == expected


def test_handler_content_type_replaces_the_default() -> None:
    status, headers, body = render((b"\x89PNG", 200, {"Content-Type": "image/png", "X-A": "1"}))

    assert (status, body) == (200, b"\x89PNG")
    assert headers == [(b"content-type", b"image/png"), (b"x-a", b"1")]


@pytest.mark.parametrize("status", [True, False, 99, 600, "200", 200.0, None])
def test_invalid_status(status: Any) -> None:
    with pytest.raises(RenderError, match=r"status .*; expected an integer 100–599") as info:
        render(("body", status))

    assert repr(status) in str(info.value)


@pytest.mark.parametrize("value", [(), ("x",), ("x", 200, {}, "extra")])
def test_tuple_of_wrong_length(value: tuple[Any, ...]) -> None:
    expected = (
        f"handler returned a tuple of {len(value)} items; "
        "expected (body, status) or (body, status, headers)"
    )
    with pytest.raises(RenderError) as info:
        render(value)

    assert str(info.value) == expected


@pytest.mark.parametrize("headers", [[("X-A", "1")], "X-A: 1", None])
def test_headers_that_are_not_a_dict(headers: Any) -> None:
    with pytest.raises(RenderError, match=r"headers of type .*; expected a dict of str to str"):
        render(("x", 200, headers))


@pytest.mark.parametrize(
    "headers",
    [
        {"X-A": "one\ntwo"},
        {"X-A": "one\r\nSet-Cookie: a=b"},
        {"X-A": "nul\0"},
        {"X-\nA": "1"},
        {"X:A": "1"},
        {"": "1"},
        {"X A": "1"},
        {"X-A": "bell\x01"},
    ],
)
def test_header_with_forbidden_characters(headers: dict[str, str]) -> None:
    with pytest.raises(RenderError, match=r"invalid header name|control character"):
        render(("x", 200, headers))


def test_framing_and_gateway_headers_from_the_handler_are_dropped() -> None:
    given = {
        "Content-Length": "1",
        "Transfer-Encoding": "chunked",
        "X-Served-By": "cloud",
        "X-Call-Id": "forged",
        "X-Edgefaas-Refused": "saturated",  # would make a sending node run the call again
        "X-Kept": "yes",
    }
    _, headers, _ = render(("body", 200, given))
    assert headers == [(b"content-type", b"text/plain; charset=utf-8"), (b"x-kept", b"yes")]


@pytest.mark.parametrize("headers", [{1: "x"}, {"X-A": None}, {"X-A": b"bytes"}, {"X-A": ["a"]}])
def test_header_of_the_wrong_type(headers: dict[Any, Any]) -> None:
    with pytest.raises(RenderError, match="expected str: str"):
        render(("x", 200, headers))


@pytest.mark.parametrize("headers", [{"X-Price": "5 €"}, {"X-€": "5"}])
def test_header_outside_latin_1(headers: dict[str, str]) -> None:
    with pytest.raises(RenderError, match=r"invalid header name|outside Latin-1"):
        render(("x", 200, headers))


def test_latin_1_header_value_is_encoded_as_latin_1() -> None:
    assert render(("x", 200, {"X-Name": "café"}))[1][-1] == (b"x-name", "café".encode("latin-1"))


def circular() -> list[Any]:
    value: list[Any] = []
    value.append(value)
    return value


@pytest.mark.parametrize(
    "value",
    [
        pytest.param({"tags": {"a", "b"}}, id="set"),
        pytest.param({"when": object()}, id="object"),
        pytest.param({(1, 2): "tuple key"}, id="tuple-key"),
        pytest.param(circular(), id="circular"),
        pytest.param(({"tags": {"a"}}, 201), id="in-tuple"),
    ],
)
def test_value_that_is_not_json_serialisable(value: Any) -> None:
    with pytest.raises(RenderError, match="handler returned a value that is not JSON-serialisable"):
        render(value)


@pytest.mark.parametrize("number", [float("nan"), float("inf")])
def test_non_finite_float_is_not_json_serialisable(number: float) -> None:
    with pytest.raises(RenderError, match="not JSON-serialisable"):
        render({"score": number})


@pytest.mark.parametrize(
    ("value", "name"),
    [(object(), "object"), (42, "int"), (1.5, "float"), (True, "bool"), ({1, 2}, "set")],
)
def test_unsupported_type(value: Any, name: str) -> None:
    expected = (
        f"handler returned {name}; expected dict, list, str, bytes, None "
        "or a (body, status[, headers]) tuple"
    )
    with pytest.raises(RenderError) as info:
        render(value)

    assert str(info.value) == expected


def test_unsupported_body_inside_a_tuple() -> None:
    with pytest.raises(RenderError, match="handler returned tuple; expected dict"):
        render((("nested", 200), 200))


def test_render_error_is_a_type_error() -> None:
    assert issubclass(RenderError, TypeError)


def test_error_body_shape() -> None:
    assert json.loads(error_body("not_found", "no function 'x'")) == {
        "error": {"code": "not_found", "message": "no function 'x'"}
    }


def test_error_body_carries_extra_fields() -> None:
    body = error_body("overloaded", "queue full", reason="queue_full", retry_after_s=2)

    assert json.loads(body) == {
        "error": {
            "code": "overloaded",
            "message": "queue full",
            "reason": "queue_full",
            "retry_after_s": 2,
        }
    }
    assert type(body) is bytes
