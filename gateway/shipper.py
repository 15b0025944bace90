"""The shipper: sends an edge node's call records to the cloud node, in order, at least once.

It reads the node's stream after the last id the cloud took, POSTs up to ``BATCH`` records
to the cloud's ``POST /system/records`` (signed with the mesh key for the cloud node), and
on a 2xx moves the cursor and trims what was shipped. On any failure it keeps the batch and
tries again after a backoff (``RETRY_MIN_S`` doubling to ``RETRY_MAX_S``); the cloud
de-duplicates by (node, call id), so a batch sent twice is stored once. With no cloud node
in the mesh the records wait in the stream (under the quota).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

import httpx
from redis.exceptions import RedisError

from gateway.peers import Member
from gateway.records import Record, RecordStream
from registry.meshauth import sign_call

log = logging.getLogger("edgefaas.records")

PATH = "/system/records"
BATCH = 500
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
        self.cloud = ""  # the cloud node shipped to last
        self.last_error = ""
        self._failing = False
        self._no_cloud_logged = False
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
        """Ship one batch; return how many records the cloud took (0: nothing waits, or
        there is no cloud). Raises on failure, with the batch still in the stream."""
        cloud = self.find_cloud()
        if cloud is None:
            self._no_cloud()
            return 0
        self._no_cloud_logged = False
        last_id, records = await self.stream.read(BATCH)
        if not last_id:
            return 0
        if records:
            await self._post(cloud, records)
        await self.stream.shipped(last_id)
        self.shipped += len(records)
        self.cloud = cloud.name
        return len(records)

    async def _post(self, cloud: Member, records: list[Record]) -> None:
        body = json.dumps({"node": self.node, "records": records}, separators=(",", ":"))
        data = body.encode()
        headers = sign_call(self.mesh_key, self.node, "POST", PATH, cloud.name, data)
        headers["content-type"] = "application/json"
        reply = await self._client.post(cloud.url.rstrip("/") + PATH, content=data, headers=headers)
        if not reply.is_success:
            raise ShipFailed(
                f"the cloud node {cloud.name} answered {reply.status_code}: {reply.text[:200]}"
            )

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
            if sent < BATCH:
                await asyncio.sleep(IDLE_S)

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
