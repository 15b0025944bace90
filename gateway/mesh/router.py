"""Where a call is served: here, on a peer, in the cloud — or nowhere (429). The one decision
point of every call.

1. **Here** if a worker is free, or if the expected wait (queue depth × recent service time ÷
   slots, :meth:`runtime.pool.WarmPool.estimate_wait_s`) fits the call's budget. The budget
   is the function's ``spill.max_local_wait_ms`` when it has somewhere else to go; when it
   has nowhere (pinned with ``spill.to: []``, no peer runs it and no cloud is set, or this
   node is the cloud) calls queue here up to ``pool.max_queue_wait_ms``, as on a lone node.
   ``X-Deadline-Ms`` tightens either.
2. Else a **peer** that runs the same digest and reports a free slot (:mod:`gateway.mesh.peers`).
3. Else the **cloud**: an edgefaas node with ``--role cloud`` running the same digest, or a
   foreign gateway for functions marked ``spill.cloud_compatible``; behind a circuit breaker.
4. Else **429** with ``Retry-After``.

A forwarded call goes at most one hop. It carries ``X-Edgefaas-Hop`` and is signed with the
mesh key; the node that receives it serves it or refuses it at once (``X-Edgefaas-Refused``)
and never sends it on — not even to the cloud. The node that took the call from the client
owns its route: on a refusal it tries the next tier itself, so one node's log line and
metrics tell where every call went and why, and only that node's breaker decides whether
the cloud is tried.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass

import httpx

from gateway.mesh.breaker import CircuitBreaker
from gateway.mesh.forward import (
    DIGEST_HEADER,
    HOP_HEADER,
    Forwarder,
    NotRun,
    UpstreamFailed,
    UpstreamTimedOut,
    forward_headers,
)
from gateway.mesh.peers import REFRESH_S, Member, PeerView
from gateway.metrics import Metrics
from registry.meshauth import sign_call
from runtime.admission import Admission, Verdict
from runtime.defaults import KILL_GRACE_S
from runtime.errors import Headers, Overloaded, RuntimeFailure
from runtime.pool import WarmPool

log = logging.getLogger("edgefaas.gateway")

PEER_CONNECT_S = 0.5  # peers are on the site's network


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A call as it may be sent on: what the client sent, and its deadline (if any)."""

    name: str
    method: str
    raw_path: bytes  # with the query string
    headers: list[tuple[bytes, bytes]]
    body: bytes
    call_id: str
    started: float  # perf_counter
    deadline_s: float | None


@dataclass(frozen=True, slots=True)
class Served:
    """A call answered by another node."""

    status: int
    headers: Headers
    body: bytes
    served_by: str


class Router:
    """Routing for one node; its background parts start with :meth:`start`."""

    def __init__(
        self,
        node: str,
        role: str,
        view: PeerView,
        metrics: Metrics,
        mesh_key: bytes = b"",
        cloud_url: str = "",
        cloud_timeout_s: float = 0.5,
    ) -> None:
        self.node = node
        self.role = role
        self.view = view
        self.metrics = metrics
        self.mesh_key = mesh_key
        self.cloud_url = cloud_url.rstrip("/")
        self.cloud_timeout_s = cloud_timeout_s
        self.forwarder = Forwarder()
        self.breakers: dict[str, CircuitBreaker] = {}
        self._spillable: dict[str, tuple[WarmPool, int, float, bool]] = {}

    def start(self) -> None:
        self.view.start()

    async def close(self) -> None:
        await self.view.close()
        for breaker in self.breakers.values():
            await breaker.close()
        await self.forwarder.close()

    # ------------------------------------------------------------------ the local decision

    def admit(
        self, pool: WarmPool, deadline_s: float | None, forwarded: bool = False
    ) -> tuple[Admission, str]:
        """Whether ``pool`` takes the call, and why (a metrics reason)."""
        admission = pool.admit(self._budget(pool, deadline_s, forwarded))
        verdict = admission.verdict
        if verdict is Verdict.FREE_WORKER:
            return admission, "free_worker"
        if verdict is Verdict.QUEUE_OK:
            return admission, "queue_ok"
        if verdict is Verdict.UNAVAILABLE:
            return admission, "unavailable"
        if deadline_s is not None and verdict is Verdict.WAIT_TOO_LONG:
            limit = pool.dispatch.max_wait_s  # bounds max_local_wait_ms too (see WarmPool.admit)
            without = self._budget(pool, None, forwarded)
            if admission.wait_s <= (limit if without is None else min(without, limit)):
                return admission, "deadline"
        return admission, "saturated"

    def _budget(self, pool: WarmPool, deadline_s: float | None, forwarded: bool) -> float | None:
        """The longest expected wait the call may take here (None: the pool's own limit)."""
        if pool.dispatch.free:
            return None  # a worker is free: nothing to wait for
        spill = pool.spec.spill
        if self.role == "cloud":
            base = None
        elif forwarded:
            base = spill.max_local_wait_ms / 1000
        elif spill.pinned or not self._can_spill(pool):
            base = None
        else:
            base = spill.max_local_wait_ms / 1000
        if deadline_s is None:
            return base
        return deadline_s if base is None else min(base, deadline_s)

    def _can_spill(self, pool: WarmPool) -> bool:
        """Whether a peer or the cloud could take this function's calls — kept until the
        view changes, for at most a refresh period (every call asks while the pool is busy)."""
        now = time.monotonic()
        cached = self._spillable.get(pool.name)
        version = self.view.version
        if cached is not None and cached[:2] == (pool, version) and now < cached[2]:
            return cached[3]
        answer = self._could_spill(pool)
        self._spillable[pool.name] = (pool, version, now + REFRESH_S, answer)
        return answer

    def _could_spill(self, pool: WarmPool) -> bool:
        to = pool.spec.spill.to
        return ("peers" in to and self.view.has_peer(pool.name, pool.digest)) or (
            "cloud" in to
            and self.role != "cloud"
            and (self._cloud(pool) is not None or self.view.cloud_gone(self.cloud_url) is not None)
        )

    # ------------------------------------------------------------------ elsewhere

    async def spill(
        self, pool: WarmPool, admission: Admission, reason: str, call: Outgoing
    ) -> Served:
        """Serve a call ``pool`` refused on a peer or in the cloud, or raise the error the
        caller gets (429, or the pool's own 503 when it cannot start)."""
        spill = pool.spec.spill
        if self.role == "cloud" or spill.pinned:
            raise self._refusal(admission, "pinned" if spill.pinned else reason, [])
        notes: list[str] = []
        if "peers" in spill.to:
            served = await self._try_peer(pool, call, notes)
            if served is not None:
                return served
        cloud_down = False
        if "cloud" in spill.to:
            served, cloud_down = await self._try_cloud(pool, call, notes)
            if served is not None:
                return served
        raise self._refusal(admission, "cloud_down" if cloud_down else reason, notes)

    async def _try_peer(self, pool: WarmPool, call: Outgoing, notes: list[str]) -> Served | None:
        peer = self.view.choose(pool.name, pool.digest)
        if peer is None:
            notes.append("no peer has a free worker")
            return None
        try:
            return await self._to_peer(pool, call, peer.name, peer.url)
        except NotRun as exc:  # it did not run there: try the next tier
            if exc.refused in ("", "unauthorized"):  # down, or not of this mesh (key, clock)
                self.view.mark_down(peer.name)
            notes.append(exc.message)
            return None
        except (UpstreamTimedOut, UpstreamFailed) as exc:  # it may have run: answer the error
            if not isinstance(exc, UpstreamFailed) or exc.broken:
                self.view.mark_down(peer.name)
            raise

    async def _try_cloud(
        self, pool: WarmPool, call: Outgoing, notes: list[str]
    ) -> tuple[Served | None, bool]:
        """The cloud's answer (or None), and whether the cloud is down."""
        target = self._cloud(pool)
        if target is None:
            gone = self.view.cloud_gone(self.cloud_url)
            if gone is not None:
                notes.append(f"the cloud node {gone} has left the mesh")
                return None, True
            notes.append(self._no_cloud())
            return None, False
        url, member = target
        breaker = self._breaker(url)
        if not breaker.closed:
            notes.append(f"the cloud is unreachable ({breaker.reason})")
            return None, True
        try:
            return await self._to_cloud(pool, call, url, member), False
        except NotRun as exc:
            notes.append(exc.message)
            if exc.refused not in ("", "unauthorized"):
                return None, False
            breaker.trip(exc.message)
            return None, True
        except (UpstreamTimedOut, UpstreamFailed) as exc:  # it may have run: answer the error,
            if not isinstance(exc, UpstreamFailed) or exc.broken:  # and spare the next calls
                breaker.trip(exc.message)  # the wait (a cut-off cloud answers nothing)
            raise

    async def _to_peer(self, pool: WarmPool, call: Outgoing, peer: str, url: str) -> Served:
        token = self.view.sent(peer, pool.name)
        try:
            headers = self._mesh_headers(pool, call, peer)
            answer = await self._send(f"peer {peer}", url, call, headers, PEER_CONNECT_S, pool)
        finally:
            self.view.done(peer, pool.name, token)
        return self._served(answer, f"peer:{peer}", "peer", call)

    async def _to_cloud(
        self, pool: WarmPool, call: Outgoing, url: str, member: str | None
    ) -> Served:
        if member is not None:
            headers = self._mesh_headers(pool, call, member)
        else:  # a foreign gateway knows /function/NAME only, not this mesh's trigger paths
            headers = self._plain_headers(call)
            call = dataclasses.replace(call, raw_path=_function_path(call))
        answer = await self._send(
            "the cloud", url, call, headers, self.cloud_timeout_s, pool, mesh=member is not None
        )
        return self._served(answer, "cloud", "cloud", call)

    async def _send(
        self,
        target: str,
        url: str,
        call: Outgoing,
        headers: Headers,
        connect_s: float,
        pool: WarmPool,
        mesh: bool = True,
    ) -> tuple[float, int, Headers, bytes, float | None]:
        started = time.perf_counter()
        answer_s = pool.spec.timeout_s + KILL_GRACE_S + pool.dispatch.max_wait_s + 1.0
        answer = await self.forwarder.send(
            target,
            url,
            call.method,
            call.raw_path,
            headers,
            call.body,
            connect_s=connect_s,
            answer_s=answer_s,
            mesh=mesh,
        )
        elapsed = time.perf_counter() - started
        return elapsed, answer.status, answer.headers, answer.body, answer.remote_s

    def _served(
        self,
        answer: tuple[float, int, Headers, bytes, float | None],
        served_by: str,
        tier: str,
        call: Outgoing,
    ) -> Served:
        elapsed, status, headers, body, remote_s = answer
        added = elapsed - remote_s if remote_s is not None else elapsed
        self.metrics.observe_forward(tier, max(0.0, added))
        return Served(status, headers, body, served_by)

    def _mesh_headers(self, pool: WarmPool, call: Outgoing, to: str) -> Headers:
        headers = self._plain_headers(call)
        headers.append((HOP_HEADER, self.node.encode()))
        headers.append((DIGEST_HEADER, pool.digest.encode()))
        target = signed_target(call.raw_path, pool.digest, call.call_id)
        signed = sign_call(self.mesh_key, self.node, call.method, target, to, call.body)
        headers.extend((k.encode(), v.encode()) for k, v in signed.items())
        return headers

    def _plain_headers(self, call: Outgoing) -> Headers:
        headers = forward_headers(call.headers)
        headers.append((b"x-call-id", call.call_id.encode()))
        if call.deadline_s is not None:
            left_ms = call.deadline_s * 1000 - (time.perf_counter() - call.started) * 1000
            headers.append((b"x-deadline-ms", b"%d" % max(1, math.floor(left_ms))))
        return headers

    # ------------------------------------------------------------------ the cloud

    def cloud_node(self) -> Member | None:
        """The mesh's cloud node this node spills to (and ships its records to), if live."""
        return self.view.cloud(self.cloud_url)

    def _cloud(self, pool: WarmPool) -> tuple[str, str | None] | None:
        """Where this function's calls may go in the cloud: the URL, and the node's name
        when the cloud is an edgefaas node of the mesh (it must run the same digest)."""
        if "cloud" not in pool.spec.spill.to or self.role == "cloud":
            return None
        member = self.cloud_node()
        if member is not None:
            return (member.url, member.name) if member.runs(pool.name, pool.digest) else None
        if self.cloud_url and pool.spec.spill.cloud_compatible:
            return self.cloud_url, None
        return None

    def _no_cloud(self) -> str:
        """Why no cloud takes this call (when none is down)."""
        member = self.cloud_node()
        if member is not None:
            return f"the cloud node {member.name} does not run this version"
        if self.cloud_url:
            return "the cloud is not an edgefaas node and the function is not cloud_compatible"
        return "no cloud is set"

    def _breaker(self, url: str) -> CircuitBreaker:
        breaker = self.breakers.get(url)
        if breaker is None:

            async def probe() -> bool:
                reply = await self.forwarder.client.get(
                    f"{url}/healthz", timeout=httpx.Timeout(self.cloud_timeout_s + 1.0)
                )
                return reply.status_code == 200

            breaker = CircuitBreaker(f"the cloud at {url}", probe)
            self.breakers[url] = breaker
        return breaker

    def _refusal(self, admission: Admission, reason: str, notes: list[str]) -> RuntimeFailure:
        failure = admission.failure()
        if not isinstance(failure, Overloaded):
            return failure  # the function cannot start here: its own 503
        message = failure.message
        if reason == "pinned":
            message += " (it is pinned to this node: spill.to is [])"
        elif notes:
            message += "; " + "; ".join(notes)
        return Overloaded(message, failure.retry_after_s, reason)


def signed_target(raw_path: bytes, digest: str, call_id: str) -> str:
    """What a forwarded call's signature covers besides method, body and nodes: its path
    and query, the digest it is meant for, and its call id."""
    return f"{raw_path.decode('latin-1')}\n{digest}\n{call_id}"


def _function_path(call: Outgoing) -> bytes:
    raw = call.raw_path
    if raw.startswith(b"/function/"):
        return raw
    return b"/function/" + call.name.encode() + raw
