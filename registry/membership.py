"""Mesh membership: each node's record in Redis, kept alive by heartbeats.

A node writes its record (name, role, URL, capacity, functions and their digests, live load)
every ``HEARTBEAT_S`` with a time-to-live of ``NODE_TTL_S``: a node that stops heartbeating
drops out of the mesh within that time, and a clean shutdown removes its record at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from typing import Any

from redis.asyncio import Redis

from registry.errors import MeshError
from registry.keys import Keys, text

HEARTBEAT_S = 0.25  # also how fresh the load that peers route by is
NODE_TTL_S = 2.5  # well inside the 3 s within which a dead node must drop out
# Delete a node's record only if it is still this instance's (a node refused for a name
# already in use must not remove the live node that uses it).
_LEAVE = """
local raw = redis.call('GET', KEYS[1])
if raw and cjson.decode(raw)['instance'] == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[2], ARGV[2])
  return 1
end
return 0
"""

NodeRecord = dict[str, Any]
log = logging.getLogger("edgefaas.registry")
_URL = re.compile(r"https?://[A-Za-z0-9.\-\[\]:]+(:\d+)?/?")


class Membership:
    """One node's view of the mesh's members, and its own registration."""

    def __init__(self, redis: Redis, keys: Keys, name: str, instance: str) -> None:
        self.redis = redis
        self.keys = keys
        self.name = name
        self.instance = instance

    async def claim(self) -> None:
        """Refuse to join when a live node already uses this name. A record left by this
        name's previous run (a crash, then a quick restart) expires within NODE_TTL_S, so
        the claim waits that long before it gives up."""
        deadline = time.monotonic() + NODE_TTL_S + HEARTBEAT_S
        while True:
            raw = await self.redis.get(self.keys.node(self.name))
            if not raw:
                return
            other: NodeRecord = json.loads(raw)
            if other.get("instance") == self.instance:
                return
            if time.monotonic() >= deadline:
                raise MeshError(
                    f"node name {self.name!r} is already used by a live node at "
                    f"{other.get('url')}; give this node another --node name"
                )
            await asyncio.sleep(HEARTBEAT_S / 2)

    async def beat(self, record: NodeRecord) -> None:
        """Write (or refresh) this node's record."""
        record = {**record, "name": self.name, "instance": self.instance}
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(self.keys.node(self.name), json.dumps(record), px=int(NODE_TTL_S * 1000))
            pipe.sadd(self.keys.nodes, self.name)
            await pipe.execute()

    async def leave(self) -> None:
        """Remove this node's record at once (if it is still this instance's)."""
        await self.redis.eval(
            _LEAVE, 2, self.keys.node(self.name), self.keys.nodes, self.instance, self.name
        )

    async def live(self) -> list[NodeRecord]:
        """Records of the nodes that heartbeat, sorted by name; forgets expired names."""
        names = sorted(text(n) for n in await self.redis.smembers(self.keys.nodes))
        if not names:
            return []
        raws = await self.redis.mget([self.keys.node(n) for n in names])
        gone = [n for n, raw in zip(names, raws, strict=True) if raw is None]
        if gone:
            await self.redis.srem(self.keys.nodes, *gone)
        records = []
        for name, raw in zip(names, raws, strict=True):
            record = _checked(name, raw) if raw is not None else None
            if record is not None:
                records.append(record)
        return records


def _checked(name: str, raw: bytes | str) -> NodeRecord | None:
    """A node record read back from Redis, or None (logged) if it is not one: Redis is
    shared, and a record's URL is where this node would send signed requests."""
    try:
        record = json.loads(raw)
    except ValueError:
        record = None
    url = record.get("url") if isinstance(record, dict) else None
    if (
        not isinstance(record, dict)
        or record.get("name") != name
        or not isinstance(url, str)
        or not _URL.fullmatch(url)
    ):
        log.warning("ignoring a malformed record for node %r in Redis", name[:64])
        return None
    return record
