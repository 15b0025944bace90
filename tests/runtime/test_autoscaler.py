from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runtime.autoscaler import retirable, workers_wanted


@pytest.mark.parametrize(
    ("demand", "concurrency", "min_workers", "max_workers", "wanted"),
    [
        pytest.param(0, 1, 0, 4, 0, id="no-demand-scales-to-zero"),
        pytest.param(0, 1, 2, 4, 2, id="no-demand-keeps-min"),
        pytest.param(1, 1, 0, 4, 1, id="one-call"),
        pytest.param(3, 1, 0, 4, 3, id="one-worker-per-call"),
        pytest.param(4, 1, 0, 4, 4, id="exactly-max"),
        pytest.param(9, 1, 0, 4, 4, id="capped-at-max"),
        pytest.param(3, 1, 5, 10, 5, id="min-above-need"),
        pytest.param(4, 4, 0, 10, 1, id="concurrency-fills-one-worker"),
        pytest.param(5, 4, 0, 10, 2, id="concurrency-rounds-up"),
        pytest.param(9, 4, 0, 10, 3, id="concurrency-rounds-up-again"),
        pytest.param(100, 8, 1, 5, 5, id="concurrency-capped-at-max"),
        pytest.param(1, 8, 0, 5, 1, id="concurrency-one-call"),
    ],
)
def test_workers_wanted(
    demand: int, concurrency: int, min_workers: int, max_workers: int, wanted: int
) -> None:
    assert workers_wanted(demand, concurrency, min_workers, max_workers) == wanted


@given(
    demand=st.integers(0, 10_000),
    concurrency=st.integers(1, 64),
    min_workers=st.integers(0, 16),
    extra=st.integers(0, 64),
)
def test_workers_wanted_gives_every_call_a_slot_within_bounds(
    demand: int, concurrency: int, min_workers: int, extra: int
) -> None:
    max_workers = min_workers + extra
    wanted = workers_wanted(demand, concurrency, min_workers, max_workers)

    assert min_workers <= wanted <= max_workers
    if wanted < max_workers:
        assert wanted * concurrency >= demand
    if wanted > min_workers:
        assert (wanted - 1) * concurrency < demand  # no worker more than needed
    assert wanted == max(min_workers, min(max_workers, math.ceil(demand / concurrency)))


@pytest.mark.parametrize(
    ("idle_for_s", "live", "min_workers", "idle_timeout_s", "count"),
    [
        pytest.param([], 3, 0, 5.0, 0, id="nobody-idle"),
        pytest.param([1.0, 4.99], 2, 0, 5.0, 0, id="idle-below-window"),
        pytest.param([5.0], 1, 0, 5.0, 1, id="idle-exactly-the-window"),
        pytest.param([6.0, 60.0, 1.0], 3, 0, 5.0, 2, id="idle-above-window"),
        pytest.param([10.0, 10.0, 10.0], 3, 2, 5.0, 1, id="never-below-min"),
        pytest.param([10.0, 10.0], 2, 2, 5.0, 0, id="at-min"),
        pytest.param([10.0], 1, 3, 5.0, 0, id="below-min"),
        pytest.param([10.0, 10.0], 5, 1, 5.0, 2, id="busy-workers-stay"),
        pytest.param([0.0, 0.0], 2, 0, 0.0, 2, id="zero-window"),
    ],
)
def test_retirable(
    idle_for_s: list[float], live: int, min_workers: int, idle_timeout_s: float, count: int
) -> None:
    assert retirable(idle_for_s, live, min_workers, idle_timeout_s) == count
