"""Call records on an edge node, with a real Redis: the call path's buffer, the node's stream
and its quota, the shipper's cursor — and what the cloud accepts as a batch."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator

import pytest
import redis.asyncio

from gateway.errors import BadRequest
from gateway.peers import Member
from gateway.records import CallRecords, Record, RecordStream, check_batch
from gateway.shipper import PATH, RecordShipper, ShipFailed
from registry.keys import Keys
from registry.meshauth import verify_request
from tests.gateway.stub_server import answer, stub_server

pytestmark = pytest.mark.anyio

MESH_KEY = b"k" * 32


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(redis_url)
    yield client
    await client.aclose()


def stream(client: redis.asyncio.Redis, prefix: str, quota: int = 100) -> RecordStream:
    return RecordStream(client, Keys(prefix), "edge", quota)


def add_calls(records: CallRecords, count: int, first: int = 0, status: int = 200) -> None:
    for i in range(first, first + count):
        records.add(f"call-{i}", "echo", "d1", "local", "free_worker", status, 0.01, 5, 7)


async def test_records_reach_the_stream_in_order_with_every_field(
    client: redis.asyncio.Redis, redis_prefix: str
) -> None:
    records = CallRecords("edge", quota=100)
    records.start(stream(client, redis_prefix))
    add_calls(records, 3)
    records.add("call-3", "echo", "d1", "local", "saturated", 429, 0.001, 5, 90)
    records.add("call-4", "echo", "d1", "peer:b", "saturated", 200, 0.02, 5, 7)

    await records.flush()
    await records.close()

    _, read = await stream(client, redis_prefix).read(10)
    assert [r["call_id"] for r in read] == [f"call-{i}" for i in range(5)]
    assert read[0] == {
        "call_id": "call-0",
        "function": "echo",
        "digest": "d1",
        "node": "edge",
        "served_by": "local",
        "reason": "free_worker",
        "status": 200,
        "duration_s": 0.01,
        "request_bytes": 5,
        "response_bytes": 7,
        "at": read[0]["at"],
    }
    assert [r["served_by"] for r in read[3:]] == ["none", "peer:b"]  # refused, then a peer
    assert records.written == 5 and records.dropped == 0


async def test_over_the_quota_the_oldest_are_dropped_counted_and_logged_once(
    client: redis.asyncio.Redis, redis_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    records = CallRecords("edge", quota=5)
    records.start(stream(client, redis_prefix, quota=5))
    caplog.set_level(logging.INFO, "edgefaas.records")

    add_calls(records, 8)
    await records.flush()
    add_calls(records, 2, first=8)
    await records.flush()
    await records.close()

    _, read = await stream(client, redis_prefix, quota=5).read(10)
    assert [r["call_id"] for r in read] == [f"call-{i}" for i in range(5, 10)]
    assert records.dropped == 5
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "dropped" in warnings[0].getMessage()


async def test_the_cursor_moves_past_what_was_shipped_and_trims_it(
    client: redis.asyncio.Redis, redis_prefix: str
) -> None:
    records = CallRecords("edge", quota=100)
    node_stream = stream(client, redis_prefix)
    records.start(node_stream)
    add_calls(records, 5)
    await records.flush()
    await records.close()

    last, first_two = await node_stream.read(2)
    assert [r["call_id"] for r in first_two] == ["call-0", "call-1"]
    assert [r["call_id"] for r in (await node_stream.read(2))[1]] == ["call-0", "call-1"]
    await node_stream.shipped(last)

    assert await node_stream.length() == 3
    assert (await client.get(node_stream.cursor_key)) == last.encode()
    rest_last, rest = await node_stream.read(10)
    assert [r["call_id"] for r in rest] == ["call-2", "call-3", "call-4"]
    await node_stream.shipped(rest_last)
    assert await node_stream.length() == 0
    assert await node_stream.read(10) == ("", [])


class FailingSink:
    def __init__(self) -> None:
        self.failing = True
        self.got: list[Record] = []

    async def write(self, records: list[Record]) -> int:
        if self.failing:
            raise ConnectionError("Redis is away")
        self.got.extend(records)
        return 0


async def test_while_the_sink_fails_records_wait_in_memory_in_order_under_the_quota() -> None:
    sink = FailingSink()
    records = CallRecords("edge", quota=4)
    records.start(sink)

    add_calls(records, 3)
    await records.flush()
    add_calls(records, 3, first=3)
    await records.flush()
    assert (records.pending, records.dropped) == (4, 2)
    assert "Redis is away" in records.last_error

    sink.failing = False
    await records.flush()
    await records.close()
    assert [r["call_id"] for r in sink.got] == ["call-2", "call-3", "call-4", "call-5"]
    assert records.pending == 0


def cloud_member(url: str) -> Member:
    return Member("cloud", url, "cloud")


async def test_the_shipper_posts_a_signed_batch_and_advances_only_on_2xx(
    client: redis.asyncio.Redis, redis_prefix: str
) -> None:
    records = CallRecords("edge", quota=100)
    node_stream = stream(client, redis_prefix)
    records.start(node_stream)
    add_calls(records, 3)
    await records.close()

    async with stub_server(answer(503, body=b"busy")) as stub:
        shipper = RecordShipper(node_stream, "edge", MESH_KEY, lambda: cloud_member(stub.url))
        try:
            with pytest.raises(ShipFailed, match="503"):
                await shipper.ship_once()
            assert await node_stream.length() == 3

            stub.handler = answer(200, body=b"{}")
            assert await shipper.ship_once() == 3
            assert await shipper.ship_once() == 0
        finally:
            await shipper.close()

    assert await node_stream.length() == 0 and shipper.shipped == 3
    sent = stub.received[-1]
    assert (sent.method, sent.target) == ("POST", PATH)
    headers = dict(sent.headers)
    assert verify_request(MESH_KEY, "POST", PATH, headers, "cloud", body=sent.body) == "edge"
    batch = json.loads(sent.body)
    assert [r["call_id"] for r in batch["records"]] == ["call-0", "call-1", "call-2"]
    assert check_batch(sent.body, "edge") == batch["records"]


async def test_without_a_cloud_the_shipper_leaves_the_records_waiting(
    client: redis.asyncio.Redis, redis_prefix: str
) -> None:
    records = CallRecords("edge", quota=100)
    node_stream = stream(client, redis_prefix)
    records.start(node_stream)
    add_calls(records, 2)
    await records.close()
    shipper = RecordShipper(node_stream, "edge", MESH_KEY, lambda: None)
    try:
        assert await shipper.ship_once() == 0
    finally:
        await shipper.close()
    assert await node_stream.length() == 2


def record(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "call_id": "c1",
        "function": "echo",
        "digest": "d",
        "node": "edge",
        "served_by": "local",
        "reason": "",
        "status": 200,
        "duration_s": 0.1,
        "request_bytes": 1,
        "response_bytes": 2,
        "at": 1.5,
    }
    base.update(changes)
    return base


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{", "not valid JSON"),
        (b"[]", "expected"),
        (json.dumps({"node": "other", "records": []}).encode(), "body.node: expected 'edge'"),
        (json.dumps({"node": "edge", "records": [1]}).encode(), r"records\[0\]: expected a JSON"),
        (
            json.dumps({"node": "edge", "records": [record(status=True)]}).encode(),
            r"records\[0\].status: expected int",
        ),
        (
            json.dumps({"node": "edge", "records": [record(extra=1)]}).encode(),
            "unknown key 'extra'",
        ),
        (
            json.dumps({"node": "edge", "records": [record(node="b")]}).encode(),
            r"records\[0\].node: expected 'edge'",
        ),
        (
            json.dumps({"node": "edge", "records": [record(call_id="")]}).encode(),
            "call_id: expected 1–64",
        ),
    ],
)
def test_a_malformed_batch_is_refused_naming_what_is_wrong(body: bytes, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        check_batch(body, "edge")


def test_a_good_batch_passes() -> None:
    body = json.dumps({"node": "edge", "records": [record(), record(call_id="c2")]}).encode()
    assert [r["call_id"] for r in check_batch(body, "edge")] == ["c1", "c2"]
