"""The mesh's desired state in Redis: which digest of each function every node should run.

Every change bumps ``P:generation``, which nodes poll to know when to reconcile. Versions
count per function from 1; every entry a function ever had stays in its history, so that a
rollback can name an earlier version.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import WatchError

from registry.errors import MeshError, MeshNotFound
from registry.keys import Keys, text

HISTORY_KEPT = 50
log = logging.getLogger("edgefaas.registry")


@dataclass(frozen=True)
class DesiredEntry:
    """One function's desired version. ``signature``/``key_id`` sign ``digest``."""

    name: str
    digest: str
    version: int
    signature: str
    key_id: str
    triggers: list[str] = field(default_factory=list)
    deployed_at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DesiredEntry:
        """Raises KeyError, TypeError or ValueError for anything but a well-formed entry:
        Redis is shared, so what it holds is checked like any other input."""
        entry = cls(
            name=_text_field(data, "name"),
            digest=_text_field(data, "digest"),
            version=int(data["version"]),
            signature=_text_field(data, "signature"),
            key_id=_text_field(data, "key_id"),
            triggers=[str(t) for t in data.get("triggers", [])],
            deployed_at=float(data.get("deployed_at", 0.0)),
        )
        if not _DIGEST.fullmatch(entry.digest) or not _NAME.fullmatch(entry.name):
            raise ValueError(f"entry for {entry.name[:64]!r} has a bad name or digest")
        return entry

    @classmethod
    def from_json(cls, raw: bytes | str) -> DesiredEntry:
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("a desired entry must be a JSON object")
        return cls.from_dict(data)


class DesiredState:
    """Reads and changes the desired state (async, one Redis connection pool)."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    async def generation(self) -> int:
        raw = await self.redis.get(self.keys.generation)
        return int(raw) if raw else 0

    async def entries(self) -> dict[str, DesiredEntry]:
        """The desired entries; a malformed one is skipped (and logged), never fatal."""
        return _parse_entries(await self.redis.hgetall(self.keys.desired))

    async def entry(self, name: str) -> DesiredEntry | None:
        raw = await self.redis.hget(self.keys.desired, name)
        return _parse_entries({name: raw}).get(name) if raw else None

    async def history(self, name: str) -> list[DesiredEntry]:
        raw = await self.redis.lrange(self.keys.history(name), 0, -1)
        return list(_parse_entries({f"{i}": item for i, item in enumerate(raw)}).values())

    async def assign(
        self, name: str, digest: str, signature: str, key_id: str, triggers: list[str]
    ) -> DesiredEntry:
        """Make ``digest`` the desired version of ``name`` (a new version number), unless it
        already is. Refuses a trigger path that another function already claims."""
        while True:
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(self.keys.desired, self.keys.version(name))
                    current = await self._entries_in(pipe)
                    existing = current.get(name)
                    if existing is not None and existing.digest == digest:
                        return existing
                    _check_triggers(name, triggers, current)
                    version = int(await pipe.get(self.keys.version(name)) or 0) + 1
                    entry = DesiredEntry(
                        name, digest, version, signature, key_id, sorted(triggers), time.time()
                    )
                    pipe.multi()  # type: ignore[no-untyped-call]
                    self._write(pipe, entry)
                    await pipe.execute()
                    return entry
                except WatchError:
                    continue

    async def rollback(self, name: str, to_version: int | None) -> DesiredEntry:
        """Make an earlier version desired again (as a new version number). Without
        ``to_version``: the version before the current one."""
        current = await self.entry(name)
        history = await self.history(name)
        if not history:
            raise MeshNotFound(f"function {name} has never been deployed to this mesh")
        if to_version is None:
            if current is None:
                target = history[0]
            else:
                older = [
                    e for e in history if e.version < current.version and e.digest != current.digest
                ]
                if not older:
                    raise MeshNotFound(f"function {name} has no earlier version to roll back to")
                target = older[0]
        else:
            found = [e for e in history if e.version == to_version]
            if not found:
                known = ", ".join(str(e.version) for e in history)
                raise MeshNotFound(f"function {name} has no version {to_version} (known: {known})")
            target = found[0]
        return await self.assign(
            name, target.digest, target.signature, target.key_id, target.triggers
        )

    async def remove(self, name: str) -> bool:
        """Remove ``name`` from the desired state (its history stays)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hdel(self.keys.desired, name)
            pipe.incr(self.keys.generation)
            removed, _ = await pipe.execute()
        return bool(removed)

    async def add_holder(self, digest: str, node: str) -> None:
        await self.redis.sadd(self.keys.holders(digest), node)

    async def holders(self, digest: str) -> set[str]:
        raw = await self.redis.smembers(self.keys.holders(digest))
        return {text(item) for item in raw}

    async def _entries_in(self, pipe: Any) -> dict[str, DesiredEntry]:
        return _parse_entries(await pipe.hgetall(self.keys.desired))

    def _write(self, pipe: Any, entry: DesiredEntry) -> None:
        raw = entry.to_json()
        pipe.hset(self.keys.desired, entry.name, raw)
        pipe.set(self.keys.version(entry.name), entry.version)
        pipe.lpush(self.keys.history(entry.name), raw)
        pipe.ltrim(self.keys.history(entry.name), 0, HISTORY_KEPT - 1)
        pipe.incr(self.keys.generation)


def _check_triggers(name: str, triggers: list[str], current: dict[str, DesiredEntry]) -> None:
    for other in current.values():
        if other.name == name:
            continue
        clash = set(triggers) & set(other.triggers)
        if clash:
            raise MeshError(
                f"function {name}: trigger path {sorted(clash)[0]} is already the "
                f"trigger of function {other.name} in this mesh"
            )


_DIGEST = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[a-z][a-z0-9_-]{0,62}")


def _text_field(data: dict[str, Any], key: str) -> str:
    value = data[key]
    if not isinstance(value, str):
        raise TypeError(f"{key} must be a string")
    return value


def _parse_entries(raw: dict[Any, Any]) -> dict[str, DesiredEntry]:
    entries = {}
    for key, value in raw.items():
        try:
            entries[text(key)] = DesiredEntry.from_json(value)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("ignoring a malformed desired entry %r in Redis: %s", text(key)[:64], exc)
    return entries
