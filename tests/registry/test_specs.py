from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest

from registry import defaults
from registry.specs import AsyncSpec, FunctionSpec, HandlerRef, HttpTrigger, PoolSpec, SpillSpec


def make_spec(
    spill: SpillSpec | None = None,
    async_policy: AsyncSpec | None = None,
    triggers: tuple[HttpTrigger, ...] = (HttpTrigger("/cam", ("POST",)),),
) -> FunctionSpec:
    pool = PoolSpec(
        min=1, max=2, concurrency=1, queue_max=8, max_queue_wait_ms=100, idle_timeout_s=1.0
    )
    return FunctionSpec(
        name="cam",
        handler=HandlerRef("file", "/srv/cam/handler.py", "handle"),
        root=Path("/srv/cam"),
        triggers=triggers,
        pool=pool,
        timeout_s=5.0,
        memory_mb=128,
        **({} if spill is None else {"spill": spill}),
        **({} if async_policy is None else {"async_policy": async_policy}),
    )


def wire(spec: FunctionSpec) -> dict[str, Any]:
    """``spec.to_dict()`` as it arrives on the other side of a pipe or a bundle."""
    loaded: dict[str, Any] = json.loads(json.dumps(spec.to_dict()))
    return loaded


def test_spill_defaults_come_from_registry_defaults() -> None:
    spill = make_spec().spill
    assert spill == SpillSpec(
        defaults.SPILL_TO, defaults.SPILL_MAX_LOCAL_WAIT_MS, defaults.SPILL_CLOUD_COMPATIBLE
    )
    assert (spill.to, spill.max_local_wait_ms, spill.cloud_compatible) == (
        ("peers", "cloud"),
        100,
        False,
    )
    assert not spill.pinned


def test_fields_added_later_come_last_so_positional_construction_still_works() -> None:
    assert [f.name for f in dataclasses.fields(FunctionSpec)[-4:]] == [
        "spill",
        "async_policy",
        "batch",
        "sandbox",
    ]
    assert [f.name for f in dataclasses.fields(HttpTrigger)] == ["path", "methods", "is_async"]


def test_to_dict_writes_spill_as_the_contract_says() -> None:
    spec = make_spec(SpillSpec(("cloud",), 40, True))
    assert wire(spec)["spill"] == {
        "to": ["cloud"],
        "max_local_wait_ms": 40,
        "cloud_compatible": True,
    }


@pytest.mark.parametrize(
    "spill",
    [
        SpillSpec(),
        SpillSpec((), 0, False),
        SpillSpec(("peers",), 2500, True),
        SpillSpec(("cloud",)),
    ],
)
def test_function_spec_round_trips_with_its_spill(spill: SpillSpec) -> None:
    spec = make_spec(spill)
    assert FunctionSpec.from_dict(wire(spec)) == spec


def test_a_document_without_spill_gets_the_defaults() -> None:
    document = wire(make_spec(SpillSpec((), 5, True)))
    del document["spill"]
    assert FunctionSpec.from_dict(document).spill == SpillSpec()


def test_tiers_are_kept_in_tier_order() -> None:
    assert SpillSpec(("cloud", "peers")).to == ("peers", "cloud")
    document = wire(make_spec())
    document["spill"]["to"] = ["cloud", "peers"]
    assert FunctionSpec.from_dict(document).spill.to == ("peers", "cloud")


def test_an_empty_tier_list_pins_the_function() -> None:
    assert SpillSpec(to=()).pinned
    assert not SpillSpec(to=("cloud",)).pinned


def test_a_spill_spec_is_frozen() -> None:
    spill = SpillSpec()
    with pytest.raises(AttributeError):
        spill.to = ()  # type: ignore[misc]


@pytest.mark.parametrize(
    ("spill", "error", "message"),
    [
        ({"to": ["edge"]}, ValueError, "spill.to: unknown tier 'edge'; expected peers or cloud"),
        ({"to": ["peers", 1]}, ValueError, "spill.to: unknown tier 1"),
        ({"to": ["cloud", "cloud"]}, ValueError, "spill.to: duplicate tier 'cloud'"),
        ({"to": "peers"}, TypeError, "spill.to: expected a list of tiers, got 'peers'"),
        ({"to": None}, TypeError, "spill.to: expected a list of tiers, got None"),
        ({"max_local_wait_ms": -1}, ValueError, "expected an integer ≥ 0, got -1"),
        ({"max_local_wait_ms": 1.5}, TypeError, "spill.max_local_wait_ms: expected an integer"),
        ({"max_local_wait_ms": True}, TypeError, "expected an integer ≥ 0, got True"),
        ({"max_local_wait_ms": "100"}, TypeError, "expected an integer ≥ 0, got '100'"),
        ({"cloud_compatible": 1}, TypeError, "spill.cloud_compatible: expected true or false"),
        ({"cloud_compatible": "false"}, TypeError, "expected true or false, got 'false'"),
        ({"colour": "red"}, ValueError, "spill: unknown key 'colour'; expected to, max_local"),
    ],
)
def test_bad_spill_values_raise(
    spill: dict[str, object], error: type[Exception], message: str
) -> None:
    document = wire(make_spec())
    document["spill"].update(spill)
    with pytest.raises(error) as caught:
        FunctionSpec.from_dict(document)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("spill", "error", "message"),
    [
        (None, TypeError, "spill: expected an object, got None"),
        (["peers"], TypeError, "spill: expected an object, got ['peers']"),
        ({"to": []}, ValueError, "spill: missing key 'max_local_wait_ms'"),
    ],
)
def test_a_spill_that_is_not_a_whole_object_raises(
    spill: object, error: type[Exception], message: str
) -> None:
    document = {**wire(make_spec()), "spill": spill}
    with pytest.raises(error, match=re.escape(message)):
        FunctionSpec.from_dict(document)


def test_the_constructor_checks_as_from_dict_does() -> None:
    with pytest.raises(ValueError, match="unknown tier 'edge'"):
        SpillSpec(("edge",))
    with pytest.raises(ValueError, match="got -5"):
        SpillSpec(max_local_wait_ms=-5)


# -- async ------------------------------------------------------------------------------------


def test_async_defaults_come_from_registry_defaults() -> None:
    policy = make_spec().async_policy
    assert policy == AsyncSpec(
        defaults.ASYNC_RETRIES, defaults.ASYNC_BACKOFF_S, defaults.ASYNC_MAX_AGE_S
    )
    assert (policy.retries, policy.backoff_s, policy.max_age_s) == (2, (1.0, 10.0, 60.0), 21600.0)


def test_to_dict_writes_async_as_the_contract_says() -> None:
    spec = make_spec(
        async_policy=AsyncSpec(5, (2, 4), 3600),
        triggers=(HttpTrigger("/cam", ("POST",), is_async=True), HttpTrigger("/c", ("GET",))),
    )
    document = wire(spec)
    assert document["async"] == {"retries": 5, "backoff_s": [2.0, 4.0], "max_age_s": 3600.0}
    assert document["triggers"] == [
        {"path": "/cam", "methods": ["POST"], "async": True},
        {"path": "/c", "methods": ["GET"], "async": False},
    ]


@pytest.mark.parametrize(
    "policy",
    [
        AsyncSpec(),
        AsyncSpec(0, (0.5,), 1),
        AsyncSpec(10, tuple(range(1, 11)), 7 * 24 * 3600),
    ],
)
def test_function_spec_round_trips_with_its_async_policy(policy: AsyncSpec) -> None:
    spec = make_spec(async_policy=policy, triggers=(HttpTrigger("/cam", ("POST",), True),))
    assert FunctionSpec.from_dict(wire(spec)) == spec


def test_seconds_are_kept_as_floats() -> None:
    policy = AsyncSpec(backoff_s=[1, 2], max_age_s=60)  # type: ignore[arg-type]
    assert policy.backoff_s == (1.0, 2.0)
    assert all(type(s) is float for s in (*policy.backoff_s, policy.max_age_s))


def test_a_document_without_async_gets_the_defaults() -> None:
    document = wire(
        make_spec(async_policy=AsyncSpec(0), triggers=(HttpTrigger("/a", ("GET",), True),))
    )
    del document["async"]
    del document["triggers"][0]["async"]
    spec = FunctionSpec.from_dict(document)
    assert spec.async_policy == AsyncSpec()
    assert spec.triggers == (HttpTrigger("/a", ("GET",), is_async=False),)


@pytest.mark.parametrize(
    ("retry", "seconds"), [(1, 1.0), (2, 10.0), (3, 60.0), (4, 60.0), (10, 60.0)]
)
def test_the_last_backoff_repeats(retry: int, seconds: float) -> None:
    assert AsyncSpec(retries=10).backoff_before(retry) == seconds


def test_retry_numbers_start_at_one() -> None:
    with pytest.raises(ValueError, match="retry numbers start at 1, got 0"):
        AsyncSpec().backoff_before(0)


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        ({"retries": -1}, "async.retries: expected an integer from 0 to 10, got -1"),
        ({"retries": 11}, "async.retries: expected an integer from 0 to 10, got 11"),
        ({"retries": 2.0}, "async.retries: expected an integer from 0 to 10, got 2.0"),
        ({"retries": True}, "async.retries: expected an integer from 0 to 10, got True"),
        ({"backoff_s": []}, "async.backoff_s: expected a list of 1 to 10 numbers of seconds"),
        ({"backoff_s": [1] * 11}, "async.backoff_s: expected a list of 1 to 10 numbers"),
        ({"backoff_s": 5}, "async.backoff_s: expected a list of 1 to 10 numbers of seconds, one"),
        ({"backoff_s": "1"}, "async.backoff_s: expected a list"),
        ({"backoff_s": [1, 0]}, "async.backoff_s[1]: expected a number > 0 and ≤ 604800 (7 days)"),
        (
            {"backoff_s": [1, -3]},
            "async.backoff_s[1]: expected a number > 0 and ≤ 604800 (7 days), got -3",
        ),
        ({"backoff_s": [float("nan")]}, "async.backoff_s[0]: expected a number > 0"),
        ({"backoff_s": ["1"]}, "async.backoff_s[0]: expected a number > 0 and ≤ 604800"),
        ({"backoff_s": [False]}, "async.backoff_s[0]: expected a number > 0"),
        ({"max_age_s": 0}, "async.max_age_s: expected a number > 0 and ≤ 604800 (7 days), got 0"),
        ({"max_age_s": 604801}, "async.max_age_s: expected a number > 0 and ≤ 604800"),
        ({"max_age_s": 10**400}, "async.max_age_s: expected a number > 0"),
        (
            {"max_age_s": float("inf")},
            "async.max_age_s: expected a number > 0 and ≤ 604800 (7 days), got inf",
        ),
        ({"max_age_s": None}, "async.max_age_s: expected a number > 0"),
        ({"colour": "red"}, "async: unknown key 'colour'; expected retries, backoff_s, max_age_s"),
    ],
)
def test_bad_async_values_raise(policy: dict[str, object], message: str) -> None:
    document = wire(make_spec())
    document["async"].update(policy)
    with pytest.raises(ValueError, match=re.escape(message)):
        FunctionSpec.from_dict(document)


@pytest.mark.parametrize(
    ("policy", "error", "message"),
    [
        (None, TypeError, "async: expected an object, got None"),
        ([2], TypeError, "async: expected an object, got [2]"),
        ({"retries": 2}, ValueError, "async: missing key 'backoff_s'"),
    ],
)
def test_an_async_policy_that_is_not_a_whole_object_raises(
    policy: object, error: type[Exception], message: str
) -> None:
    document = {**wire(make_spec()), "async": policy}
    with pytest.raises(error, match=re.escape(message)):
        FunctionSpec.from_dict(document)


@pytest.mark.parametrize("flag", ["yes", 1, None])
def test_a_trigger_async_flag_must_be_a_boolean(flag: object) -> None:
    document = wire(make_spec())
    document["triggers"][0]["async"] = flag
    message = f"trigger /cam: async: expected true or false, got {flag!r}"
    with pytest.raises(TypeError, match=re.escape(message)):
        FunctionSpec.from_dict(document)


def test_the_async_constructor_checks_as_from_dict_does() -> None:
    with pytest.raises(ValueError, match="got -1"):
        AsyncSpec(retries=-1)
    with pytest.raises(ValueError, match=re.escape("async.backoff_s[0]")):
        AsyncSpec(backoff_s=(0.0,))
    policy = AsyncSpec()
    with pytest.raises(AttributeError):
        policy.retries = 3  # type: ignore[misc]
