"""An edge node's call records in Redis, waiting for the cloud node.

``P:records:NODE`` is a stream with one entry per chunk of records (a flush writes at most
:data:`gateway.records.buffer.CHUNK` records to an entry, with one XADD), with the fields

====  =====================================================================================
v     the format version, ``1``
n     how many records the entry holds
r     the records: a compact JSON array of arrays, each in the order of
      :data:`gateway.records.buffer.ROW_FIELDS` (the node is the stream's)
====  =====================================================================================

(An entry with a single field ``r``, one record as a JSON object, is read as the record it
holds: the first format.)

``P:records-count:NODE`` counts the records the stream holds. Two small Lua scripts keep it
exact, atomically with the stream: one appends an entry and drops whole oldest entries
while the count is over the quota, the other removes the entries the cloud took and moves
the cursor, ``P:records-shipped:NODE`` (the id of the last entry the cloud took). Neither
reads the records themselves; the shipper decodes them (:meth:`RecordStream.read`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis

from gateway.records.buffer import ROW_FIELDS
from registry.keys import Keys, text

log = logging.getLogger("edgefaas.records")

FORMAT = "1"

_ENTRY_SIZE = """
local function size(entry)
  local fields = entry[2]
  for i = 1, #fields, 2 do
    if fields[i] == 'n' then return tonumber(fields[i + 1]) or 0 end
  end
  return 1  -- an entry of the first format: one record
end
"""

# KEYS: stream, count. ARGV: quota, version, n, records. Returns how many records it dropped.
_WRITE = (
    _ENTRY_SIZE
    + """
local count = tonumber(redis.call('GET', KEYS[2]))
if count == nil then  -- a new stream, or its count was lost: count what the stream holds
  count = 0
  for _, entry in ipairs(redis.call('XRANGE', KEYS[1], '-', '+')) do
    count = count + size(entry)
  end
end
redis.call('XADD', KEYS[1], '*', 'v', ARGV[2], 'n', ARGV[3], 'r', ARGV[4])
count = count + tonumber(ARGV[3])
local quota = tonumber(ARGV[1])
local dropped = 0
while count > quota do
  local oldest = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1]
  if oldest == nil then
    count = 0
    break
  end
  local n = size(oldest)
  redis.call('XDEL', KEYS[1], oldest[1])
  count = count - n
  dropped = dropped + n
end
redis.call('SET', KEYS[2], count)
return dropped
"""
)

# KEYS: stream, count, cursor. ARGV: the id of the last entry the cloud took.
_SHIPPED = (
    _ENTRY_SIZE
    + """
local gone = 0
for _, entry in ipairs(redis.call('XRANGE', KEYS[1], '-', ARGV[1])) do
  gone = gone + size(entry)
  redis.call('XDEL', KEYS[1], entry[1])
end
redis.call('SET', KEYS[3], ARGV[1])
local count = tonumber(redis.call('GET', KEYS[2]))
if count ~= nil then
  count = count - gone
  if count < 0 or redis.call('XLEN', KEYS[1]) == 0 then count = 0 end
  redis.call('SET', KEYS[2], count)
end
return gone
"""
)


@dataclass(frozen=True)
class Entry:
    """One stream entry: its id and its records, as rows (none if it could not be read)."""

    id: str
    rows: list[list[Any]]


def encode_rows(rows: Sequence[Sequence[Any]]) -> str:
    """The ``r`` field of an entry: the rows as a compact JSON array of arrays."""
    return json.dumps(rows, separators=(",", ":"))


def decode_rows(fields: Mapping[Any, Any]) -> list[list[Any]]:
    """The rows of an entry, or ValueError saying why it holds none."""
    version = text(fields.get(b"v", b""))
    if not version:  # the first format, written before the upgrade: one record, a dict
        record = json.loads(fields.get(b"r", b""))
        if not isinstance(record, dict) or not set(ROW_FIELDS) <= set(record):
            raise ValueError("expected a record")
        return [[record[name] for name in ROW_FIELDS]]
    if version != FORMAT:
        raise ValueError(f"format {version!r:.20}, expected {FORMAT}")
    rows = json.loads(fields.get(b"r", b""))
    if not isinstance(rows, list) or not all(
        isinstance(row, list) and len(row) == len(ROW_FIELDS) for row in rows
    ):
        raise ValueError(f"expected an array of arrays of {len(ROW_FIELDS)} fields")
    return rows


class RecordStream:
    """The node's stream, holding at most about ``quota`` records (see :meth:`write`), and
    its cursor. Every method is one Redis round trip or two."""

    def __init__(self, redis: Redis, keys: Keys, node: str, quota: int) -> None:
        self.redis = redis
        self.key = keys.records(node)
        self.count_key = f"{keys.prefix}:records-count:{node}"
        self.cursor_key = keys.records_shipped(node)
        self.quota = quota
        self._write = redis.register_script(_WRITE)
        self._shipped = redis.register_script(_SHIPPED)

    async def write(self, rows: Sequence[Sequence[Any]]) -> int:
        """Append ``rows`` as one entry; while the stream holds more than ``quota`` records,
        drop its oldest entry, whole. Return how many records that dropped: dropping whole
        entries can leave the stream up to one entry short of the quota."""
        args: list[int | str] = [self.quota, FORMAT, len(rows), encode_rows(rows)]
        return int(await self._write(keys=[self.key, self.count_key], args=args))

    async def read(self, count: int) -> list[Entry]:
        """Up to ``count`` entries after the last one shipped, oldest first. An entry that
        is not a chunk of records comes with no rows (logged), so that it can be passed."""
        cursor = await self.redis.get(self.cursor_key)
        start = f"({text(cursor)}" if cursor else "-"
        replies = await self.redis.xrange(self.key, min=start, max="+", count=count)
        return [self._entry(text(entry_id or b""), fields) for entry_id, fields in replies or []]

    async def shipped(self, last_id: str) -> int:
        """The cloud took every entry up to ``last_id``: remove them and move the cursor;
        return how many records they held."""
        keys = [self.key, self.count_key, self.cursor_key]
        return int(await self._shipped(keys=keys, args=[last_id]))

    async def length(self) -> int:
        """How many records the stream holds."""
        count = await self.redis.get(self.count_key)
        if count is None:  # nothing written yet (or the count was lost): count entries
            return int(await self.redis.xlen(self.key))
        return int(count)

    def _entry(self, entry_id: str, fields: Mapping[Any, Any] | None) -> Entry:
        try:
            return Entry(entry_id, decode_rows(fields or {}))
        except ValueError as exc:
            log.warning("call records: skipping stream entry %s of %s: %s", entry_id, self.key, exc)
            return Entry(entry_id, [])
