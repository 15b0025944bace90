"""This node's part in the mesh: its Redis connection, its heartbeat, and the watch that keeps
its pools at the mesh's desired state.

When Redis cannot be reached the node is *degraded*, not dead: it keeps serving what it runs
(and, when it starts without Redis, what it ran last, from its own disk), retries with
backoff, and resyncs when Redis answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import time
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.mesh.reconciler import Reconciler, entries_from_applied
from registry.bundle import build_bundle
from registry.desired import DesiredEntry, DesiredState
from registry.errors import MeshError
from registry.fetch import Fetcher
from registry.keys import Keys, text
from registry.membership import HEARTBEAT_S, Membership, NodeRecord
from registry.meshauth import sign_request
from registry.redis_server import EmbeddedRedis, mask_password
from registry.signing import SigningKey, TrustedKeys
from registry.specs import Manifest
from registry.store import BundleStore
from runtime.supervisor import Supervisor

log = logging.getLogger("edgefaas.mesh")

WATCH_S = 0.1  # how often the desired state's generation is polled (a GET)
PEER_WAIT_S = 2.0  # how long a later fetcher waits for an earlier one to hold the bundle
FETCHERS_TTL_S = 60
RETRY_MAX_S = 5.0  # backoff ceiling while Redis is unreachable
REDIS_TIMEOUT_S = 2.0
CLOSE_WAIT_S = 3.0


def load_or_create_secret(path: Path) -> bytes:
    """A random secret kept in ``path`` (0600), created at first use."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as out:
            out.write(secrets.token_hex(32) + "\n")
    return path.read_text(encoding="ascii").strip().encode()


def load_or_create_signing_key(path: Path) -> SigningKey:
    """The node's signing key at ``path``, generated (with ``.pub`` beside it) if missing."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        SigningKey.generate().save(path, path.with_suffix(".pub"))
        log.info("generated a signing key in %s", path)
    return SigningKey.load(path)


class MeshAgent:
    """Opened by the node at start, closed at shutdown."""

    def __init__(
        self,
        name: str,
        data_dir: Path,
        supervisor: Supervisor,
        *,
        redis_url: str,
        key_prefix: str,
        signing_key: SigningKey,
        trusted: TrustedKeys,
        mesh_key: bytes,
    ) -> None:
        self.name = name
        self.instance = uuid.uuid4().hex
        self.data_dir = data_dir
        self.keys = Keys(key_prefix)
        self.signing_key = signing_key
        self.trusted = trusted
        self.mesh_key = mesh_key
        self.store = BundleStore(data_dir, trusted)
        self.fetcher = Fetcher(self.store, self.authenticate)
        self.reconciler = Reconciler(supervisor, self.store, self.fetcher, self._beat_soon)
        self.degraded_since: float | None = None
        self.degraded_reason = ""
        self._record: Callable[[], NodeRecord] = dict
        self._redis_url = redis_url
        self._embedded: EmbeddedRedis | None = None
        self._generation = -1
        self._beating: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self.redis: Redis | None = None
        self.desired: DesiredState | None = None
        self.members: Membership | None = None

    @property
    def redis_url(self) -> str:
        return self._redis_url

    async def start(self, manifest: Manifest | None, record: Callable[[], NodeRecord]) -> None:
        """Connect, claim the node name, publish ``manifest`` (if any) to the mesh and run
        what the mesh desires — or, when Redis is unreachable, what this node ran last."""
        if not self._redis_url:
            self._embedded = EmbeddedRedis(self.data_dir / "redis")
            self._redis_url = await asyncio.to_thread(self._embedded.start)
            log.info("embedded Redis at %s", self._redis_url)
        self.redis = Redis.from_url(
            self._redis_url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S
        )
        self.desired = DesiredState(self.redis, self.keys)
        self.members = Membership(self.redis, self.keys, self.name, self.instance)
        self._record = record
        applied = self.store.load_applied()
        self.reconciler.generation = int(applied.get("generation", 0) or 0)
        try:
            await self.members.claim()
            await self._restore_if_lost(entries_from_applied(applied))
            if manifest is not None:
                await self.publish(manifest)
            await self.members.beat(record())
            await self._resync()
        except RedisError as exc:
            self._degrade(exc)
            entries = entries_from_applied(applied)
            log.warning(
                "serving the %d function(s) this node ran last, from its disk", len(entries)
            )
            self.reconciler.apply(entries, _OnlyLocal(), self.reconciler.generation)
        await self.reconciler.settle()  # the node serves its functions before it listens
        self._tasks = [self._spawn(self._heartbeat_loop()), self._spawn(self._watch_loop())]

    async def close(self) -> None:
        """Stop the loops, leave the mesh, close Redis. Bounded: a cancellation that a Redis
        call's own timeout turns into a TimeoutError is caught by a loop, which then sees
        ``_closing`` and ends."""
        self._closing = True
        tasks = [*self._tasks, *([self._beating] if self._beating else [])]
        for task in tasks:
            task.cancel()
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=CLOSE_WAIT_S)
            if stuck:
                log.warning("%d mesh task(s) did not stop in %g s", len(stuck), CLOSE_WAIT_S)
        await self.reconciler.close()
        if self.members is not None:
            with contextlib.suppress(RedisError):
                await self.members.leave()
        if self.redis is not None:
            await self.redis.aclose()
        await self.fetcher.close()
        if self._embedded is not None:
            await asyncio.to_thread(self._embedded.stop)

    async def publish(self, manifest: Manifest) -> list[DesiredEntry]:
        """Build, sign and store a bundle per function of ``manifest`` and make them the
        mesh's desired versions (as ``edgefaas deploy`` does through the API)."""
        desired = self._require_desired()
        entries = []
        for spec in manifest.functions.values():
            bundle = await asyncio.to_thread(build_bundle, spec)
            signed = bundle.sign(self.signing_key)
            await asyncio.to_thread(
                self.store.put, signed.data, signed.digest, signed.signature, signed.key_id
            )
            await desired.add_holder(signed.digest, self.name)
            triggers = [t.path for t in spec.triggers]
            entries.append(
                await desired.assign(
                    spec.name, signed.digest, signed.signature, signed.key_id, triggers
                )
            )
        return entries

    def authenticate(self, method: str, path: str, to: str) -> dict[str, str]:
        return sign_request(self.mesh_key, self.name, method, path, to)

    def status(self) -> dict[str, Any]:
        return {
            "degraded": self.degraded_since is not None,
            "degraded_since": self.degraded_since,
            "reason": self.degraded_reason or None,
        }

    async def live_nodes(self) -> list[NodeRecord]:
        return await self._require_members().live()

    async def holders_for(self, digest: str) -> dict[str, str]:
        """Peers to fetch ``digest`` from. Nodes queue up per digest: the first fetches
        from whoever holds the bundle (usually the node it was uploaded to); each later one
        waits (up to ``PEER_WAIT_S``) for a node ahead of it in the queue to hold it, and
        fetches from those — so the upload is not sent again to every node."""
        redis = self._require_redis()
        queue = self.keys.fetchers(digest)
        async with redis.pipeline(transaction=True) as pipe:
            pipe.rpush(queue, self.name)
            pipe.expire(queue, FETCHERS_TTL_S)
            position, _ = await pipe.execute()
        ahead = {text(n) for n in await redis.lrange(queue, 0, position - 2)} - {self.name}
        deadline = time.monotonic() + (PEER_WAIT_S if ahead else 0.0)
        while True:
            holders = await self._live_holders(digest)
            peers = {name: url for name, url in holders.items() if name in ahead}
            if peers or time.monotonic() >= deadline:
                return peers or holders
            await asyncio.sleep(0.05)

    async def now_holding(self, digest: str) -> None:
        await self._require_desired().add_holder(digest, self.name)

    async def _live_holders(self, digest: str) -> dict[str, str]:
        """Live, serving nodes (other than this one) that hold ``digest``: name → URL."""
        holders = await self._require_desired().holders(digest)
        return {
            r["name"]: r["url"]
            for r in await self._require_members().live()
            if r["name"] in holders and r["name"] != self.name and r.get("serving")
        }

    async def beat(self) -> None:
        """Write this node's record now (after a switch, or once it serves)."""
        with contextlib.suppress(RedisError, RuntimeError):
            await self._require_members().beat(self._record())

    def desired_state(self) -> DesiredState:
        return self._require_desired()

    def _require_desired(self) -> DesiredState:
        if self.desired is None:
            raise RuntimeError("the mesh agent is not started")
        return self.desired

    def _require_redis(self) -> Redis:
        if self.redis is None:
            raise RuntimeError("the mesh agent is not started")
        return self.redis

    def _require_members(self) -> Membership:
        if self.members is None:
            raise RuntimeError("the mesh agent is not started")
        return self.members

    async def _resync(self) -> None:
        desired = self._require_desired()
        await self._restore_if_lost(
            {name: r.entry for name, r in self.reconciler.running.items()}
            or entries_from_applied(self.store.load_applied())
        )
        generation = await desired.generation()
        entries = await desired.entries()
        self.reconciler.apply(entries, self, generation)
        self._generation = generation

    async def _restore_if_lost(self, ran: dict[str, DesiredEntry]) -> None:
        """Redis without the mesh's state (it restarted without persistence): the
        generation went back below what this node applied. Put back what this node runs or
        last ran, rather than apply an empty desired state and drop every function. Other
        nodes do the same; assigning a digest that is already desired changes nothing."""
        desired = self._require_desired()
        generation = await desired.generation()
        if not ran or (generation >= self.reconciler.generation and generation > 0):
            return
        log.warning(
            "the mesh's Redis lost its state (generation %d, this node applied %d): "
            "restoring the %d function(s) this node runs",
            generation,
            self.reconciler.generation,
            len(ran),
        )
        for entry in ran.values():
            if not self.store.has(entry.digest):
                continue
            await desired.add_holder(entry.digest, self.name)
            try:
                await desired.assign(
                    entry.name, entry.digest, entry.signature, entry.key_id, entry.triggers
                )
            except MeshError as exc:  # another node restored a conflicting function first
                log.warning("not restoring %s: %s", entry.name, exc)
        self.reconciler.generation = await desired.generation()

    def _beat_soon(self) -> None:
        """A switch happened: heartbeat now (once), so deployers see it at once."""
        if self._beating is None or self._beating.done():
            self._beating = self._spawn(self.beat())

    async def _heartbeat_loop(self) -> None:
        while not self._closing:
            await asyncio.sleep(HEARTBEAT_S)
            try:
                await self._require_members().beat(self._record())
                self._recover()
            except RedisError as exc:
                self._degrade(exc)
            except Exception:  # never let the heartbeat die silently
                log.exception("heartbeat failed")

    async def _watch_loop(self) -> None:
        delay = WATCH_S
        while not self._closing:
            await asyncio.sleep(delay)
            try:
                generation = await self._require_desired().generation()
                if generation != self._generation or self.reconciler.retries_due():
                    await self._resync()
                self._recover()
                delay = WATCH_S
            except RedisError as exc:
                self._degrade(exc)
                delay = min(RETRY_MAX_S, delay * 2)
            except Exception:  # e.g. a malformed value in Redis: log, back off, go on
                log.exception("reconciling with the mesh failed; retrying")
                delay = min(RETRY_MAX_S, delay * 2)

    def _degrade(self, exc: Exception) -> None:
        if self.degraded_since is None:
            self.degraded_since = time.time()
            log.warning(
                "mesh degraded: Redis at %s is unreachable (%s); serving what this "
                "node has and retrying",
                mask_password(self._redis_url),
                exc,
            )
        self.degraded_reason = f"Redis unreachable: {exc}"

    def _recover(self) -> None:
        if self.degraded_since is not None:
            log.info(
                "mesh reachable again after %.1f s; resyncing", time.time() - self.degraded_since
            )
            self.degraded_since = None
            self.degraded_reason = ""
            self._generation = -1  # force a full resync on the next watch

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(coro)


class _OnlyLocal:
    """Peers while Redis is unreachable: only bundles already on disk can be run."""

    async def holders_for(self, digest: str) -> dict[str, str]:
        return {}

    async def now_holding(self, digest: str) -> None:
        return None
