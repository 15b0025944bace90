"""The example functions of the repository's own ``functions.yaml``, served by a real node
started in the repository root, called through ``/function/<name>`` and their trigger paths.

Expected answers are worked out from the handlers' docstrings and their data tables
(``functions/motion/ads.json``, ``functions/weight/shelves.json``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.conftest import REPO, NodeProcess

pytestmark = pytest.mark.slow

StartNode = Callable[..., NodeProcess]

# aisle-3 at 06:15 store time (UTC): coffee-am (min 0.2, 6-11) and biscuits (min 0.5, all day)
# qualify at intensity 0.55; the higher min_intensity wins.
MOTION_EVENT = {
    "sensor_id": "aisle-3-cam",
    "zone": "aisle-3",
    "intensity": 0.55,
    "timestamp": "2024-05-01T08:15:00+02:00",
}
MOTION_CHOICE = {
    "screen": "scr-aisle-3",
    "ad": {"id": "biscuits", "title": "Biscuits 2 for 1", "media": "/media/ads/biscuits.mp4"},
    "reason": "intensity 0.55 meets min_intensity 0.5 at hour 6 in zone 'aisle-3'",
}
# s-12: (2431.5 g - 380 g tare) / 410 g a unit = 5.004 units
WEIGHT_EVENT = {"shelf_id": "s-12", "weight_g": 2431.5}
WEIGHT_READING = {
    "shelf_id": "s-12",
    "sku": "4006381333931",
    "count": 5,
    "restock": False,
    "capacity": 12,
    "fill": 0.417,
    "anomaly": False,
}


@pytest.fixture
def client(start_node: StartNode) -> Iterator[httpx.Client]:
    node = start_node(None, cwd=REPO)  # `edgefaas up` finds ./functions.yaml by itself
    with node.client() as client:
        yield client


def test_echo_returns_the_body_on_both_paths(client: httpx.Client) -> None:
    direct = client.post(
        "/function/echo", content=b'{"a": 1}', headers={"Content-Type": "application/json"}
    )
    triggered = client.put("/echo", content=b"\x00binary\xff")
    refused = client.delete("/echo")

    assert direct.status_code == 200
    assert direct.content == b'{"a": 1}'
    assert direct.headers["content-type"] == "application/json"
    assert triggered.status_code == 200
    assert triggered.content == b"\x00binary\xff"
    assert triggered.headers["content-type"] == "application/octet-stream"
    assert refused.status_code == 405
    assert "GET" in refused.headers["allow"]


def test_motion_picks_the_ad_for_an_event(client: httpx.Client) -> None:
    for path in ("/function/motion", "/sensors/motion"):
        chosen = client.post(path, json=MOTION_EVENT)
        unknown_zone = client.post(path, json={**MOTION_EVENT, "zone": "garden"})
        missing = client.post(path, json={"sensor_id": "aisle-3-cam", "zone": "aisle-3"})
        out_of_range = client.post(path, json={**MOTION_EVENT, "intensity": 1.5})

        assert chosen.status_code == 200, (path, chosen.text)
        assert chosen.json() == MOTION_CHOICE
        assert unknown_zone.status_code == 200
        assert unknown_zone.json()["screen"] is None
        assert unknown_zone.json()["ad"]["id"] == "house-welcome"
        assert "garden" in unknown_zone.json()["reason"]
        assert missing.status_code == 400
        assert missing.json()["error"]["message"] == "missing field 'intensity'"
        assert out_of_range.status_code == 400
        assert "'intensity'" in out_of_range.json()["error"]["message"]
    assert_post_only(client, "/sensors/motion")


def test_weight_counts_items_on_a_shelf(client: httpx.Client) -> None:
    for path in ("/function/weight", "/sensors/weight"):
        reading = client.post(path, json=WEIGHT_EVENT)
        low = client.post(path, json={"shelf_id": "s-12", "weight_g": 1200.0, "tare_g": 380.0})
        missing = client.post(path, json={"shelf_id": "s-12"})
        unknown = client.post(path, json={"shelf_id": "s-99", "weight_g": 100})
        wrong_sku = client.post(path, json={**WEIGHT_EVENT, "sku": "123"})

        assert reading.status_code == 200, (path, reading.text)
        assert reading.json() == WEIGHT_READING
        assert low.json()["count"] == 2  # (1200 - 380) / 410
        assert low.json()["restock"] is True  # below restock_below 4
        assert missing.status_code == 400
        assert missing.json()["error"]["message"] == "missing field 'weight_g'"
        assert unknown.status_code == 404
        assert "s-99" in unknown.json()["error"]["message"]
        assert wrong_sku.status_code == 409
    assert_post_only(client, "/sensors/weight")


def assert_post_only(client: httpx.Client, path: str) -> None:
    refused = client.get(path)
    assert refused.status_code == 405
    assert refused.headers["allow"] == "POST"
    assert refused.json()["error"]["code"] == "method_not_allowed"
