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
from tests.functions.conftest import StartFunction, load_handler, start_function
from tests.functions.events import json_event, make_event

HOUSE = {"id": "house", "title": "House ad", "media": "/media/ads/house.mp4"}

TABLE: dict[str, Any] = {
    "timezone": "Europe/Berlin",
    "fallback": HOUSE,
    "zones": {
        "aisle-3": {
            "screen": "scr-a3",
            "ads": [
                {"id": "coffee", "title": "Coffee", "media": "/media/ads/coffee.mp4",
                 "min_intensity": 0.2, "hours": [6, 11]},
                {"id": "tasting", "title": "Tasting", "media": "/media/ads/tasting.mp4",
                 "min_intensity": 0.6, "hours": [6, 11]},
                {"id": "biscuits", "title": "Biscuits", "media": "/media/ads/biscuits.mp4",
                 "min_intensity": 0.6},
                {"id": "late", "title": "Late", "media": "/media/ads/late.mp4",
                 "hours": [21, 6]},
            ],
        },
        "empty": {"screen": "scr-empty", "ads": []},
    },
}  # fmt: skip


def view(ad_id: str) -> dict[str, str]:
    if ad_id == "house":
        return HOUSE
    return {"id": ad_id, "title": ad_id.title(), "media": f"/media/ads/{ad_id}.mp4"}


@pytest.fixture
def start_motion(function_factory: StartFunction, tmp_path: Path) -> Callable[..., ModuleType]:
    """Start the motion function on a table written to a fresh folder."""

    def start(table: Any = TABLE) -> ModuleType:
        (tmp_path / "ads.json").write_text(json.dumps(table), encoding="utf-8")
        return function_factory("motion", root=tmp_path)

    return start


@pytest.fixture
def motion(start_motion: Callable[..., ModuleType]) -> ModuleType:
    return start_motion()


def motion_event(**fields: Any) -> dict[str, Any]:
    return {"sensor_id": "aisle-3-cam", "zone": "aisle-3"} | fields


@pytest.mark.parametrize(
    ("timestamp", "intensity", "ad_id"),
    [
        ("2024-05-01T08:15:00", 0.3, "coffee"),
        ("2024-05-01T08:15:00", 0.2, "coffee"),  # min_intensity is inclusive
        ("2024-05-01T08:15:00", 0.7, "tasting"),  # ties with biscuits; listed first wins
        ("2024-05-01T08:15:00", 0.1, "house"),
        ("2024-05-01T06:00:00", 0.3, "coffee"),  # start hour is inclusive
        ("2024-05-01T11:00:00", 0.3, "house"),  # end hour is exclusive
        ("2024-05-01T12:00:00", 0.7, "biscuits"),
        ("2024-05-01T12:00:00", 0.3, "house"),
        ("2024-05-01T21:00:00", 0.0, "late"),
        ("2024-05-01T23:59:59", 1.0, "biscuits"),
        ("2024-05-02T03:00:00", 0.0, "late"),  # [21, 6) wraps past midnight
        ("2024-05-02T06:10:00", 0.0, "house"),
        # Offsets are converted to store time (Berlin: UTC+2 in summer, UTC+1 in winter).
        ("2024-05-01T06:15:00Z", 0.3, "coffee"),  # 08:15
        ("2024-05-01T08:15:00+02:00", 0.3, "coffee"),  # 08:15
        ("2024-05-01T05:30:00-04:00", 0.3, "house"),  # 11:30, not 05:30 (which is "late")
        ("2024-01-15T04:30:00Z", 0.3, "late"),  # 05:30
        ("2024-07-15T04:30:00Z", 0.3, "coffee"),  # 06:30
        # Epoch seconds.
        (1714544100, 0.3, "coffee"),  # 2024-05-01T06:15Z = 08:15
        (1714544100.5, 0.7, "tasting"),
        (1714500000, 0.0, "house"),  # 2024-04-30T18:00Z = 20:00
        (1714503600, 0.0, "late"),  # 21:00
    ],
)
def test_picks_ad(motion: ModuleType, timestamp: object, intensity: float, ad_id: str) -> None:
    result = motion.handle(json_event(motion_event(intensity=intensity, timestamp=timestamp)))
    assert result["ad"] == view(ad_id)
    assert result["screen"] == "scr-a3"


def test_reason_names_threshold_hour_and_zone(motion: ModuleType) -> None:
    event = json_event(motion_event(intensity=0.72, timestamp="2024-05-01T08:15:00"))
    assert motion.handle(event) == {
        "screen": "scr-a3",
        "ad": view("tasting"),
        "reason": "intensity 0.72 meets min_intensity 0.6 at hour 8 in zone 'aisle-3'",
    }


def test_nothing_eligible_shows_house_ad_on_the_zone_screen(motion: ModuleType) -> None:
    event = json_event(motion_event(intensity=0.1, timestamp="2024-05-01T12:00:00"))
    assert motion.handle(event) == {
        "screen": "scr-a3",
        "ad": HOUSE,
        "reason": "no ad in zone 'aisle-3' for intensity 0.1 at hour 12; house ad",
    }


def test_zone_without_ads_shows_house_ad(motion: ModuleType) -> None:
    result = motion.handle(json_event(motion_event(zone="empty", intensity=1)))
    assert (result["screen"], result["ad"]) == ("scr-empty", HOUSE)


def test_unknown_zone_is_house_ad_without_screen(motion: ModuleType) -> None:
    event = json_event(motion_event(zone="aisle-99", intensity=0.9))
    assert motion.handle(event) == {
        "screen": None,
        "ad": HOUSE,
        "reason": "zone 'aisle-99' is not in ads.json; house ad, no screen",
    }


def test_same_event_same_ad(start_motion: Callable[..., ModuleType]) -> None:
    event = motion_event(intensity=0.65, timestamp="2024-05-01T09:00:00", extra={"x": 1})
    results = [start_motion().handle(json_event(event)) for _ in range(3)]
    assert results[0]["ad"] == view("tasting")
    assert results == [results[0]] * 3


def test_timestamp_is_optional(start_motion: Callable[..., ModuleType]) -> None:
    table = copy.deepcopy(TABLE)
    del table["zones"]["aisle-3"]["ads"][3]["hours"]  # "late" shows all day; the rest needs hours
    table["zones"]["aisle-3"]["ads"] = table["zones"]["aisle-3"]["ads"][2:]
    motion = start_motion(table)
    assert motion.handle(json_event(motion_event(intensity=0.0)))["ad"] == view("late")
    assert motion.handle(json_event(motion_event(intensity=0.6, timestamp=None)))["ad"] == view(
        "biscuits"
    )


def test_table_without_timezone_is_utc(start_motion: Callable[..., ModuleType]) -> None:
    table = {k: v for k, v in TABLE.items() if k != "timezone"}
    motion = start_motion(table)
    event = json_event(motion_event(intensity=0.3, timestamp="2024-05-01T12:30:00+02:00"))
    result = motion.handle(event)  # 10:30 in UTC; it would be 12:30 in Berlin (house ad)
    assert result["ad"] == view("coffee")
    assert "at hour 10 " in result["reason"]


def test_shipped_table(function_factory: StartFunction) -> None:
    motion = function_factory("motion")
    event = json_event(motion_event(intensity=0.72, timestamp="2024-05-01T08:15:00Z"))
    assert motion.handle(event) == {
        "screen": "scr-aisle-3",
        "ad": {
            "id": "coffee-tasting",
            "title": "Free coffee tasting at the counter",
            "media": "/media/ads/coffee-tasting.mp4",
        },
        "reason": "intensity 0.72 meets min_intensity 0.6 at hour 8 in zone 'aisle-3'",
    }


def test_handle_before_init_is_a_programming_error() -> None:
    with pytest.raises(RuntimeError, match="before init"):
        load_handler("motion").handle(json_event(motion_event(intensity=0.5)))


# Bad events ---------------------------------------------------------------------------------

NOT_TEXT = "field '{}' must be a non-empty string"
NOT_INTENSITY = "field 'intensity' must be a number between 0 and 1"
NOT_TIMESTAMP = "field 'timestamp' must be an ISO-8601 string or epoch seconds"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"zone": "aisle-3", "intensity": 0.5}, "missing field 'sensor_id'"),
        ({"sensor_id": "c", "intensity": 0.5}, "missing field 'zone'"),
        ({"sensor_id": "c", "zone": "aisle-3"}, "missing field 'intensity'"),
        ({}, "missing field 'sensor_id'"),
        (motion_event(sensor_id=7, intensity=0.5), NOT_TEXT.format("sensor_id")),
        (motion_event(sensor_id="", intensity=0.5), NOT_TEXT.format("sensor_id")),
        (motion_event(sensor_id=None, intensity=0.5), NOT_TEXT.format("sensor_id")),
        (motion_event(zone=["aisle-3"], intensity=0.5), NOT_TEXT.format("zone")),
        (motion_event(zone="", intensity=0.5), NOT_TEXT.format("zone")),
        (motion_event(intensity="0.5"), NOT_INTENSITY),
        (motion_event(intensity=True), NOT_INTENSITY),
        (motion_event(intensity=None), NOT_INTENSITY),
        (motion_event(intensity=-0.01), NOT_INTENSITY),
        (motion_event(intensity=1.01), NOT_INTENSITY),
        (motion_event(intensity=2), NOT_INTENSITY),
        (motion_event(intensity=float("nan")), NOT_INTENSITY),
        (motion_event(intensity=float("inf")), NOT_INTENSITY),
        (motion_event(intensity=10**400), NOT_INTENSITY),
        (motion_event(intensity=0.5, timestamp="yesterday"), NOT_TIMESTAMP),
        (motion_event(intensity=0.5, timestamp=""), NOT_TIMESTAMP),
        (motion_event(intensity=0.5, timestamp="2024-13-01T00:00:00"), NOT_TIMESTAMP),
        (motion_event(intensity=0.5, timestamp=True), NOT_TIMESTAMP),
        (motion_event(intensity=0.5, timestamp=[2024, 5, 1]), NOT_TIMESTAMP),
        (motion_event(intensity=0.5, timestamp={"s": 1}), NOT_TIMESTAMP),
        (motion_event(intensity=0.5, timestamp=1e20), NOT_TIMESTAMP),
        (motion_event(intensity=0.5, timestamp=-1e20), NOT_TIMESTAMP),
        (motion_event(intensity=0.5, timestamp=float("nan")), NOT_TIMESTAMP),
        (motion_event(intensity=0.5, timestamp=10**400), NOT_TIMESTAMP),
        ([motion_event(intensity=0.5)], "request body must be a JSON object"),
        ("aisle-3", "request body must be a JSON object"),
        (None, "request body must be a JSON object"),
    ],
)
def test_bad_event_is_400_naming_the_field(motion: ModuleType, body: Any, message: str) -> None:
    with pytest.raises(HTTPError) as caught:
        motion.handle(json_event(body))
    assert (caught.value.http_status, caught.value.message) == (400, message)


@pytest.mark.parametrize("body", [b"", b"{", b"\xff\xfe"])
def test_body_that_is_not_json_is_400(motion: ModuleType, body: bytes) -> None:
    with pytest.raises(HTTPError) as caught:
        motion.handle(make_event(body))
    assert caught.value.http_status == 400


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats()
    | st.text(max_size=30)
    | st.sampled_from(["aisle-3", "empty", "2024-05-01T08:15:00", "2024-05-01T08:15:00+14:00"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=5,
)
EVENTS = st.fixed_dictionaries(
    {},
    optional={
        "sensor_id": JSON_VALUES | st.text(min_size=1),
        "zone": JSON_VALUES | st.sampled_from(["aisle-3", "produce", "entrance"]),
        "intensity": JSON_VALUES | st.floats(min_value=0, max_value=1),
        "timestamp": JSON_VALUES | st.floats(allow_nan=False) | st.integers(),
    },
)
SHIPPED = start_function("motion")


@settings(max_examples=300, database=None, deadline=None)
@given(body=EVENTS | JSON_VALUES)
def test_any_event_gets_an_answer_or_http_error(body: Any) -> None:
    try:
        result = SHIPPED.handle(json_event(body))
    except HTTPError as exc:
        assert exc.http_status == 400
    else:
        assert set(result) == {"screen", "ad", "reason"}
        assert set(result["ad"]) == {"id", "title", "media"}


# The table ----------------------------------------------------------------------------------


def _edit(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """Set (or with ``...`` delete) a dotted path in a copy of the table."""

    def edit(table: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = table
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        if value is ...:
            del node[last]
        else:
            node[int(last) if last.isdigit() else last] = value

    return edit


AD0 = "zones.aisle-3.ads.0"
AD = "zones.aisle-3.ads[0]"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_edit(f"{AD0}.min_intesity", 0.1), f"{AD}: unknown key 'min_intesity'"),
        (_edit(f"{AD0}.media", "media/ads/x.mp4"), f"{AD}.media must be a URL path"),
        (_edit(f"{AD0}.id", ""), f"{AD}.id must be a non-empty string"),
        (_edit(f"{AD0}.title", ...), f"{AD}.title must be a non-empty string"),
        (_edit(f"{AD0}.min_intensity", 1.5), f"{AD}.min_intensity must be"),
        (_edit(f"{AD0}.min_intensity", True), f"{AD}.min_intensity must be"),
        (_edit(f"{AD0}.hours", [5, 5]), f"{AD}.hours must be"),
        (_edit(f"{AD0}.hours", [0, 25]), f"{AD}.hours must be"),
        (_edit(f"{AD0}.hours", [6]), f"{AD}.hours must be"),
        (_edit(f"{AD0}.hours", [6.5, 9]), f"{AD}.hours must be"),
        (_edit("zones.aisle-3.screen", ...), "zones.aisle-3.screen must be a non-empty string"),
        (_edit("zones.aisle-3.ads", {}), "zones.aisle-3.ads must be a list"),
        (_edit("zones.aisle-3.audio", True), "zones.aisle-3: unknown key 'audio'"),
        (_edit("zones", []), "'zones' must be an object"),
        (_edit("fallback", ...), "fallback must be an object"),
        (_edit("fallback.hours", [6, 9]), "fallback: unknown key 'hours'"),
        (_edit("timezone", "Mars/Olympus_Mons"), "timezone must be an IANA time zone name"),
        (_edit("timezone", 2), "timezone must be an IANA time zone name"),
        (_edit("screens", {}), "unknown key 'screens'"),
    ],
)  # fmt: skip
def test_bad_table_stops_init_naming_the_key(
    start_motion: Callable[..., ModuleType], edit: Callable[[dict[str, Any]], None], message: str
) -> None:
    table = copy.deepcopy(TABLE)
    edit(table)
    with pytest.raises(ValueError, match="^" + re.escape("ads.json: " + message)):
        start_motion(table)


def test_table_that_is_not_json(function_factory: StartFunction, tmp_path: Path) -> None:
    (tmp_path / "ads.json").write_text("{zones:", encoding="utf-8")
    with pytest.raises(ValueError, match=r"^ads\.json: not valid JSON"):
        function_factory("motion", root=tmp_path)
