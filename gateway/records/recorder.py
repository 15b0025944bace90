"""The node's call recording, composed: the call path's buffer, where it is written (the
Redis stream on an edge node, the record store on a cloud node), the shipper of an edge
node, their metrics and their status (``GET /system/records/status``)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.errors import StartupFailed
from gateway.mesh.peers import Member
from gateway.records.buffer import CallRecords
from gateway.records.shipper import RecordShipper
from gateway.records.store import RecordStore
from gateway.records.stream import RecordStream
from registry.keys import Keys
from registry.meshauth import ReplayGuard

CloudFinder = Callable[[], Member | None]


class Recorder:
    """Opened by the node after its mesh agent, closed before it. ``find_cloud`` names the
    cloud node records are shipped to (None while there is none); ``registry`` is the
    metrics registry its counts are scraped from."""

    def __init__(
        self,
        node_name: str,
        role: str,
        quota: int,
        data_dir: Path,
        registry: CollectorRegistry,
        find_cloud: CloudFinder,
    ) -> None:
        self.node_name = node_name
        self.role = role
        self.cloud = role == "cloud"
        self.buffer = CallRecords(node_name, quota)
        self.store = RecordStore(data_dir, node_name) if self.cloud else None
        self.stream: RecordStream | None = None
        self.shipper: RecordShipper | None = None
        self.nonces = ReplayGuard()  # of the batches received (a cloud node)
        self._cloud = find_cloud
        registry.register(RecordsCollector(self))

    async def start(self, redis: Redis, keys: Keys, mesh_key: bytes) -> None:
        """Open the store (a cloud node) or, on the mesh's Redis, the stream and the
        shipper (an edge node). Raises :class:`StartupFailed` if the store cannot be opened."""
        if self.store is not None:
            try:
                await asyncio.to_thread(self.store.open)
            except (sqlite3.Error, OSError) as exc:
                raise StartupFailed(
                    f"cannot open the call record store {self.store.path}: {exc}"
                ) from exc
            self.buffer.start(self.store)
            return
        self.stream = RecordStream(redis, keys, self.node_name, self.buffer.quota)
        self.buffer.start(self.stream)
        self.shipper = RecordShipper(self.stream, self.node_name, mesh_key, self._cloud)
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
            "node": self.node_name,
            "role": self.role,
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
