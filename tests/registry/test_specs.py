from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest

from registry import defaults
from registry.specs import FunctionSpec, HandlerRef, HttpTrigger, PoolSpec, SpillSpec


def make_spec(spill: SpillSpec | None = None) -> FunctionSpec:
    pool = PoolSpec(
        min=1, max=2, concurrency=1, queue_max=8, max_queue_wait_ms=100, idle_timeout_s=1.0
    )
    return FunctionSpec(
        name="cam",
        handler=HandlerRef("file", "/srv/cam/handler.py", "handle"),
        root=Path("/srv/cam"),
        triggers=(HttpTrigger("/cam", ("POST",)),),
        pool=pool,
        timeout_s=5.0,
        memory_mb=128,
        **({} if spill is None else {"spill": spill}),
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


def test_spill_is_the_last_field_of_function_spec() -> None:
    assert dataclasses.fields(FunctionSpec)[-1].name == "spill"


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
