"""The shipper: sends an edge node's call records to the cloud node, in order, at least once.

It reads the node's stream after the last entry the cloud took and POSTs whole entries — up
to ``BATCH`` records and ``MAX_POST_BYTES`` a POST; only an entry larger than that on its own
is split over several — to the cloud's ``POST /system/records``, signed with the mesh key
for the cloud node. Once the cloud has them it moves the cursor past those entries and
removes them. On a failure it keeps them and tries again after a backoff (``RETRY_MIN_S``
doubling to ``RETRY_MAX_S``); the cloud de-duplicates by (node, call id), so a record sent
twice is stored once.

A batch the cloud refuses outright (400 or 413) is never sent again as it was: a batch of
several entries is sent again one entry a POST, and the records of a single refused entry
are dropped — counted (``edgefaas_records_refused_total``) and logged — so that one bad
record cannot hold up the rest. With no cloud node in the mesh the records wait in the
stream (under the quota).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

import httpx
from redis.exceptions import RedisError

from gateway.mesh.peers import Member
from gateway.records.buffer import as_record
from gateway.records.stream import Entry, RecordStream
from registry.meshauth import sign_call

log = logging.getLogger("edgefaas.records")

PATH = "/system/records"
BATCH = 500  # most records a POST carries (the cloud takes up to records.MAX_BATCH)
MAX_POST_BYTES = 1024 * 1024  # most bytes a POST carries (the cloud takes up to 2 MiB)
MAX_READ = 64  # most stream entries read at once
REFUSED = (400, 413)  # the cloud will never take this batch
IDLE_S = 0.2  # how often an empty stream (or a mesh without a cloud) is looked at again
RETRY_MIN_S = 0.5
RETRY_MAX_S = 5.0
CONNECT_S = 2.0
SEND_S = 10.0
CLOSE_WAIT_S = 3.0


class ShipFailed(Exception):
    """The cloud did not take a batch (it answered, but not 2xx)."""


class RecordShipper:
    """Runs from :meth:`start` to :meth:`close`; ``find_cloud`` gives the cloud node of the
    mesh, or None."""

    def __init__(
        self,
        stream: RecordStream,
        node: str,
        mesh_key: bytes,
        find_cloud: Callable[[], Member | None],
    ) -> None:
        self.stream = stream
        self.node = node
        self.mesh_key = mesh_key
        self.find_cloud = find_cloud
        self.shipped = 0
        self.refused = 0  # records the cloud refused, dropped
        self.cloud = ""  # the cloud node shipped to last
        self.last_error = ""
        self._failing = False
        self._refusing = False
        self._no_cloud_logged = False
        self._one_by_one = 0  # entries left to send one a POST (those of a refused batch)
        self._rows_per_entry = 1.0  # as last read: how many entries make a batch
        self._prefix = b'{"node":%s,"records":[' % json.dumps(node).encode()
        self._client = httpx.AsyncClient(timeout=httpx.Timeout(SEND_S, connect=CONNECT_S))
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._ship_forever())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=CLOSE_WAIT_S)
            self._task = None
        await self._client.aclose()

    async def ship_once(self) -> int:
        """Ship one batch of whole entries; return how many records the cloud took or
        refused (0: nothing waits, or there is no cloud). Raises on failure, with the
        batch still in the stream."""
        cloud = self.find_cloud()
        if cloud is None:
            self._no_cloud()
            return 0
        self._no_cloud_logged = False
        entries = await self.stream.read(self._read_count())
        if not entries:
            return 0
        self._rows_per_entry = max(1.0, sum(len(e.rows) for e in entries) / len(entries))
        batch = self._take(entries)
        delivered = refused = 0
        for count, body in self._bodies(batch):
            if await self._post(cloud, body, len(batch)):
                delivered += count
            else:
                refused += count
        await self.stream.shipped(batch[-1][0].id)
        self._one_by_one = 0 if refused else max(0, self._one_by_one - 1)
        self.shipped += delivered
        self.cloud = cloud.name
        if refused:
            self._refused(refused)
        elif delivered:
            self._refusing = False
        return delivered + refused

    def _read_count(self) -> int:
        if self._one_by_one:
            return 1
        return max(1, min(MAX_READ, int(BATCH / self._rows_per_entry)))

    def _take(self, entries: list[Entry]) -> list[tuple[Entry, bytes]]:
        """The first entries that fit in one POST (at least one), each with its records as
        JSON (without the brackets)."""
        taken: list[tuple[Entry, bytes]] = []
        records = 0
        size = len(self._prefix) + 2
        for entry in entries:
            part = self._encode(entry.rows)
            if taken and (
                records + len(entry.rows) > BATCH or size + len(part) + 1 > MAX_POST_BYTES
            ):
                break
            taken.append((entry, part))
            records += len(entry.rows)
            size += len(part) + 1
            if self._one_by_one:
                break
        return taken

    def _bodies(self, batch: list[tuple[Entry, bytes]]) -> list[tuple[int, bytes]]:
        """The POST bodies for ``batch``, each with its number of records: one, unless the
        batch is a single entry too large for one POST."""
        count = sum(len(entry.rows) for entry, _ in batch)
        body = self._body([part for _, part in batch if part])
        if count == 0:
            return []
        if len(batch) > 1 or len(body) <= MAX_POST_BYTES:
            return [(count, body)]
        bodies = []
        group: list[bytes] = []
        size = len(self._prefix) + 2
        for row in batch[0][0].rows:
            part = self._encode([row])
            if group and size + len(part) + 1 > MAX_POST_BYTES:
                bodies.append((len(group), self._body(group)))
                group, size = [], len(self._prefix) + 2
            group.append(part)
            size += len(part) + 1
        bodies.append((len(group), self._body(group)))
        return bodies

    def _encode(self, rows: Sequence[Sequence[Any]]) -> bytes:
        records = [as_record(self.node, row) for row in rows]
        return json.dumps(records, separators=(",", ":"))[1:-1].encode()

    def _body(self, parts: list[bytes]) -> bytes:
        return self._prefix + b",".join(parts) + b"]}"

    async def _post(self, cloud: Member, body: bytes, entries: int) -> bool:
        """POST one body (records of ``entries`` entries): True if the cloud took it, False
        if it refused the records of a single entry for good. Raises :class:`ShipFailed` for
        any other answer — after a refused batch of several entries, sent one a POST next."""
        headers = sign_call(self.mesh_key, self.node, "POST", PATH, cloud.name, body)
        headers["content-type"] = "application/json"
        reply = await self._client.post(cloud.url.rstrip("/") + PATH, content=body, headers=headers)
        if reply.is_success:
            return True
        answer = f"the cloud node {cloud.name} answered {reply.status_code}: {reply.text[:200]}"
        if reply.status_code in REFUSED:
            if entries == 1:
                self.last_error = answer
                return False
            self._one_by_one = entries
            raise ShipFailed(f"{answer} (sending the batch again one entry a POST)")
        raise ShipFailed(answer)

    async def _ship_forever(self) -> None:
        delay = RETRY_MIN_S
        while True:
            try:
                sent = await self.ship_once()
            except (httpx.HTTPError, RedisError, ShipFailed, OSError) as exc:
                self._failed(exc)
                await asyncio.sleep(delay)
                delay = min(RETRY_MAX_S, delay * 2)
                continue
            except Exception as exc:  # never let the shipper die silently
                log.exception("shipping call records failed")
                self._failed(exc)
                await asyncio.sleep(RETRY_MAX_S)
                continue
            delay = RETRY_MIN_S
            if self._failing and sent:
                log.info("call records: shipping to the cloud node %s again", self.cloud)
                self._failing = False
                self.last_error = ""
            if not sent:
                await asyncio.sleep(IDLE_S)

    def _refused(self, count: int) -> None:
        self.refused += count
        if not self._refusing:
            self._refusing = True
            log.warning(
                "call records: %d dropped — %s (counted in edgefaas_records_refused_total)",
                count,
                self.last_error,
            )

    def _failed(self, exc: Exception) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"
        if not self._failing:
            self._failing = True
            log.warning(
                "call records: cannot ship to the cloud (%s); they wait in Redis and are "
                "retried with backoff",
                self.last_error,
            )

    def _no_cloud(self) -> None:
        if not self._no_cloud_logged:
            self._no_cloud_logged = True
            log.info("call records: no --role cloud node in the mesh; records wait for one")
