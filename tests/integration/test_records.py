"""The backup of every call to the cloud, with real parts: an edge node and a `--role cloud`
node sharing a real Redis. Calls on the edge reach the cloud's record store; while the cloud
is stopped the edge keeps serving and its records wait in its Redis stream; when the cloud
comes back (same data dir) every record arrives once, in order. Over the quota, the oldest
are dropped, whole stream entries at a time — and counted. A node that cannot open its
record store says so in one line and exits 3."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.conftest import NodeProcess, wait_for
from tests.integration.mesh_helpers import Mesh, StartNode, admin_get, write_function
from tests.integration.test_mesh import new_mesh

pytestmark = pytest.mark.slow

DELIVERY_S = 30.0


@pytest.fixture
def mesh(
    start_node: StartNode, tmp_path: Path, redis_url: str, redis_prefix: str
) -> Iterator[Mesh]:
    mesh = new_mesh(start_node, tmp_path, redis_url, redis_prefix)
    yield mesh
    mesh.stop()


def start_cloud(mesh: Mesh, data_dir: Path | None = None) -> NodeProcess:
    extra = ["--data-dir", str(data_dir)] if data_dir is not None else []
    return mesh.start(None, "--node", "cloud", "--role", "cloud", *extra)


def call(node: NodeProcess, call_id: str) -> httpx.Response:
    reply = httpx.post(
        f"{node.url}/function/echo", content=b"ping", headers={"X-Call-Id": call_id}, timeout=10
    )
    assert reply.status_code == 200, reply.text
    return reply


def stored(cloud: NodeProcess, node: str) -> list[dict[str, Any]]:
    """Every record of ``node`` the cloud holds, in arrival order."""
    reply = admin_get(cloud, f"/system/records?node={node}&limit=10000")
    assert reply.status_code == 200, reply.text
    records: list[dict[str, Any]] = reply.json()["records"]
    return records


def ids(records: list[dict[str, Any]], prefix: str) -> list[str]:
    return [r["call_id"] for r in records if r["call_id"].startswith(prefix)]


def status(node: NodeProcess) -> dict[str, Any]:
    reply = admin_get(node, "/system/records/status")
    assert reply.status_code == 200, reply.text
    result: dict[str, Any] = reply.json()
    return result


def test_records_wait_while_the_cloud_is_stopped_then_arrive_once_in_order(
    mesh: Mesh, redis_url: str
) -> None:
    manifest = write_function(mesh.project, "echo", "v1")
    cloud = start_cloud(mesh)
    edge = mesh.start(manifest, "--node", "edge")
    mesh.wait_serving("echo", "v1", [edge])

    before = [f"before-{i}" for i in range(10)]
    for call_id in before:
        call(edge, call_id)
    wait_for(lambda: ids(stored(cloud, "edge"), "before-") == before, DELIVERY_S, 0.1, "10 records")
    first = next(r for r in stored(cloud, "edge") if r["call_id"] == "before-0")
    assert first["function"] == "echo" and first["served_by"] == "local"
    assert (first["status"], first["request_bytes"]) == (200, 4)
    assert first["response_bytes"] > 0 and len(first["digest"]) == 64
    refused = admin_get(edge, "/system/records")
    assert refused.status_code == 404 and "stored on the cloud node" in refused.text
    for query in ("after=1e300", "after=99999999999999999999", "limit=1.5", "since=1e300"):
        bad = admin_get(cloud, f"/system/records?{query}")
        assert bad.status_code == 400 and query.split("=")[0] in bad.text, (query, bad.text)

    cloud.kill_group()
    during = [f"during-{i}" for i in range(20)]
    for call_id in during:
        assert call(edge, call_id).headers["x-served-by"] == "local"
    count_key = f"{mesh.prefix}:records-count:edge"  # the stream's count of its records
    client = redis.Redis.from_url(redis_url)
    try:
        wait_for(lambda: int(client.get(count_key) or 0) >= 20, DELIVERY_S, 0.1, "buffered")
    finally:
        client.close()
    waiting = status(edge)
    assert waiting["waiting"] >= 20 and waiting["dropped"] == 0, waiting

    cloud = start_cloud(mesh, cloud.data_dir)
    wanted = before + during
    wait_for(
        lambda: set(ids(stored(cloud, "edge"), "during-")) == set(during),
        DELIVERY_S,
        0.2,
        "the buffered records to arrive",
    )
    records = stored(cloud, "edge")
    mine = [r["call_id"] for r in records if re.fullmatch(r"(before|during)-\d+", r["call_id"])]
    assert mine == wanted  # each once, in the order the edge answered them
    every = [r["call_id"] for r in records]
    assert len(every) == len(set(every))
    wait_for(lambda: status(edge)["waiting"] == 0, DELIVERY_S, 0.1, "an empty stream")
    assert status(edge)["dropped"] == 0

    call(cloud, "on-the-cloud")  # the cloud records the calls it answers itself
    wait_for(lambda: ids(stored(cloud, "cloud"), "on-the-cloud") != [], DELIVERY_S, 0.1, "own")


def test_over_the_quota_the_oldest_records_are_dropped_and_counted(mesh: Mesh) -> None:
    manifest = write_function(mesh.project, "echo", "v1")
    edge = mesh.start(manifest, "--node", "edge", "--records-quota", "5")
    mesh.wait_serving("echo", "v1", [edge])

    calls = [f"call-{i}" for i in range(12)]
    for call_id in calls:
        call(edge, call_id)

    def all_written() -> bool:
        current = status(edge)
        return current["in_memory"] == 0 and current["written"] >= len(calls)

    wait_for(all_written, DELIVERY_S, 0.1, "the records to be written")
    current = status(edge)
    waiting = current["waiting"]  # whole entries (of at most 5 here) are dropped
    assert 0 < waiting <= 5 and current["cloud"] is None, current
    assert current["dropped"] == current["written"] - waiting, current
    metrics = httpx.get(edge.url + "/metrics", timeout=10).text
    assert f"edgefaas_records_dropped_total {float(current['dropped'])}" in metrics
    assert "call records:" in edge.log() and "dropped" in edge.log()

    cloud = start_cloud(mesh)
    wait_for(lambda: len(stored(cloud, "edge")) == waiting, DELIVERY_S, 0.1, "the kept records")
    assert [r["call_id"] for r in stored(cloud, "edge")] == calls[-waiting:]


def test_a_cloud_node_that_cannot_open_its_record_store_exits_3_saying_why(
    mesh: Mesh, tmp_path: Path
) -> None:
    data_dir = tmp_path / "bad-data"
    (data_dir / "records.sqlite3").mkdir(parents=True)  # not a database file

    cloud = mesh.start(
        None, "--node", "cloud", "--role", "cloud", "--data-dir", str(data_dir), wait=False
    )

    assert cloud.process.wait(timeout=30) == 3, cloud.log()
    line = next(text for text in cloud.log().splitlines() if "record store" in text)
    assert str(data_dir / "records.sqlite3") in line and "unable to open" in line, cloud.log()
    assert "Traceback" not in cloud.log()
