"""Mesh membership: each node's record in Redis, kept alive by heartbeats.

A node writes its record (name, role, URL, capacity, functions and their digests, live load)
every ``HEARTBEAT_S`` with a time-to-live of ``NODE_TTL_S``: a node that stops heartbeating
drops out of the mesh within that time, and a clean shutdown removes its record at once.
"""

from __future__ import annotations

import json
from typing import Any

from redis.asyncio import Redis

from registry.errors import MeshError
from registry.keys import Keys, text

HEARTBEAT_S = 1.0
NODE_TTL_S = 3.0

NodeRecord = dict[str, Any]


class Membership:
    """One node's view of the mesh's members, and its own registration."""

    def __init__(self, redis: Redis, keys: Keys, name: str, instance: str) -> None:
        self.redis = redis
        self.keys = keys
        self.name = name
        self.instance = instance

    async def claim(self) -> None:
        """Refuse to join when a live node already uses this name."""
        raw = await self.redis.get(self.keys.node(self.name))
        if raw:
            other: NodeRecord = json.loads(raw)
            if other.get("instance") != self.instance:
                raise MeshError(
                    f"node name {self.name!r} is already used by a live node at "
                    f"{other.get('url')}; give this node another --node name"
                )

    async def beat(self, record: NodeRecord) -> None:
        """Write (or refresh) this node's record."""
        record = {**record, "name": self.name, "instance": self.instance}
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(self.keys.node(self.name), json.dumps(record), px=int(NODE_TTL_S * 1000))
            pipe.sadd(self.keys.nodes, self.name)
            await pipe.execute()

    async def leave(self) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.delete(self.keys.node(self.name))
            pipe.srem(self.keys.nodes, self.name)
            await pipe.execute()

    async def live(self) -> list[NodeRecord]:
        """Records of the nodes that heartbeat, sorted by name; forgets expired names."""
        names = sorted(text(n) for n in await self.redis.smembers(self.keys.nodes))
        if not names:
            return []
        raws = await self.redis.mget([self.keys.node(n) for n in names])
        gone = [n for n, raw in zip(names, raws, strict=True) if raw is None]
        if gone:
            await self.redis.srem(self.keys.nodes, *gone)
        return [json.loads(raw) for raw in raws if raw is not None]
