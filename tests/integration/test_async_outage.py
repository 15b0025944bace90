"""Asynchronous calls across an outage of the mesh's Redis (a real embedded Redis of the
test's own, saved and stopped, then started again from its file): runs that end while Redis
is down keep their outcome until it is back, and an outage longer than a lease — every
lease lapses meanwhile — starts no run a second time.

The function records its runs in another Redis (the test session's), which stays up.
"""

from __future__ import annotations

import time
import uuid

import pytest
import redis

from registry.redis_server import EmbeddedRedis
from tests.conftest import wait_for
from tests.integration.async_helpers import (
    accepted,
    answer,
    call_status,
    enqueue,
    result_json,
    wait_status,
    write_async_function,
)
from tests.integration.mesh_helpers import Mesh
from tests.integration.test_mesh import (  # noqa: F401 (fixtures)
    outage_mesh,
    own_redis,
    save_and_stop,
)

pytestmark = pytest.mark.slow

OUTAGE_S = 6.0  # longer than a lease (4 s): every lease lapses while Redis is down
RUN_MS = 2000  # the runs started before the outage end during it
CALLS = 4  # two run before the outage (two workers), two wait in the queue
FINISH_S = 60.0
SETTLE_S = 2.0  # after the last call finished: time for a second run to show


def test_calls_running_across_a_redis_outage_longer_than_a_lease_finish_once_each(
    outage_mesh: Mesh,  # noqa: F811
    own_redis: EmbeddedRedis,  # noqa: F811
    redis_client: redis.Redis,
    redis_url: str,
    redis_prefix: str,
) -> None:
    mesh = outage_mesh
    # The function records its runs in the tests' Redis, through its Unix socket in the
    # test's folder: a sandbox hides both (on purpose), so this node runs without one.
    mesh.sandbox = "off"
    runs_list = f"{redis_prefix}:async-runs:ledger"
    manifest = write_async_function(
        mesh,
        "ledger",
        sleep_ms=RUN_MS,
        pool="{min: 2, max: 2}",
        runs_at=(redis_url, runs_list),
    )
    node = mesh.start(manifest, "--node", "alpha")
    mesh.wait_serving("ledger", "v1", [node])

    keys = [f"key-{i}-{uuid.uuid4().hex[:8]}" for i in range(CALLS)]
    ids = [
        accepted(enqueue(node, "ledger", key.encode(), {"X-Idempotency-Key": key}), "ledger")
        for key in keys
    ]
    started: list[str] = []

    def two_started() -> bool:
        started[:] = [i for i in ids if call_status(node, i)["status"] == "started"]
        return len(started) == 2

    wait_for(two_started, 10, 0.05, "two runs started")
    url = save_and_stop(own_redis)
    time.sleep(OUTAGE_S)  # the two runs end meanwhile; their outcomes wait
    assert redis_client.llen(runs_list) == 2  # they did run (the other Redis is up)
    assert own_redis.start() == url

    views = wait_status(node, ids, "finished", FINISH_S)
    time.sleep(SETTLE_S)
    completed = [item.decode() for item in redis_client.lrange(runs_list, 0, -1)]
    assert sorted(completed) == sorted(keys), completed  # every call ran, none twice
    for call_id, key in zip(ids, keys, strict=True):
        view = views[call_id]
        assert result_json(view) == answer(call_id, key, key), view
        assert view["attempts"] == 1, view  # no run was counted lost, none retried
