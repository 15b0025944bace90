"""The manifest's ``batch`` key: parsed per function, checked with key path and line, and
carried in bundles."""

from __future__ import annotations

import pytest

from registry.errors import ManifestError
from registry.specs import BatchSpec, FunctionSpec
from tests.registry.test_manifest import Parse, error_of, folder, parse, with_function

__all__ = ["folder", "parse"]  # fixtures used below


def test_batch_is_parsed_with_a_default_wait(parse: Parse) -> None:
    spec = parse(with_function("batch: {max_size: 16}\n")).functions["echo"]
    assert spec.batch == BatchSpec(16, 5)
    spec = parse(with_function("batch: {max_size: 4, max_wait_ms: 0}\n")).functions["echo"]
    assert spec.batch == BatchSpec(4, 0)


def test_no_batch_key_means_no_batching(parse: Parse) -> None:
    assert parse(with_function("timeout_s: 5\n")).functions["echo"].batch is None


def test_batch_travels_in_a_bundle_s_spec(parse: Parse) -> None:
    spec = parse(with_function("batch: {max_size: 8, max_wait_ms: 20}\n")).functions["echo"]
    assert FunctionSpec.from_dict(spec.to_dict()) == spec
    plain = parse(with_function("timeout_s: 5\n")).functions["echo"]
    assert "batch" not in plain.to_dict()
    assert FunctionSpec.from_dict(plain.to_dict()).batch is None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "batch: {max_size: 1}\n",
            "functions.echo.batch.max_size: expected an integer from 2 to 256, got 1 (line 5)",
        ),
        (
            "batch: {max_size: 4, max_wait_ms: 5000}\n",
            "functions.echo.batch.max_wait_ms: expected an integer from 0 to 1000, got 5000"
            " (line 5)",
        ),
        ("batch: {max_wait_ms: 5}\n", "functions.echo.batch.max_size: required key is missing"),
        ("batch: {max_size: 4, size: 2}\n", 'functions.echo.batch.size: unknown key "size"'),
        ("batch: 16\n", "functions.echo.batch: expected a mapping"),
    ],
)
def test_a_bad_batch_says_what_and_where(parse: Parse, body: str, message: str) -> None:
    error = error_of(parse, with_function(body))
    assert message in str(error)


def test_batch_belongs_to_a_function_not_to_defaults(parse: Parse) -> None:
    text = with_function("timeout_s: 5\n", head="defaults:\n  batch: {max_size: 4}\n")
    with pytest.raises(ManifestError, match="batch can only be set per function"):
        parse(text)


@pytest.mark.parametrize("data", [{"max_size": 300}, {"max_size": 4, "extra": 1}, {}, []])
def test_a_batch_from_an_untrusted_bundle_is_checked(data: object) -> None:
    with pytest.raises((ValueError, TypeError)):
        BatchSpec.from_dict(data)
