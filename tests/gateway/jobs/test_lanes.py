"""Which lane an async call goes to, and which lanes each node drains, by ``spill.to``."""

from __future__ import annotations

import pytest

from gateway.jobs.lanes import accept_lane, drained_lanes
from gateway.jobs.layout import lane, lane_function

EVERYWHERE = ("peers", "cloud")
ALL_LANES = {"f", "f@a", "f@b", "f@cloud", "g", "g@a"}


def test_a_lane_names_its_function_and_maybe_its_node() -> None:
    assert lane("f") == "f" and lane("f", "a.b") == "f@a.b"
    assert lane_function("f@a.b") == "f" and lane_function("f") == "f"


@pytest.mark.parametrize(
    ("spill_to", "cloud", "expected"),
    [
        (EVERYWHERE, False, "f"),
        (("peers",), False, "f"),
        (("cloud",), False, "f@a"),
        ((), False, "f@a"),
        (EVERYWHERE, True, "f@a"),  # the cloud keeps what it accepts
        ((), True, "f@a"),
    ],
)
def test_a_call_goes_to_the_shared_lane_only_when_peers_may_run_it(
    spill_to: tuple[str, ...], cloud: bool, expected: str
) -> None:
    assert accept_lane("f", spill_to, "a", cloud) == expected


@pytest.mark.parametrize("spill_to", [EVERYWHERE, ("peers",)])
def test_an_edge_node_drains_the_shared_lane_first(spill_to: tuple[str, ...]) -> None:
    assert drained_lanes("f", spill_to, "a", False, ALL_LANES) == ["f", "f@a"]
    assert drained_lanes("f", spill_to, "a", False, set()) == ["f"]  # it waits there


@pytest.mark.parametrize("spill_to", [(), ("cloud",)])
def test_an_edge_node_drains_its_own_lane_first_and_never_a_peers(
    spill_to: tuple[str, ...],
) -> None:
    assert drained_lanes("f", spill_to, "a", False, ALL_LANES) == ["f@a", "f"]
    assert drained_lanes("f", spill_to, "a", False, {"f@b"}) == ["f@a"]


def test_the_cloud_drains_the_shared_lane_of_a_function_that_may_go_there() -> None:
    assert drained_lanes("f", EVERYWHERE, "cloud", True, ALL_LANES) == ["f", "f@cloud"]
    assert drained_lanes("f", EVERYWHERE, "cloud", True, set()) == ["f", "f@cloud"]


def test_the_cloud_drains_every_edge_lane_of_a_function_that_may_go_only_there() -> None:
    assert drained_lanes("f", ("cloud",), "cloud", True, ALL_LANES) == [
        "f",
        "f@cloud",
        "f@a",
        "f@b",
    ]
    assert drained_lanes("f", ("cloud",), "cloud", True, set()) == ["f", "f@cloud"]


@pytest.mark.parametrize("spill_to", [(), ("peers",)])
def test_the_cloud_drains_only_its_own_lane_of_a_function_kept_off_it(
    spill_to: tuple[str, ...],
) -> None:
    assert drained_lanes("f", spill_to, "cloud", True, ALL_LANES) == ["f@cloud"]
    assert drained_lanes("f", spill_to, "cloud", True, set()) == ["f@cloud"]
