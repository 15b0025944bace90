from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime import HTTPError
from tests.functions.conftest import FUNCTIONS_DIR, StartFunction, load_handler, start_function
from tests.functions.events import json_event, make_event

SHELF = {
    "sku": "4006381333931",
    "unit_weight_g": 410.0,
    "tare_g": 380.0,
    "restock_below": 4,
    "capacity": 12,
}
TABLE: dict[str, Any] = {"shelves": {"s-12": SHELF, "s-tiny": SHELF | {"unit_weight_g": 1e-10}}}


def without(data: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k != key}


@pytest.fixture
def start_weight(function_factory: StartFunction, tmp_path: Path) -> Callable[..., ModuleType]:
    """Start the weight function on a table written to a fresh folder."""

    def start(table: Any = TABLE) -> ModuleType:
        (tmp_path / "shelves.json").write_text(json.dumps(table), encoding="utf-8")
        return function_factory("weight", root=tmp_path)

    return start


@pytest.fixture
def weight(start_weight: Callable[..., ModuleType]) -> ModuleType:
    return start_weight()


def reading(**fields: Any) -> dict[str, Any]:
    return {"shelf_id": "s-12", "sku": "4006381333931", "capacity": 12} | fields


@pytest.mark.parametrize(
    ("weight_g", "expected"),
    [
        # net 2051.5 g = 5.004 units
        (2431.5, reading(count=5, restock=False, fill=0.417, anomaly=False)),
        (1610, reading(count=3, restock=True, fill=0.25, anomaly=False)),  # an int is fine
        (2020, reading(count=4, restock=False, fill=0.333, anomaly=False)),  # restock is "<"
        (380.0, reading(count=0, restock=True, fill=0.0, anomaly=False)),  # just the tare
        (300.0, reading(count=0, restock=True, fill=0.0, anomaly=False)),  # 80 g under tare
        (0.0, reading(count=0, restock=True, fill=0.0, anomaly=True)),  # 380 g under tare
        (2532.5, reading(count=5, restock=False, fill=0.417, anomaly=False)),  # off by 1/4 unit
        (2533.0, reading(count=5, restock=False, fill=0.417, anomaly=True)),  # a bit more
        (2580.0, reading(count=5, restock=False, fill=0.417, anomaly=True)),  # +150 g misplaced
        (2690.0, reading(count=6, restock=False, fill=0.5, anomaly=True)),  # 5.63 → 6, -160 g
        (1405.0, reading(count=2, restock=True, fill=0.167, anomaly=True)),  # 2.5 → 2 (to even)
        (5300.0, reading(count=12, restock=False, fill=1.0, anomaly=False)),  # full
        (5710.0, reading(count=13, restock=False, fill=1.083, anomaly=True)),  # over capacity
    ],
)
def test_counts_items(weight: ModuleType, weight_g: float, expected: dict[str, Any]) -> None:
    assert weight.handle(json_event({"shelf_id": "s-12", "weight_g": weight_g})) == expected


def test_tare_from_the_event_overrides_the_table(weight: ModuleType) -> None:
    event = json_event({"shelf_id": "s-12", "weight_g": 2050, "tare_g": 0})
    assert weight.handle(event)["count"] == 5


def test_null_tare_means_the_table_tare(weight: ModuleType) -> None:
    event = json_event({"shelf_id": "s-12", "weight_g": 2430, "tare_g": None})
    assert weight.handle(event)["count"] == 5


def test_matching_sku_and_extra_fields_are_accepted(weight: ModuleType) -> None:
    event = json_event({"shelf_id": "s-12", "weight_g": 2430, "sku": "4006381333931", "v": 2})
    assert weight.handle(event)["count"] == 5


def test_unknown_shelf_is_404(weight: ModuleType) -> None:
    with pytest.raises(HTTPError) as caught:
        weight.handle(json_event({"shelf_id": "s-99", "weight_g": 100}))
    assert (caught.value.http_status, caught.value.message) == (404, "unknown shelf 's-99'")


def test_other_sku_is_409(weight: ModuleType) -> None:
    with pytest.raises(HTTPError) as caught:
        weight.handle(json_event({"shelf_id": "s-12", "weight_g": 100, "sku": "123"}))
    assert caught.value.http_status == 409
    assert caught.value.message == "sku '123' is not stocked on shelf 's-12' (4006381333931)"


def test_shipped_table(function_factory: StartFunction) -> None:
    weight = function_factory("weight")
    assert weight.handle(json_event({"shelf_id": "s-12", "weight_g": 2431.5})) == reading(
        count=5, restock=False, fill=0.417, anomaly=False
    )


def test_handle_before_init_is_a_programming_error() -> None:
    with pytest.raises(RuntimeError, match="before init"):
        load_handler("weight").handle(json_event({"shelf_id": "s-12", "weight_g": 1.0}))


# Bad events ---------------------------------------------------------------------------------

NOT_GRAMS = "field '{}' must be a number >= 0 (grams)"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"weight_g": 100}, "missing field 'shelf_id'"),
        ({"shelf_id": "s-12"}, "missing field 'weight_g'"),
        ({}, "missing field 'shelf_id'"),
        ({"shelf_id": 12, "weight_g": 100}, "field 'shelf_id' must be a string"),
        ({"shelf_id": "", "weight_g": 100}, "field 'shelf_id' must be a non-empty string"),
        ({"shelf_id": None, "weight_g": 100}, "field 'shelf_id' must be a non-empty string"),
        ({"shelf_id": "s-12", "weight_g": None}, NOT_GRAMS.format("weight_g")),
        ({"shelf_id": "s-12", "weight_g": "2431.5"}, NOT_GRAMS.format("weight_g")),
        ({"shelf_id": "s-12", "weight_g": -0.5}, NOT_GRAMS.format("weight_g")),
        ({"shelf_id": "s-12", "weight_g": True}, NOT_GRAMS.format("weight_g")),
        ({"shelf_id": "s-12", "weight_g": [1]}, NOT_GRAMS.format("weight_g")),
        ({"shelf_id": "s-12", "weight_g": float("nan")}, NOT_GRAMS.format("weight_g")),
        ({"shelf_id": "s-12", "weight_g": float("inf")}, NOT_GRAMS.format("weight_g")),
        ({"shelf_id": "s-12", "weight_g": 10**400}, NOT_GRAMS.format("weight_g")),
        ({"shelf_id": "s-12", "weight_g": 1, "tare_g": -1}, NOT_GRAMS.format("tare_g")),
        ({"shelf_id": "s-12", "weight_g": 1, "tare_g": "0"}, NOT_GRAMS.format("tare_g")),
        ({"shelf_id": "s-12", "weight_g": 1, "tare_g": False}, NOT_GRAMS.format("tare_g")),
        ({"shelf_id": "s-12", "weight_g": 1, "sku": 4006381333931}, "field 'sku' must be a string"),
        ({"shelf_id": "s-tiny", "weight_g": 1e300}, "field 'weight_g' is too large for this shelf"),
        ([{"shelf_id": "s-12", "weight_g": 1}], "request body must be a JSON object"),
        (2431.5, "request body must be a JSON object"),
    ],
)
def test_bad_event_is_400_naming_the_field(weight: ModuleType, body: Any, message: str) -> None:
    with pytest.raises(HTTPError) as caught:
        weight.handle(json_event(body))
    assert (caught.value.http_status, caught.value.message) == (400, message)


@pytest.mark.parametrize("body", [b"", b"shelf=s-12", b"\xff"])
def test_body_that_is_not_json_is_400(weight: ModuleType, body: bytes) -> None:
    with pytest.raises(HTTPError) as caught:
        weight.handle(make_event(body))
    assert caught.value.http_status == 400


NUMBERS = (
    st.floats()
    | st.floats(min_value=0, max_value=10_000)
    | st.integers(min_value=-(10**400), max_value=10**400)
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | NUMBERS | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=5,
)
EVENTS = st.fixed_dictionaries(
    {},
    optional={
        "shelf_id": JSON_VALUES | st.sampled_from(["s-12", "s-13", "s-20"]),
        "weight_g": JSON_VALUES | NUMBERS,
        "tare_g": JSON_VALUES | NUMBERS,
        "sku": JSON_VALUES | st.sampled_from(["4006381333931", "5000112637922"]),
    },
)
SHIPPED = start_function("weight")
SHIPPED_SHELVES = json.loads((FUNCTIONS_DIR / "weight" / "shelves.json").read_text())["shelves"]


@settings(max_examples=300, database=None, deadline=None)
@given(body=EVENTS | JSON_VALUES)
def test_any_event_gets_an_answer_or_http_error(body: Any) -> None:
    try:
        result = SHIPPED.handle(json_event(body))
    except HTTPError as exc:
        assert exc.http_status in {400, 404, 409}
    else:
        shelf = SHIPPED_SHELVES[body["shelf_id"]]
        assert result["count"] >= 0
        assert result["restock"] == (result["count"] < shelf["restock_below"])
        assert result["fill"] == round(result["count"] / shelf["capacity"], 3)


# The table ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shelf", "message"),
    [
        (SHELF | {"units": 3}, ": unknown key 'units'"),
        (without(SHELF, "capacity"), ": missing key 'capacity'"),
        (SHELF | {"sku": ""}, ".sku must be a non-empty string"),
        (SHELF | {"unit_weight_g": 0}, ".unit_weight_g must be a number > 0"),
        (SHELF | {"unit_weight_g": "410"}, ".unit_weight_g must be a number > 0"),
        (SHELF | {"tare_g": -1}, ".tare_g must be a number >= 0"),
        (SHELF | {"capacity": 0}, ".capacity must be a whole number >= 1"),
        (SHELF | {"capacity": 12.0}, ".capacity must be a whole number >= 1"),
        (SHELF | {"restock_below": -1}, ".restock_below must be a whole number >= 0"),
        (SHELF | {"restock_below": 13}, ".restock_below must not be above capacity"),
        ([SHELF], " must be an object"),
    ],
)  # fmt: skip
def test_bad_shelf_stops_init_naming_the_key(
    start_weight: Callable[..., ModuleType], shelf: Any, message: str
) -> None:
    with pytest.raises(ValueError, match="^" + re.escape("shelves.json: shelves.s-1" + message)):
        start_weight({"shelves": {"s-1": copy.deepcopy(shelf)}})


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"shelves": []}, "shelves.json: 'shelves' must be an object"),
        ({}, "shelves.json: 'shelves' must be an object"),
        ({"shelves": {}, "version": 2}, "shelves.json: unknown key 'version'"),
        ([], "shelves.json must be an object"),
    ],
)
def test_bad_table_stops_init(
    start_weight: Callable[..., ModuleType], table: Any, message: str
) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        start_weight(table)


def test_table_that_is_not_json(function_factory: StartFunction, tmp_path: Path) -> None:
    (tmp_path / "shelves.json").write_text("shelves:\n  s-12: {}", encoding="utf-8")
    with pytest.raises(ValueError, match=r"^shelves\.json: not valid JSON"):
        function_factory("weight", root=tmp_path)
