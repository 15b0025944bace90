"""Call records: one compact record per call a node answered, kept until the cloud has it.

The call path appends a tuple (a row, in ``ROW_FIELDS`` order) to a list — about a
microsecond. A background task writes the list out to the node's sink every ``FLUSH_S``, in
chunks of at most ``CHUNK`` rows, one sink write per chunk: on an edge node the Redis stream
``P:records:NODE`` (:class:`gateway.records.stream.RecordStream`: one entry per chunk), which
the shipper (:mod:`gateway.records.shipper`) sends to the cloud; on a cloud node the record store
itself. Rows become :class:`Record` dicts only there, when shipped or stored.

A node keeps at most ``quota`` records waiting: when the cloud stays away long enough for
its stream to fill, the oldest are dropped. Dropped records are counted
(``edgefaas_records_dropped_total``, ``GET /system/records/status``) and logged once per
episode — never lost silently. While Redis is unreachable the records wait in memory, under
the same quota; the flush then tries one chunk at a time, backing off up to
``FAILING_MAX_S``, and writes the rest when Redis answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Sequence
from typing import Any, Protocol, TypedDict

from gateway.errors import BadRequest

log = logging.getLogger("edgefaas.records")

FLUSH_S = 0.15  # how often the call path's records are written out
FAILING_MAX_S = 2.0  # the longest wait between flushes while the sink fails
CHUNK = 500  # most records in one sink write (one stream entry)
FLUSH_CHUNKS = 4  # most chunks one flush writes before it lets the loop run again
CLOSE_WAIT_S = 3.0
MAX_BATCH = 1000  # most records one POST /system/records may carry
FUNCTION_CHARS = 128  # longer function names (of calls refused with 404) are cut
_ID_CHARS = 64
Row = tuple[str, str, str, str, str, int, float, int, int, float]
ROW_FIELDS = (
    "call_id",
    "function",
    "digest",
    "served_by",
    "reason",
    "status",
    "duration_s",
    "request_bytes",
    "response_bytes",
    "at",
)


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


def as_record(node: str, row: Sequence[Any]) -> Record:
    """The record of one of ``node``'s calls, from its row."""
    return {
        "call_id": row[0],
        "function": row[1],
        "digest": row[2],
        "node": node,
        "served_by": row[3],
        "reason": row[4],
        "status": row[5],
        "duration_s": round(row[6], 6),
        "request_bytes": row[7],
        "response_bytes": row[8],
        "at": round(row[9], 6),
    }


class Sink(Protocol):
    async def write(self, rows: Sequence[Row]) -> int:
        """Keep ``rows``; return how many older records were dropped to make room."""


class CallRecords:
    """The node's records on their way out. :meth:`add` is the call path's part;
    :meth:`start` runs the flush loop, :meth:`close` stops it after a last flush."""

    def __init__(self, node: str, quota: int) -> None:
        self.node = node
        self.quota = quota
        self.dropped = 0
        self.written = 0
        self.last_error = ""
        self._chunk = min(CHUNK, quota)  # a chunk never holds more than the quota
        self._pending: list[Row] = []
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
        """Record one call (the call path: an append, and a cut of an overlong name)."""
        function = function[:FUNCTION_CHARS]
        if not function.isascii():  # a lone surrogate would not survive UTF-8
            function = function.encode("utf-8", "replace").decode()
        if status in (429, 503) and served_by == "local" and reason:
            served_by = "none"  # refused here, as edgefaas_invocations_total counts it
        self._pending.append(
            (
                call_id[:_ID_CHARS],
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
        """Stop the flush loop, then write what is pending (for up to ``CLOSE_WAIT_S``)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=CLOSE_WAIT_S)
            self._task = None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drain(), CLOSE_WAIT_S)
        if self._pending:
            log.warning("call records: %d not written at shutdown", len(self._pending))

    async def flush(self) -> int:
        """Write up to ``FLUSH_CHUNKS`` chunks of the oldest pending records, letting the
        loop run between them; return how many records were written. A chunk that fails
        (the pass ends there) or whose write is cancelled goes back in front, in order —
        a cancelled write may have reached Redis, so it may be written twice (the cloud
        stores a record once). Beyond the quota, the oldest pending records are dropped."""
        written = 0
        for _ in range(FLUSH_CHUNKS):
            if not self._pending or self._sink is None:
                break
            if written:
                await asyncio.sleep(0)
            chunk = self._pending[: self._chunk]
            del self._pending[: self._chunk]
            try:
                dropped = await self._sink.write(chunk)
            except Exception as exc:  # Redis or disk: keep them and retry later
                self._pending[:0] = chunk
                self._failed(exc)
                break
            except BaseException:  # cancelled: keep them for close()
                self._pending[:0] = chunk
                raise
            self._written(len(chunk))
            self._drop(dropped)
            written += len(chunk)
        over = len(self._pending) - self.quota
        if over > 0:
            del self._pending[:over]
            self._drop(over)
        return written

    def _written(self, count: int) -> None:
        self.written += count
        if self._failing:
            log.info("call records: written again (%d wait in memory)", len(self._pending))
            self._failing = False

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

    async def _drain(self) -> None:
        while self._pending and await self.flush():
            pass

    async def _flush_forever(self) -> None:
        delay = FLUSH_S
        while True:
            await asyncio.sleep(delay)
            try:
                await self.flush()
            except Exception:  # never let the flush loop die silently
                log.exception("flushing call records failed")
            if self._failing:
                delay = min(FAILING_MAX_S, max(delay, FLUSH_S) * 2)
            else:  # more than a chunk left: the loop is behind, so go on at once
                delay = 0 if len(self._pending) >= self._chunk else FLUSH_S


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
    if len(value["function"]) > FUNCTION_CHARS:
        raise BadRequest(f"{where}.function: expected at most {FUNCTION_CHARS} characters")
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
