"""Weight: a shelf weight-sensor reading becomes an item count and a restock flag.

Event (JSON object; other keys are ignored)::

    {"shelf_id": "s-12",     # required, non-empty string, a shelf of shelves.json
     "weight_g": 2431.5,     # required, number >= 0: what the shelf's load cell reads, grams
     "tare_g": 380.0,        # optional, number >= 0: empty-shelf weight; default from the table
     "sku": "4006381333931"} # optional, string: what the sensor believes is stocked

``null`` for an optional field means the field is absent.

Response, status 200::

    {"shelf_id": "s-12", "sku": "4006381333931", "count": 5, "restock": false,
     "capacity": 12, "fill": 0.417, "anomaly": false}

``count`` is ``round((weight_g - tare_g) / unit_weight_g)``, never below 0 (Python's round:
exact halves go to the even count, and are anomalies anyway). ``restock`` is
``count < restock_below``; ``fill`` is ``count / capacity`` rounded to 3 places. ``anomaly``
is true when the net weight is more than a quarter of a unit away from ``count`` whole units
(a misplaced item, an object left on the shelf, a tare that drifted) or when ``count`` is
above ``capacity``.

Errors: a missing or malformed field is a 400 naming the field; an unknown shelf is a 404; an
``sku`` that is not the shelf's is a 409 (the planogram and the sensor disagree, and the count
would be computed with the wrong unit weight).

The table (shelves.json in the function's folder) is read and checked once per worker in
``init``; a malformed table stops the function from starting, with the bad key in the error.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

from runtime import Context, Event, HTTPError

TABLE_FILE = "shelves.json"
ANOMALY_TOLERANCE = 0.25  # of one unit's weight


class Reading(TypedDict):
    shelf_id: str
    sku: str
    count: int
    restock: bool
    capacity: int
    fill: float
    anomaly: bool


@dataclass(frozen=True)
class Shelf:
    sku: str
    unit_weight_g: float
    tare_g: float
    restock_below: int
    capacity: int


_shelves: dict[str, Shelf] | None = None


def init(context: Context) -> None:
    """Load and check shelves.json from the function's folder, once per worker."""
    global _shelves  # noqa: PLW0603 — per-worker state, set once after fork
    _shelves = load_table(context.root / TABLE_FILE)


def handle(event: Event) -> Reading:
    """Turn one weight reading into a count; see the module docstring for the rules."""
    if _shelves is None:
        raise RuntimeError("weight handler called before init(context)")
    data = event.json()
    if not isinstance(data, dict):
        raise HTTPError(400, "request body must be a JSON object")
    shelf_id = required_text(data, "shelf_id")
    weight_g = required_grams(data, "weight_g")
    tare_g = optional_grams(data, "tare_g")
    sku = optional_text(data, "sku")
    shelf = _shelves.get(shelf_id)
    if shelf is None:
        raise HTTPError(404, f"unknown shelf '{shelf_id}'")
    if sku is not None and sku != shelf.sku:
        raise HTTPError(409, f"sku '{sku}' is not stocked on shelf '{shelf_id}' ({shelf.sku})")
    return count_items(shelf_id, shelf, weight_g, shelf.tare_g if tare_g is None else tare_g)


def count_items(shelf_id: str, shelf: Shelf, weight_g: float, tare_g: float) -> Reading:
    """The reading for a net weight on one shelf."""
    net_g = weight_g - tare_g
    units = net_g / shelf.unit_weight_g
    if not math.isfinite(units):  # a huge weight over a tiny unit weight
        raise HTTPError(400, "field 'weight_g' is too large for this shelf")
    count = max(0, round(units))
    off_by_g = abs(net_g - count * shelf.unit_weight_g)
    return {
        "shelf_id": shelf_id,
        "sku": shelf.sku,
        "count": count,
        "restock": count < shelf.restock_below,
        "capacity": shelf.capacity,
        "fill": round(count / shelf.capacity, 3),
        "anomaly": off_by_g > ANOMALY_TOLERANCE * shelf.unit_weight_g or count > shelf.capacity,
    }


# Event fields ------------------------------------------------------------------------------


def required_text(data: dict[str, Any], name: str) -> str:
    if name not in data:
        raise HTTPError(400, f"missing field '{name}'")
    value = optional_text(data, name)
    if not value:
        raise HTTPError(400, f"field '{name}' must be a non-empty string")
    return value


def optional_text(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is None or isinstance(value, str):
        return value
    raise HTTPError(400, f"field '{name}' must be a string")


def required_grams(data: dict[str, Any], name: str) -> float:
    """A weight field in grams that must be there: a finite number >= 0."""
    if name not in data:
        raise HTTPError(400, f"missing field '{name}'")
    value = data[name]
    if is_weight(value):
        return float(value)
    raise HTTPError(400, f"field '{name}' must be a number >= 0 (grams)")


def optional_grams(data: dict[str, Any], name: str) -> float | None:
    """A weight field in grams that may be absent or null."""
    return None if data.get(name) is None else required_grams(data, name)


def is_weight(value: Any) -> bool:
    """A finite, non-negative int or float that is not a bool (JSON allows NaN and 1e999)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value) and value >= 0
    except OverflowError:  # an int too large for a float
        return False


# The table ---------------------------------------------------------------------------------

SHELF_KEYS = {"sku", "unit_weight_g", "tare_g", "restock_below", "capacity"}


def load_table(path: Path) -> dict[str, Shelf]:
    """Read and check the shelf table; a bad table raises ValueError naming the key."""
    where = path.name
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ValueError(f"{where}: not valid JSON: {exc}") from None
    check_keys(data, {"shelves"}, where)
    shelves = data.get("shelves")
    if not isinstance(shelves, dict):
        raise ValueError(f"{where}: 'shelves' must be an object of shelf id -> shelf")
    return {name: parse_shelf(shelf, f"{where}: shelves.{name}") for name, shelf in shelves.items()}


def parse_shelf(data: Any, where: str) -> Shelf:
    check_keys(data, SHELF_KEYS, where)
    missing = sorted(SHELF_KEYS - set(data))
    if missing:
        raise ValueError(f"{where}: missing key '{missing[0]}'")
    sku, unit, tare = data["sku"], data["unit_weight_g"], data["tare_g"]
    if not isinstance(sku, str) or not sku:
        raise ValueError(f"{where}.sku must be a non-empty string")
    if not is_weight(unit) or unit == 0:
        raise ValueError(f"{where}.unit_weight_g must be a number > 0")
    if not is_weight(tare):
        raise ValueError(f"{where}.tare_g must be a number >= 0")
    capacity = whole_number(data, "capacity", where, minimum=1)
    restock_below = whole_number(data, "restock_below", where, minimum=0)
    if restock_below > capacity:
        raise ValueError(f"{where}.restock_below must not be above capacity ({capacity})")
    return Shelf(sku, float(unit), float(tare), restock_below, capacity)


def whole_number(data: dict[str, Any], name: str, where: str, *, minimum: int) -> int:
    value = data[name]
    if isinstance(value, int) and not isinstance(value, bool) and value >= minimum:
        return value
    raise ValueError(f"{where}.{name} must be a whole number >= {minimum}")


def check_keys(data: Any, allowed: set[str], where: str) -> None:
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be an object")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown key '{unknown[0]}' (allowed: {sorted(allowed)})")
