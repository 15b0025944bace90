"""Call records: one compact record per call a node answered, kept until the cloud has it.

The call path appends a tuple to a list (about a microsecond). A background task takes the
list every ``FLUSH_S`` and writes it to the node's sink: on an edge node its Redis stream
``P:records:NODE`` (:class:`RecordStream`, XADD in one pipeline), which the shipper
(:mod:`gateway.shipper`) sends to the cloud; on a cloud node the record store itself.

A node keeps at most ``quota`` records waiting: when the cloud stays away long enough for
its stream to fill, the oldest are trimmed. Dropped records are counted
(``edgefaas_records_dropped_total``, ``GET /system/records/status``) and logged once per
episode — never lost silently. While Redis is unreachable the records wait in memory, under
the same quota, and are written when it answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any, Protocol, TypedDict

from redis.asyncio import Redis

from gateway.errors import BadRequest
from registry.keys import Keys, text

log = logging.getLogger("edgefaas.records")

FLUSH_S = 0.15  # how often the call path's records are written out
CLOSE_WAIT_S = 3.0
MAX_BATCH = 1000  # most records one POST /system/records may carry
_ID_CHARS = 64
Pending = tuple[str, str, str, str, str, int, float, int, int, float]


class Record(TypedDict):
    """One call, as the node that answered the client saw it."""

    call_id: str
    function: str
    digest: str
    node: str
    served_by: str  # local, peer:NODE, cloud, or none (refused)
    reason: str  # the router's reason (free_worker, saturated, ...) or "error"
    status: int
    duration_s: float
    request_bytes: int
    response_bytes: int
    at: float  # Unix time the call was answered


_TYPES: dict[str, tuple[type, ...]] = {
    "call_id": (str,),
    "function": (str,),
    "digest": (str,),
    "node": (str,),
    "served_by": (str,),
    "reason": (str,),
    "status": (int,),
    "duration_s": (int, float),
    "request_bytes": (int,),
    "response_bytes": (int,),
    "at": (int, float),
}
FIELDS = tuple(_TYPES)


class Sink(Protocol):
    async def write(self, records: list[Record]) -> int:
        """Keep ``records``; return how many older ones were dropped to make room."""


class CallRecords:
    """The node's records on their way out. :meth:`add` is the call path's part;
    :meth:`start` runs the flush loop, :meth:`close` stops it after a last flush."""

    def __init__(self, node: str, quota: int) -> None:
        self.node = node
        self.quota = quota
        self.dropped = 0
        self.written = 0
        self.last_error = ""
        self._pending: list[Pending] = []
        self._sink: Sink | None = None
        self._dropping = False
        self._failing = False
        self._task: asyncio.Task[None] | None = None

    def add(
        self,
        call_id: str,
        function: str,
        digest: str,
        served_by: str,
        reason: str,
        status: int,
        duration_s: float,
        request_bytes: int,
        response_bytes: int,
    ) -> None:
        """Record one call (the call path: an append, nothing else)."""
        self._pending.append(
            (
                call_id,
                function,
                digest,
                served_by,
                reason,
                status,
                duration_s,
                request_bytes,
                response_bytes,
                time.time(),
            )
        )

    @property
    def pending(self) -> int:
        return len(self._pending)

    def start(self, sink: Sink) -> None:
        self._sink = sink
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._flush_forever())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=CLOSE_WAIT_S)
            self._task = None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.flush(), CLOSE_WAIT_S)
        if self._pending:
            log.warning("call records: %d not written at shutdown", len(self._pending))

    async def flush(self) -> None:
        """Write what the call path recorded since the last flush. On failure the records
        stay in memory (in order), capped by the quota."""
        if not self._pending or self._sink is None:
            return
        batch, self._pending = self._pending, []
        try:
            dropped = await self._sink.write([self._record(p) for p in batch])
        except Exception as exc:  # Redis or disk: keep them and retry on the next flush
            self._pending = batch + self._pending
            self._failed(exc)
            over = max(0, len(self._pending) - self.quota)
            del self._pending[:over]
            self._drop(over)
            return
        if self._failing:
            log.info("call records: written again (%d waited)", len(batch))
            self._failing = False
        self.written += len(batch)
        self._drop(dropped)

    def _record(self, pending: Pending) -> Record:
        served_by = pending[3]
        if pending[5] in (429, 503) and served_by == "local" and pending[4]:
            served_by = "none"  # refused here, as edgefaas_invocations_total counts it
        return {
            "call_id": pending[0],
            "function": pending[1],
            "digest": pending[2],
            "node": self.node,
            "served_by": served_by,
            "reason": pending[4],
            "status": pending[5],
            "duration_s": round(pending[6], 6),
            "request_bytes": pending[7],
            "response_bytes": pending[8],
            "at": round(pending[9], 6),
        }

    def _drop(self, count: int) -> None:
        """Count ``count`` records dropped over the quota (0: the episode, if any, ends)."""
        if count <= 0:
            if self._dropping:
                log.info("call records: no longer dropping (%d dropped in all)", self.dropped)
                self._dropping = False
            return
        self.dropped += count
        if not self._dropping:
            self._dropping = True
            log.warning(
                "call records: %d dropped — more than the quota of %d wait for the cloud "
                "(counted in edgefaas_records_dropped_total; raise --records-quota to keep more)",
                count,
                self.quota,
            )

    def _failed(self, exc: Exception) -> None:
        self.last_error = f"writing records failed: {exc}"
        if not self._failing:
            self._failing = True
            log.warning("call records: %s; they wait in memory and are retried", self.last_error)

    async def _flush_forever(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            try:
                await self.flush()
            except Exception:  # never let the flush loop die silently
                log.exception("flushing call records failed")


class RecordStream:
    """An edge node's records in Redis, waiting for the cloud: the stream, capped at
    ``quota`` entries, and the id of the last entry the cloud took."""

    def __init__(self, redis: Redis, keys: Keys, node: str, quota: int) -> None:
        self.redis = redis
        self.key = keys.records(node)
        self.cursor_key = keys.records_shipped(node)
        self.quota = quota

    async def write(self, records: list[Record]) -> int:
        """Append ``records``; trim the oldest over the quota and return how many."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for record in records:
                pipe.xadd(self.key, {"r": json.dumps(record, separators=(",", ":"))})
            pipe.xtrim(self.key, maxlen=self.quota, approximate=False)
            replies = await pipe.execute()
        return int(replies[-1])

    async def read(self, count: int) -> tuple[str, list[Record]]:
        """Up to ``count`` records after the last one shipped, and the id of the last one
        read ("" when there is none). Entries that are not records are skipped (logged)."""
        cursor = await self.redis.get(self.cursor_key)
        start = f"({text(cursor)}" if cursor else "-"
        entries = await self.redis.xrange(self.key, min=start, max="+", count=count)
        records = []
        last = ""
        for entry_id, fields in entries or []:
            last = text(entry_id or b"")
            try:
                raw = (fields or {})[b"r"]
                records.append(check_record(json.loads(raw), f"stream entry {last}"))
            except (KeyError, ValueError, BadRequest) as exc:
                log.warning("call records: skipping stream entry %s of %s: %s", last, self.key, exc)
        return last, records

    async def shipped(self, last_id: str) -> None:
        """The cloud took every entry up to ``last_id``: move the cursor, trim them."""
        millis, _, seq = last_id.partition("-")
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self.cursor_key, last_id)
            pipe.xtrim(self.key, minid=f"{millis}-{int(seq or 0) + 1}", approximate=False)
            await pipe.execute()

    async def length(self) -> int:
        return int(await self.redis.xlen(self.key))


def check_record(value: Any, where: str) -> Record:
    """``value`` as a record, or :class:`BadRequest` naming the first bad field."""
    if not isinstance(value, dict):
        raise BadRequest(f"{where}: expected a JSON object")
    missing = [name for name in FIELDS if name not in value]
    unknown = sorted(set(value) - set(FIELDS))
    if missing or unknown:
        problem = f"missing {missing[0]!r}" if missing else f"unknown key {unknown[0]!r}"
        raise BadRequest(f"{where}: {problem}; a record has {', '.join(FIELDS)}")
    for name, kinds in _TYPES.items():
        field = value[name]
        if isinstance(field, bool) or not isinstance(field, kinds):
            raise BadRequest(f"{where}.{name}: expected {kinds[0].__name__}, got {field!r:.40}")
    if not 0 < len(value["call_id"]) <= _ID_CHARS:
        raise BadRequest(f"{where}.call_id: expected 1–{_ID_CHARS} characters")
    record: Record = value  # type: ignore[assignment]
    return record


def check_batch(body: bytes, sender: str) -> list[Record]:
    """A ``POST /system/records`` body — ``{"node": NAME, "records": [...]}`` from the node
    ``sender`` — as records, or :class:`BadRequest` saying what is wrong."""
    try:
        batch = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"body: not valid JSON ({exc})") from None
    if not isinstance(batch, dict) or not isinstance(batch.get("records"), list):
        raise BadRequest('body: expected {"node": NAME, "records": [...]}')
    if batch.get("node") != sender:
        raise BadRequest(
            f"body.node: expected {sender!r} (the signing node), got {batch.get('node')!r:.70}"
        )
    items = batch["records"]
    if len(items) > MAX_BATCH:
        raise BadRequest(f"body.records: at most {MAX_BATCH} records a batch, got {len(items)}")
    records = [check_record(item, f"body.records[{i}]") for i, item in enumerate(items)]
    for i, record in enumerate(records):
        if record["node"] != sender:
            raise BadRequest(
                f"body.records[{i}].node: expected {sender!r}, got {record['node']!r:.70}"
            )
    return records
