"""Motion: a motion-sensor event picks the ad that the zone's screen shows next.

Event (JSON object; other keys are ignored)::

    {"sensor_id": "aisle-3-cam",     # required, non-empty string
     "zone": "aisle-3",              # required, non-empty string, a zone of ads.json
     "intensity": 0.72,              # required, number from 0 to 1 (how close/strong)
     "timestamp": "2024-05-01T08:15:00+02:00"}   # optional, see below

``timestamp`` is an ISO-8601 string or epoch seconds (a number). It is converted to the
store's time zone (``timezone`` in ads.json, an IANA name; default UTC); an ISO time without
an offset is taken as store time already. Without a timestamp (or with ``null``) the node's
clock decides the hour.

Response, status 200::

    {"screen": "scr-aisle-3",
     "ad": {"id": "coffee-am", "title": "Fresh roast coffee", "media": "/media/ads/coffee.mp4"},
     "reason": "intensity 0.72 meets min_intensity 0.5 at hour 8 in zone 'aisle-3'"}

Selection, deterministic (the same event always gives the same ad): among the zone's ads
whose ``min_intensity`` is at most the event's intensity and whose ``hours`` ``[start, end)``
contain the store-time hour (a range with start > end wraps past midnight; no ``hours`` means
all day), the one with the highest ``min_intensity`` wins — stronger motion means a shopper
close to the screen, who gets the more specific ad. Ties go to the ad listed first.

When nothing in a known zone qualifies, the screen shows the table's ``fallback`` (house) ad:
a screen in the store never goes blank. An unknown zone is also answered 200 with the house
ad, but with ``"screen": null`` — cameras are added and zones renamed more often than the ad
table is updated, and a sensor hub should not see errors (or retry) for that; the ``reason``
names the zone so the gap shows up in the logs. The display controller ignores a null screen.

A missing or malformed field is a 400 whose message names the field.

The table (ads.json in the function's folder) is read and checked once per worker in
``init``; a malformed table stops the function from starting, with the bad key in the error.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any, TypedDict
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from runtime import Context, Event, HTTPError

TABLE_FILE = "ads.json"


class AdView(TypedDict):
    id: str
    title: str
    media: str


class Choice(TypedDict):
    screen: str | None
    ad: AdView
    reason: str


@dataclass(frozen=True)
class Ad:
    id: str
    title: str
    media: str
    min_intensity: float
    hours: tuple[int, int] | None

    def shows_at(self, hour: int) -> bool:
        if self.hours is None:
            return True
        start, end = self.hours
        if start < end:
            return start <= hour < end
        return hour >= start or hour < end  # wraps past midnight, e.g. [21, 6)

    def view(self) -> AdView:
        return {"id": self.id, "title": self.title, "media": self.media}


@dataclass(frozen=True)
class Zone:
    screen: str
    ads: tuple[Ad, ...]


@dataclass(frozen=True)
class AdTable:
    timezone: tzinfo
    fallback: Ad
    zones: dict[str, Zone]


_table: AdTable | None = None


def init(context: Context) -> None:
    """Load and check ads.json from the function's folder, once per worker."""
    global _table  # noqa: PLW0603 — per-worker state, set once after fork
    path = context.root / TABLE_FILE
    _table = load_table(path)


def handle(event: Event) -> Choice:
    """Pick the ad for the event's zone; see the module docstring for the rules."""
    if _table is None:
        raise RuntimeError("motion handler called before init(context)")
    data = event.json()
    if not isinstance(data, dict):
        raise HTTPError(400, "request body must be a JSON object")
    required_text(data, "sensor_id")
    zone_name = required_text(data, "zone")
    intensity = required_intensity(data)
    hour = store_hour(data.get("timestamp"), _table.timezone)
    return choose(_table, zone_name, intensity, hour)


def choose(table: AdTable, zone_name: str, intensity: float, hour: int) -> Choice:
    """The ad for one zone at one intensity and store-time hour."""
    zone = table.zones.get(zone_name)
    if zone is None:
        reason = f"zone '{zone_name}' is not in {TABLE_FILE}; house ad, no screen"
        return {"screen": None, "ad": table.fallback.view(), "reason": reason}
    eligible = [ad for ad in zone.ads if ad.min_intensity <= intensity and ad.shows_at(hour)]
    # max() keeps the first of equal keys, so ties go to the ad listed first.
    best = max(eligible, key=lambda ad: ad.min_intensity, default=None)
    if best is None:
        reason = f"no ad in zone '{zone_name}' for intensity {intensity:g} at hour {hour}; house ad"
        return {"screen": zone.screen, "ad": table.fallback.view(), "reason": reason}
    reason = (
        f"intensity {intensity:g} meets min_intensity {best.min_intensity:g}"
        f" at hour {hour} in zone '{zone_name}'"
    )
    return {"screen": zone.screen, "ad": best.view(), "reason": reason}


# Event fields ------------------------------------------------------------------------------


def required_text(data: dict[str, Any], name: str) -> str:
    if name not in data:
        raise HTTPError(400, f"missing field '{name}'")
    value = data[name]
    if not isinstance(value, str) or not value:
        raise HTTPError(400, f"field '{name}' must be a non-empty string")
    return value


def required_intensity(data: dict[str, Any]) -> float:
    if "intensity" not in data:
        raise HTTPError(400, "missing field 'intensity'")
    value = data["intensity"]
    # bool is an int to Python, but true/false is not an intensity; NaN fails both bounds.
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1:
        return float(value)
    raise HTTPError(400, "field 'intensity' must be a number between 0 and 1")


def store_hour(timestamp: Any, zone: tzinfo) -> int:
    """The hour (0-23) in store time of an event timestamp; the clock's when there is none."""
    if timestamp is None:
        return datetime.now(zone).hour
    try:
        if isinstance(timestamp, str):
            moment = datetime.fromisoformat(timestamp)
            return (moment if moment.tzinfo is None else moment.astimezone(zone)).hour
        if isinstance(timestamp, int | float) and not isinstance(timestamp, bool):
            return datetime.fromtimestamp(timestamp, zone).hour
    except (ValueError, OverflowError, OSError):
        pass
    raise HTTPError(400, "field 'timestamp' must be an ISO-8601 string or epoch seconds")


# The table ---------------------------------------------------------------------------------


def load_table(path: Path) -> AdTable:
    """Read and check the ad table; a bad table raises ValueError naming the key."""
    where = path.name
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValueError(f"{where}: not valid JSON: {exc}") from None
    check_keys(data, {"timezone", "fallback", "zones"}, where)
    zones = data.get("zones")
    if not isinstance(zones, dict):
        raise ValueError(f"{where}: 'zones' must be an object of zone name -> zone")
    fallback = data.get("fallback")
    check_keys(fallback, {"id", "title", "media"}, f"{where}: fallback")
    return AdTable(
        timezone=parse_timezone(data.get("timezone", "UTC"), f"{where}: timezone"),
        fallback=parse_ad(fallback, f"{where}: fallback"),
        zones={name: parse_zone(zone, f"{where}: zones.{name}") for name, zone in zones.items()},
    )


def parse_timezone(name: Any, where: str) -> tzinfo:
    if name == "UTC":
        return UTC  # needs no time zone database
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, TypeError, ValueError):
        raise ValueError(f"{where} must be an IANA time zone name, got {name!r}") from None


def parse_zone(data: Any, where: str) -> Zone:
    check_keys(data, {"screen", "ads"}, where)
    ads = data.get("ads")
    if not isinstance(ads, list):
        raise ValueError(f"{where}.ads must be a list of ads")
    return Zone(
        screen=table_text(data, "screen", where),
        ads=tuple(parse_ad(ad, f"{where}.ads[{index}]") for index, ad in enumerate(ads)),
    )


def parse_ad(data: Any, where: str) -> Ad:
    check_keys(data, {"id", "title", "media", "min_intensity", "hours"}, where)
    media = table_text(data, "media", where)
    if not media.startswith("/"):
        raise ValueError(f"{where}.media must be a URL path starting with '/', got {media!r}")
    min_intensity = data.get("min_intensity", 0.0)
    if not (is_number(min_intensity) and 0 <= min_intensity <= 1):
        raise ValueError(f"{where}.min_intensity must be a number between 0 and 1")
    return Ad(
        id=table_text(data, "id", where),
        title=table_text(data, "title", where),
        media=media,
        min_intensity=float(min_intensity),
        hours=parse_hours(data.get("hours"), f"{where}.hours"),
    )


def parse_hours(value: Any, where: str) -> tuple[int, int] | None:
    if value is None:
        return None
    if (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(hour, int) and not isinstance(hour, bool) for hour in value)
        and 0 <= value[0] <= 23
        and 1 <= value[1] <= 24
        and value[0] != value[1]
    ):
        return value[0], value[1]
    raise ValueError(f"{where} must be [start, end] whole hours, start 0-23, end 1-24, not equal")


def table_text(data: dict[str, Any], name: str, where: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where}.{name} must be a non-empty string")
    return value


def check_keys(data: Any, allowed: set[str], where: str) -> None:
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be an object")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown key '{unknown[0]}' (allowed: {sorted(allowed)})")


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
