"""What this node knows of the other nodes' load, to send them calls it cannot serve itself.

The view is rebuilt from the mesh's node records every ``REFRESH_S``; nodes heartbeat every
``HEARTBEAT_S``, so the load a choice is based on is at most about half a second old. To a
peer's reported load the view adds this node's calls to it that are still running and were
sent after the peer wrote its record (the record's own time, so clocks should agree within a
fraction of a second, as NTP keeps them), and takes off those of its calls the record counted
that have been answered since: a burst does not pile onto a peer that still looks idle, and a
peer that answers fast is not thought busy until its next record.

A peer is chosen by power of two choices (Mitzenmacher; Ray Serve routes the same way): two
random candidates among the peers that run the same digest and report a free slot, and the
less loaded of the two. Choosing "the least loaded" would send every node's overflow to the
same peer until the next refresh.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from registry.membership import NodeRecord

log = logging.getLogger("edgefaas.gateway")

REFRESH_S = 0.2
STALE_S = 1.5  # a view older than this (Redis unreachable) offers no peer
DOWN_S = 3.0  # a peer that refused a connection is not chosen again for this long
CLOSE_WAIT_S = 2.0
MAX_ANSWERED = 4096  # answered calls remembered per peer and function, until its next record


@dataclass(frozen=True, slots=True)
class Load:
    """One function on one node: the digest it runs, its slots, calls running or queued."""

    digest: str
    slots: int
    busy: int


@dataclass(slots=True)
class Member:
    """Another node of the mesh as its last heartbeat showed it."""

    name: str
    url: str
    role: str
    functions: dict[str, Load] = field(default_factory=dict)
    reported_at: float = 0.0  # the record's time (the peer's clock), 0 if it gave none

    def runs(self, function: str, digest: str) -> bool:
        load = self.functions.get(function)
        return load is not None and load.digest == digest


class PeerView:
    """Peers (edge nodes) and cloud nodes of the mesh, refreshed in the background."""

    def __init__(
        self, me: str, members: Callable[[], Awaitable[list[NodeRecord]]] | None = None
    ) -> None:
        self.me = me
        self._members = members
        self.peers: dict[str, Member] = {}
        self.clouds: dict[str, Member] = {}  # by name, sorted
        self.seen_clouds: dict[str, str] = {}  # URL → name of every cloud node seen live
        self.refreshed_at = 0.0
        self._running: dict[tuple[str, str], list[float]] = {}  # send times, by peer, function
        self._answered: dict[tuple[str, str], list[tuple[float, float]]] = {}  # (sent, done)
        self._down: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.version = 0  # changes whenever the view does

    def start(self) -> None:
        if self._members is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._refresh_forever())

    async def close(self) -> None:
        """Stop refreshing. Bounded: a cancellation that a Redis call's own timeout turns
        into a TimeoutError is caught by the loop, which then sees ``_closing``."""
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=CLOSE_WAIT_S)
            self._task = None

    # ------------------------------------------------------------------------ reading

    def fresh(self) -> bool:
        return time.monotonic() - self.refreshed_at <= STALE_S

    def has_peer(self, function: str, digest: str) -> bool:
        """Whether some live peer runs ``function`` at ``digest`` (busy or not)."""
        if not self.fresh():
            return False
        return any(
            p.runs(function, digest) and not self._is_down(p.name) for p in self.peers.values()
        )

    def choose(self, function: str, digest: str) -> Member | None:
        """A peer that runs ``function`` at ``digest`` and has a free slot, by power of two
        choices; None when there is none."""
        if not self.fresh():
            return None
        candidates = [
            peer
            for peer in self.peers.values()
            if peer.runs(function, digest)
            and self._spare(peer, function) > 0
            and not self._is_down(peer.name)
        ]
        if len(candidates) <= 1:
            return candidates[0] if candidates else None
        first, second = random.sample(candidates, 2)
        return first if self._used(first, function) <= self._used(second, function) else second

    def cloud(self, url: str = "") -> Member | None:
        """The cloud node at ``url`` (or the first one, when ``url`` is empty), if it is a
        live member of the mesh. While Redis is unreachable the last view holds: the cloud
        may well be up (its circuit breaker finds out), and no version changes meanwhile."""
        for member in self.clouds.values():
            if not url or member.url.rstrip("/") == url:
                return member
        return None

    def cloud_gone(self, url: str = "") -> str | None:
        """The name of a cloud node seen live before (at ``url``, or any when empty) that
        is no longer in the mesh — stopped, or cut off — or None (also when the view is
        stale: then nobody knows)."""
        if not self.fresh() or self.cloud(url) is not None:
            return None
        for seen_url, name in self.seen_clouds.items():
            if not url or seen_url == url:
                return name
        return None

    # ------------------------------------------------------------------------ accounting

    def sent(self, peer: str, function: str) -> float:
        """A call is being sent to ``peer``: count it until :meth:`done` with the token
        this returns."""
        token = time.time()
        self._running.setdefault((peer, function), []).append(token)
        return token

    def done(self, peer: str, function: str, token: float) -> None:
        key = (peer, function)
        running = self._running.get(key)
        if running is not None:
            running.remove(token)
            if not running:
                del self._running[key]
        answered = self._answered.setdefault(key, [])
        if len(answered) < MAX_ANSWERED:
            answered.append((token, time.time()))

    def mark_down(self, peer: str) -> None:
        """``peer`` refused a connection: do not choose it for ``DOWN_S`` (its record
        expires from the mesh within that time if it is dead)."""
        self._down[peer] = time.monotonic() + DOWN_S
        self.version += 1

    # ------------------------------------------------------------------------ refreshing

    def update(self, records: list[NodeRecord]) -> None:
        """Rebuild the view from the mesh's node records."""
        peers: dict[str, Member] = {}
        clouds: dict[str, Member] = {}
        for record in records:
            member = _member(record)
            if member is None or member.name == self.me or not record.get("serving"):
                continue
            (clouds if member.role == "cloud" else peers)[member.name] = member
        self.peers = peers
        self.clouds = dict(sorted(clouds.items()))
        self.seen_clouds.update({m.url: m.name for m in self.clouds.values()})
        for key, answered in list(self._answered.items()):  # keep those the records count
            member = peers.get(key[0])
            kept = [a for a in answered if member is not None and a[1] > member.reported_at]
            if kept:
                self._answered[key] = kept
            else:
                del self._answered[key]
        self.refreshed_at = time.monotonic()
        self.version += 1

    def _spare(self, peer: Member, function: str) -> int:
        load = peer.functions[function]
        return load.slots - self._used(peer, function)

    def _used(self, peer: Member, function: str) -> int:
        key = (peer.name, function)
        since = peer.reported_at
        unseen = sum(1 for sent in self._running.get(key, ()) if sent > since)
        gone = sum(1 for sent, done in self._answered.get(key, ()) if sent <= since < done)
        return max(0, peer.functions[function].busy - gone) + unseen

    def _is_down(self, peer: str) -> bool:
        until = self._down.get(peer)
        if until is None:
            return False
        if time.monotonic() >= until:
            del self._down[peer]
            return False
        return True

    async def _refresh_forever(self) -> None:
        assert self._members is not None
        while not self._closing:
            try:
                self.update(await self._members())
            except (RedisError, RuntimeError, OSError) as exc:
                log.debug("peer view not refreshed: %s", exc)
            except Exception:  # a malformed record must not stop the refreshes
                log.exception("peer view not refreshed")
            await asyncio.sleep(REFRESH_S)


def _member(record: NodeRecord) -> Member | None:
    """A member from a node record (already checked by the membership); functions that do
    not run, or whose numbers are not numbers, are left out."""
    functions: dict[str, Load] = {}
    reported = record.get("functions")
    if isinstance(reported, dict):
        for name, status in reported.items():
            load = _load(status)
            if load is not None:
                functions[name] = load
    role = record.get("role")
    reported_at = record.get("heartbeat_at")
    return Member(
        name=str(record["name"]),
        url=str(record["url"]).rstrip("/"),
        role=role if role in ("edge", "cloud") else "edge",
        functions=functions,
        reported_at=float(reported_at)
        if isinstance(reported_at, int | float) and not isinstance(reported_at, bool)
        else 0.0,
    )


def _load(status: Any) -> Load | None:
    if not isinstance(status, dict) or status.get("state") != "running":
        return None
    digest, slots = status.get("digest"), status.get("slots")
    busy = status.get("in_flight"), status.get("queue_depth")
    numbers = (slots, *busy)
    if not isinstance(digest, str) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in numbers
    ):
        return None
    return Load(digest, int(slots), int(busy[0]) + int(busy[1]))  # type: ignore[arg-type]
