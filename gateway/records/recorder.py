"""The node's call recording, composed: the call path's buffer, where it is written (the
Redis stream on an edge node, the record store on a cloud node), the shipper of an edge
node, their metrics and their status (``GET /system/records/status``)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

from gateway.errors import StartupFailed
from gateway.mesh.peers import Member
from gateway.records.buffer import CallRecords
from gateway.records.shipper import RecordShipper
from gateway.records.store import RecordStore
from gateway.records.stream import RecordStream
from registry.meshauth import ReplayGuard

if TYPE_CHECKING:
    from gateway.node import Node


class Recorder:
    """Opened by the node after its mesh agent, closed before it."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.cloud = node.settings.role == "cloud"
        self.buffer = CallRecords(node.name, node.settings.records_quota)
        self.store = RecordStore(node.data_dir, node.name) if self.cloud else None
        self.stream: RecordStream | None = None
        self.shipper: RecordShipper | None = None
        self.nonces = ReplayGuard()  # of the batches received (a cloud node)
        node.metrics.registry.register(RecordsCollector(self))

    async def start(self) -> None:
        """Open the store (a cloud node) or the stream and the shipper (an edge node).
        Raises :class:`StartupFailed` if the store cannot be opened."""
        if self.store is not None:
            try:
                await asyncio.to_thread(self.store.open)
            except (sqlite3.Error, OSError) as exc:
                raise StartupFailed(
                    f"cannot open the call record store {self.store.path}: {exc}"
                ) from exc
            self.buffer.start(self.store)
            return
        mesh = self.node.mesh
        if mesh.redis is None:
            raise StartupFailed("call records: the mesh agent is not started")
        quota = self.buffer.quota
        self.stream = RecordStream(mesh.redis, mesh.keys, self.node.name, quota)
        self.buffer.start(self.stream)
        self.shipper = RecordShipper(self.stream, self.node.name, mesh.mesh_key, self._cloud)
        self.shipper.start()

    async def close(self) -> None:
        if self.shipper is not None:
            await self.shipper.close()
        await self.buffer.close()
        if self.store is not None:
            await asyncio.to_thread(self.store.close)

    @property
    def shipped(self) -> int:
        return self.shipper.shipped if self.shipper is not None else 0

    @property
    def refused(self) -> int:
        return self.shipper.refused if self.shipper is not None else 0

    async def status(self) -> dict[str, Any]:
        buffer = self.buffer
        status: dict[str, Any] = {
            "node": self.node.name,
            "role": self.node.settings.role,
            "quota": buffer.quota,
            "in_memory": buffer.pending,
            "written": buffer.written,
            "dropped": buffer.dropped,
            "error": buffer.last_error or None,
        }
        if self.store is not None:
            status["stored"] = self.store.count
            return status
        waiting: int | str = "unknown (Redis unreachable)"
        if self.stream is not None:
            with contextlib.suppress(RedisError):
                waiting = await self.stream.length()
        cloud = self._cloud()
        status |= {
            "waiting": waiting,
            "shipped": self.shipped,
            "refused": self.refused,
            "cloud": cloud.name if cloud is not None else None,
            "ship_error": (self.shipper.last_error or None) if self.shipper else None,
        }
        return status

    def _cloud(self) -> Member | None:
        router = self.node.router
        return router.view.cloud(router.cloud_url)


class RecordsCollector(Collector):
    """Record counts, read at scrape time."""

    def __init__(self, recorder: Recorder) -> None:
        self._recorder = recorder

    def collect(self) -> Iterator[Metric]:
        recorder = self._recorder
        dropped = CounterMetricFamily(
            "edgefaas_records_dropped",
            "Call records dropped over --records-quota before the cloud took them.",
        )
        dropped.add_metric([], recorder.buffer.dropped)
        shipped = CounterMetricFamily(
            "edgefaas_records_shipped", "Call records the cloud node took from this node."
        )
        shipped.add_metric([], recorder.shipped)
        refused = CounterMetricFamily(
            "edgefaas_records_refused",
            "Call records the cloud node refused for good (400, 413), dropped.",
        )
        refused.add_metric([], recorder.refused)
        in_memory = GaugeMetricFamily(
            "edgefaas_records_in_memory", "Call records not yet written to Redis (or the store)."
        )
        in_memory.add_metric([], recorder.buffer.pending)
        yield from (dropped, shipped, refused, in_memory)
