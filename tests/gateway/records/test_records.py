"""Call records on an edge node, with a real Redis: the call path's buffer, the node's stream
(one entry per chunk of records) and its quota, the shipper's cursor and batches — and what
the cloud accepts as a batch."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

import gateway.records.shipper
import gateway.records.stream
from gateway.errors import BadRequest
from gateway.mesh.peers import Member
from gateway.records.buffer import (
    CHUNK,
    FUNCTION_CHARS,
    CallRecords,
    Record,
    Row,
    as_record,
    check_batch,
)
from gateway.records.shipper import PATH, RecordShipper, ShipFailed
from gateway.records.stream import RecordStream
from registry.keys import Keys
from registry.meshauth import verify_request
from tests.conftest import free_port
from tests.gateway.stub_server import Received, answer, response, stub_server

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


async def held(node_stream: RecordStream) -> list[Record]:
    """Every record the stream holds after its cursor, oldest first."""
    entries = await node_stream.read(100_000)
    return [as_record("edge", row) for entry in entries for row in entry.rows]


def call_ids(records: Sequence[Record]) -> list[str]:
    return [r["call_id"] for r in records]


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

    read = await held(stream(client, redis_prefix))
    assert call_ids(read) == [f"call-{i}" for i in range(5)]
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


async def test_a_flush_writes_one_stream_entry_per_chunk_of_records(
    client: redis.asyncio.Redis, redis_prefix: str
) -> None:
    node_stream = stream(client, redis_prefix, quota=100_000)
    records = CallRecords("edge", quota=100_000)
    records.start(node_stream)
    add_calls(records, 2 * CHUNK + 3)

    assert await records.flush() == 2 * CHUNK + 3
    await records.close()

    assert await client.xlen(node_stream.key) == 3
    entries = await client.xrange(node_stream.key)
    fields = entries[0][1]
    assert (fields[b"v"], fields[b"n"]) == (b"1", str(CHUNK).encode())
    first_row = json.loads(fields[b"r"])[0]
    assert isinstance(first_row, list) and first_row[:2] == ["call-0", "echo"]
    assert await node_stream.length() == 2 * CHUNK + 3


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

    assert call_ids(await held(stream(client, redis_prefix, quota=5))) == [
        f"call-{i}" for i in range(5, 10)
    ]
    assert records.dropped == 5
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "dropped" in warnings[0].getMessage()


async def test_the_quota_holds_to_within_one_chunk_and_the_count_is_exact(
    client: redis.asyncio.Redis, redis_prefix: str
) -> None:
    quota = 2 * CHUNK + 200
    node_stream = stream(client, redis_prefix, quota=quota)
    records = CallRecords("edge", quota=quota)
    records.start(node_stream)
    total = 0
    for size in (700, 1, 900, 37, 1200, 450):
        add_calls(records, size, first=total)
        total += size
        await records.flush()
    await records.close()

    waiting = await node_stream.length()
    kept = await held(node_stream)
    assert quota - CHUNK < waiting <= quota
    assert len(kept) == waiting  # the count is the records, exactly
    assert call_ids(kept) == [f"call-{i}" for i in range(total - waiting, total)]  # the newest
    assert records.dropped == total - waiting

    entries = await node_stream.read(1)
    gone = await node_stream.shipped(entries[0].id)
    assert gone == len(entries[0].rows)
    assert await node_stream.length() == waiting - gone == len(await held(node_stream))


async def test_the_cursor_moves_past_what_was_shipped_and_trims_it(
    client: redis.asyncio.Redis, redis_prefix: str
) -> None:
    records = CallRecords("edge", quota=100)
    node_stream = stream(client, redis_prefix)
    records.start(node_stream)
    for first, count in ((0, 2), (2, 1), (3, 2)):
        add_calls(records, count, first=first)
        await records.flush()
    await records.close()

    first = await node_stream.read(1)
    assert [call_ids([as_record("edge", r) for r in e.rows]) for e in first] == [
        ["call-0", "call-1"]
    ]
    assert await node_stream.read(1) == first  # read again until shipped
    assert await node_stream.shipped(first[0].id) == 2

    assert await node_stream.length() == 3
    assert (await client.get(node_stream.cursor_key)) == first[0].id.encode()
    rest = await node_stream.read(10)
    assert call_ids(await held(node_stream)) == ["call-2", "call-3", "call-4"]
    await node_stream.shipped(rest[-1].id)
    assert await node_stream.length() == 0
    assert await node_stream.read(10) == []


async def test_an_overlong_function_name_is_cut_when_recorded() -> None:
    sink = FailingSink()
    sink.failing = False
    records = CallRecords("edge", quota=10)
    records.start(sink)
    records.add("c1", "x" * 60_000, "", "local", "error", 404, 0.001, 0, 90)
    records.add("c2", "caf\udce9", "", "local", "error", 404, 0.001, 0, 90)
    await records.close()

    assert len(sink.got[0][1]) == FUNCTION_CHARS
    assert sink.got[1][1] == "caf?"  # a lone surrogate would fail the cloud's store
    body = json.dumps({"node": "edge", "records": [as_record("edge", r) for r in sink.got]})
    assert len(check_batch(body.encode(), "edge")) == 2


class FailingSink:
    def __init__(self) -> None:
        self.failing = True
        self.got: list[Row] = []

    async def write(self, rows: Sequence[Row]) -> int:
        if self.failing:
            raise ConnectionError("Redis is away")
        self.got.extend(rows)
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
    assert [row[0] for row in sink.got] == ["call-2", "call-3", "call-4", "call-5"]
    assert records.pending == 0


async def test_during_a_redis_outage_a_flush_converts_at_most_one_chunk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    encoded: list[int] = []
    encode_rows = gateway.records.stream.encode_rows

    def counting(rows: Sequence[Sequence[Any]]) -> str:
        encoded.append(len(rows))
        return encode_rows(rows)

    monkeypatch.setattr(gateway.records.stream, "encode_rows", counting)
    away = redis.asyncio.Redis(port=free_port(), retry=Retry(NoBackoff(), 0))
    records = CallRecords("edge", quota=100_000)
    records.start(RecordStream(away, Keys("edgefaas-test-away"), "edge", 100_000))
    add_calls(records, 20 * CHUNK)
    try:
        assert await records.flush() == 0
        assert await records.flush() == 0
        assert encoded == [CHUNK, CHUNK]  # not the 10000 pending, each time
        assert records.pending == 20 * CHUNK and records.dropped == 0
        assert "writing records failed" in records.last_error
    finally:
        await records.close()
        await away.aclose()


class BlockingSink:
    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.got: list[Row] = []
        self.block = True

    async def write(self, rows: Sequence[Row]) -> int:
        if self.block:
            self.entered.set()
            await asyncio.Event().wait()
        self.got.extend(rows)
        return 0


async def test_a_flush_cancelled_mid_write_keeps_its_chunk_for_close() -> None:
    sink = BlockingSink()
    records = CallRecords("edge", quota=100)
    records.start(sink)
    add_calls(records, 5)

    flushing = asyncio.get_running_loop().create_task(records.flush())
    await sink.entered.wait()
    add_calls(records, 2, first=5)
    flushing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await flushing
    assert records.pending == 7

    sink.block = False
    await records.close()
    assert [row[0] for row in sink.got] == [f"call-{i}" for i in range(7)]
    assert records.written == 7


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
    assert call_ids(batch["records"]) == ["call-0", "call-1", "call-2"]
    assert check_batch(sent.body, "edge") == batch["records"]


def refusing(poison: bytes) -> Any:
    """The cloud: 413 for a batch that holds ``poison``, else 200."""

    async def handle(request: Received, writer: asyncio.StreamWriter) -> None:
        writer.write(response(413 if poison in request.body else 200, body=b"{}"))

    return handle


async def test_an_entry_the_cloud_refuses_for_good_is_dropped_counted_and_passed(
    client: redis.asyncio.Redis, redis_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    records = CallRecords("edge", quota=100)
    node_stream = stream(client, redis_prefix)
    records.start(node_stream)
    for first, count in ((0, 2), (2, 3), (5, 1)):  # three entries; the second is refused
        add_calls(records, count, first=first)
        await records.flush()
    await records.close()
    caplog.set_level(logging.INFO, "edgefaas.records")

    async with stub_server(refusing(b'"call-3"')) as stub:
        shipper = RecordShipper(node_stream, "edge", MESH_KEY, lambda: cloud_member(stub.url))
        try:
            with pytest.raises(ShipFailed, match=r"413.*one entry a POST"):
                await shipper.ship_once()  # all three in one batch
            assert [await shipper.ship_once() for _ in range(4)] == [2, 3, 1, 0]
        finally:
            await shipper.close()

    delivered = [json.loads(r.body)["records"] for r in stub.received if b'"call-3"' not in r.body]
    assert [call_ids(batch) for batch in delivered] == [["call-0", "call-1"], ["call-5"]]
    assert (shipper.shipped, shipper.refused) == (3, 3)
    assert await node_stream.length() == 0
    refusals = [r for r in caplog.records if "edgefaas_records_refused_total" in r.getMessage()]
    assert len(refusals) == 1 and "413" in refusals[0].getMessage()


async def test_batches_are_split_by_size_but_entries_only_when_they_must_be(
    client: redis.asyncio.Redis, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gateway.records.shipper, "MAX_POST_BYTES", 2000)
    records = CallRecords("edge", quota=100)
    node_stream = stream(client, redis_prefix)
    records.start(node_stream)
    for first, count in ((0, 3), (3, 3), (6, 20)):  # ~750 bytes, ~750 bytes, ~5000 bytes
        add_calls(records, count, first=first)
        await records.flush()
    await records.close()

    async with stub_server(answer(200, body=b"{}")) as stub:
        shipper = RecordShipper(node_stream, "edge", MESH_KEY, lambda: cloud_member(stub.url))
        try:
            assert [await shipper.ship_once() for _ in range(3)] == [6, 20, 0]
        finally:
            await shipper.close()

    sent = [call_ids(json.loads(r.body)["records"]) for r in stub.received]
    assert sent[0] == [f"call-{i}" for i in range(6)]  # two whole entries
    assert len(sent) > 2 and all(len(r.body) <= 2000 for r in stub.received)
    assert [i for batch in sent[1:] for i in batch] == [f"call-{i}" for i in range(6, 26)]
    assert await node_stream.length() == 0 and shipper.shipped == 26


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
        (
            json.dumps({"node": "edge", "records": [record(function="f" * 129)]}).encode(),
            "function: expected at most 128",
        ),
    ],
)
def test_a_malformed_batch_is_refused_naming_what_is_wrong(body: bytes, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        check_batch(body, "edge")


def test_a_good_batch_passes() -> None:
    body = json.dumps({"node": "edge", "records": [record(), record(call_id="c2")]}).encode()
    assert [r["call_id"] for r in check_batch(body, "edge")] == ["c1", "c2"]


async def test_entries_of_the_first_format_are_read_and_counted(
    client: redis.asyncio.Redis, redis_prefix: str
) -> None:
    node_stream = stream(client, redis_prefix, quota=100)
    old = as_record("edge", ("old-0", "echo", "d1", "local", "", 200, 0.01, 5, 7, 1.5))
    await client.xadd(node_stream.key, {"r": json.dumps(old)})
    await client.xadd(node_stream.key, {"r": "not a record"})
    records = CallRecords("edge", quota=100)
    records.start(node_stream)
    add_calls(records, 2)
    await records.close()

    assert await node_stream.length() == 4  # counted when the first chunk was written
    assert call_ids(await held(node_stream)) == ["old-0", "call-0", "call-1"]
