"""The router: whether a call stays here (and why), and where a refused one goes — with real
pools (socket-less workers), a real peer view and scripted peers and clouds on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from gateway.mesh.forward import UpstreamFailed, UpstreamTimedOut
from gateway.mesh.peers import STALE_S, PeerView
from gateway.mesh.router import Outgoing, Router, Served, signed_target
from gateway.metrics import Metrics
from registry.errors import MeshAuthError
from registry.meshauth import verify_request
from registry.specs import SpillSpec
from runtime.errors import Overloaded, Unavailable
from runtime.pool import WarmPool
from runtime.states import PoolState
from tests.conftest import free_port
from tests.gateway.stub_server import Received, answer, stub_server
from tests.pools import occupy, spec, standing_pool

pytestmark = pytest.mark.anyio

KEY = b"mesh-key-for-tests"
DIGEST = "d" * 64
OTHER = "e" * 64


def record(
    name: str, url: str, role: str = "edge", digest: str = DIGEST, **load: int
) -> dict[str, Any]:
    numbers = {"slots": 2, "in_flight": 0, "queue_depth": 0, **load}
    return {
        "name": name,
        "role": role,
        "url": url,
        "serving": True,
        "functions": {"echo": {"state": "running", "digest": digest, **numbers}},
    }


def closed_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


@asynccontextmanager
async def routing(
    *records: dict[str, Any], role: str = "edge", cloud_url: str = ""
) -> AsyncIterator[Router]:
    view = PeerView("edge-1")
    view.update(list(records))
    router = Router("edge-1", role, view, Metrics(), KEY, cloud_url)
    try:
        yield router
    finally:
        await router.close()


@asynccontextmanager
async def busy_pool(
    spill: SpillSpec | None = None, service_s: float = 1.0, **pool: Any
) -> AsyncIterator[WarmPool]:
    """A pool whose one worker runs a call: a new call would wait about ``service_s``."""
    async with standing_pool(spec(spill=spill, **pool), service_s=service_s) as standing:
        occupy(standing, 1)
        yield standing


def outgoing(
    raw_path: bytes = b"/function/echo?x=1",
    headers: list[tuple[bytes, bytes]] | None = None,
    deadline_s: float | None = None,
    started: float | None = None,
) -> Outgoing:
    return Outgoing(
        "echo",
        "POST",
        raw_path,
        headers or [(b"content-type", b"text/plain")],
        b"the body",
        "call-7",
        time.perf_counter() if started is None else started,
        deadline_s,
    )


async def spill(
    router: Router, pool: WarmPool, call: Outgoing | None = None, deadline_s: float | None = None
) -> Served:
    """Refuse a call here (by ``deadline_s`` when the pool would queue it) and spill it."""
    admission, reason = router.admit(pool, deadline_s)
    assert not admission.admitted
    return await router.spill(pool, admission, reason, call or outgoing())


async def refused(router: Router, pool: WarmPool, deadline_s: float | None = None) -> Overloaded:
    with pytest.raises(Overloaded) as caught:
        await spill(router, pool, deadline_s=deadline_s)
    return caught.value


def mesh_headers(request: Received) -> dict[str, str]:
    return {k: v for k, v in request.headers if k.startswith("x-edgefaas-")}


# ---------------------------------------------------------------------- the local decision


async def test_a_free_worker_takes_the_call_whatever_the_deadline() -> None:
    async with standing_pool(spec()) as pool, routing(record("edge-2", closed_url())) as router:
        admission, reason = router.admit(pool, 0.001)
    assert admission.admitted and reason == "free_worker"


PEER = record("edge-2", "http://p")
CLOUD = record("c", "http://c", role="cloud")
COMPATIBLE = SpillSpec(cloud_compatible=True)
# case: (mesh records, spill policy, --cloud URL, reason for a call that would wait 1 s)
BUDGETS: dict[str, tuple[list[dict[str, Any]], SpillSpec | None, str, str]] = {
    "alone": ([], None, "", "queue_ok"),
    "a peer runs it": ([PEER], None, "", "saturated"),
    "a busy peer runs it": ([record("edge-2", "http://p", in_flight=2)], None, "", "saturated"),
    "a peer runs another version": ([record("p", "http://p", digest=OTHER)], None, "", "queue_ok"),
    "pinned": ([PEER, CLOUD], SpillSpec(to=()), "", "queue_ok"),
    "peers not allowed": ([PEER], SpillSpec(to=("cloud",)), "", "queue_ok"),
    "a cloud node runs it": ([CLOUD], None, "", "saturated"),
    "the cloud runs another version": ([record("c", "u", "cloud", OTHER)], None, "", "queue_ok"),
    "cloud not allowed": ([CLOUD], SpillSpec(to=("peers",)), "", "queue_ok"),
    "a foreign cloud, not compatible": ([], None, "http://faas", "queue_ok"),
    "a foreign cloud, compatible": ([], COMPATIBLE, "http://faas", "saturated"),
}


@pytest.mark.parametrize(("records", "spill", "cloud_url", "reason"), BUDGETS.values(), ids=BUDGETS)
async def test_the_budget_is_max_local_wait_only_when_a_tier_can_take_the_call(
    records: list[dict[str, Any]], spill: SpillSpec | None, cloud_url: str, reason: str
) -> None:
    """A call would wait about 1 s: over max_local_wait_ms (100 ms), within the pool's own
    max_queue_wait_ms (10 s)."""
    async with busy_pool(spill) as pool, routing(*records, cloud_url=cloud_url) as router:
        admission, got = router.admit(pool, None)
    assert got == reason
    assert admission.admitted == (reason == "queue_ok")


async def test_a_cloud_node_queues_its_calls_up_to_the_pools_limit() -> None:
    async with busy_pool() as pool, routing(PEER, CLOUD, role="cloud") as router:
        assert router.admit(pool, None)[1] == "queue_ok"
    async with busy_pool(service_s=20.0) as pool, routing(PEER, role="cloud") as router:
        assert router.admit(pool, None)[1] == "saturated"


async def test_a_stale_view_or_a_peer_marked_down_is_nowhere_to_go() -> None:
    async with busy_pool() as pool, routing(record("edge-2", "http://p")) as router:
        assert router.admit(pool, None)[1] == "saturated"
        router.view.mark_down("edge-2")
        assert router.admit(pool, None)[1] == "queue_ok"
    async with busy_pool() as pool, routing(record("edge-2", "http://p")) as router:
        router.view.refreshed_at -= STALE_S + 1
        assert router.admit(pool, None)[1] == "queue_ok"


async def test_a_forwarded_call_gets_max_local_wait_even_with_nowhere_else_to_go() -> None:
    async with busy_pool() as pool, routing() as router:
        assert router.admit(pool, None, forwarded=True)[1] == "saturated"
    async with busy_pool(SpillSpec(max_local_wait_ms=2000)) as pool, routing() as router:
        assert router.admit(pool, None, forwarded=True)[1] == "queue_ok"


async def test_a_deadline_that_refuses_a_call_the_queue_would_take_is_the_reason() -> None:
    async with busy_pool() as pool, routing() as router:
        assert router.admit(pool, 2.0)[1] == "queue_ok"
        admission, reason = router.admit(pool, 0.5)
        assert (admission.admitted, reason) == (False, "deadline")
        assert isinstance(admission.failure(), Overloaded)


async def test_a_deadline_that_tightens_max_local_wait_is_the_reason() -> None:
    patient = SpillSpec(max_local_wait_ms=2000)
    async with busy_pool(patient) as pool, routing(record("edge-2", "http://p")) as router:
        assert router.admit(pool, None)[1] == "queue_ok"  # 1 s fits max_local_wait (2 s)
        assert router.admit(pool, 3.0)[1] == "queue_ok"
        assert router.admit(pool, 0.5)[1] == "deadline"


@pytest.mark.parametrize("deadline_s", [None, 0.5, 5.0])
async def test_a_call_over_every_budget_is_saturated_whatever_the_deadline(
    deadline_s: float | None,
) -> None:
    async with busy_pool(service_s=20.0) as pool, routing() as router:
        admission, reason = router.admit(pool, deadline_s)
    assert (admission.admitted, reason) == (False, "saturated")


async def test_a_deadline_looser_than_every_limit_is_not_the_reason() -> None:
    """max_local_wait_ms may exceed the pool's max_queue_wait_ms: the pool's limit refuses
    the call then, not the deadline."""
    spill = SpillSpec(max_local_wait_ms=2000)
    async with (
        busy_pool(spill, max_queue_wait_ms=500) as pool,
        routing(record("edge-2", "http://p")) as router,
    ):
        assert router.admit(pool, None)[1] == "saturated"
        assert router.admit(pool, 5.0)[1] == "saturated"
        assert router.admit(pool, 0.3)[1] == "saturated"


async def test_a_full_queue_is_saturated_even_with_a_deadline() -> None:
    async with standing_pool(spec(queue_max=1)) as pool, routing() as router:
        occupy(pool, 2)
        assert len(pool.dispatch.queue) == 1
        assert router.admit(pool, 10.0)[1] == "saturated"


async def test_a_function_that_cannot_start_here_is_unavailable() -> None:
    async with standing_pool(spec(), workers=0) as pool, routing() as router:
        pool.state = PoolState.BACKOFF
        pool.last_error = {"message": "ImportError: no module named nope", "at": 0.0}
        admission, reason = router.admit(pool, None)
        assert (admission.admitted, reason) == (False, "unavailable")
        with pytest.raises(Unavailable, match="no module named nope"):
            await router.spill(pool, admission, reason, outgoing())


# ---------------------------------------------------------------------- to a peer


async def test_a_peer_with_a_free_slot_serves_the_call_signed_for_it() -> None:
    headers = [("X-Duration-Seconds", "0.01"), ("Content-Type", "text/plain")]
    async with (
        stub_server(answer(200, headers, b"from edge-2")) as peer,
        busy_pool() as pool,
        routing(record("edge-2", peer.url, slots=1)) as router,
    ):
        client = [
            (b"content-type", b"text/plain"),
            (b"x-edgefaas-node", b"edge-9"),
            (b"x-edgefaas-hop", b"edge-9"),
        ]
        served = await spill(router, pool, outgoing(headers=client))
        assert router.view.choose("echo", DIGEST) is not None, "the answered call is done"
        forward_count = router.metrics.registry.get_sample_value(
            "edgefaas_forward_added_seconds_count", {"tier": "peer"}
        )
    assert (served.status, served.body, served.served_by) == (200, b"from edge-2", "peer:edge-2")
    (request,) = peer.received
    assert (request.target, request.body) == ("/function/echo?x=1", b"the body")
    assert request.header("x-call-id") == "call-7"
    mesh = mesh_headers(request)
    assert mesh["x-edgefaas-hop"] == "edge-1"
    assert mesh["x-edgefaas-digest"] == DIGEST
    path = signed_target(request.target.encode(), DIGEST, "call-7")
    assert verify_request(KEY, "POST", path, mesh, "edge-2", body=request.body) == "edge-1"
    with pytest.raises(MeshAuthError):
        verify_request(KEY, "POST", path, mesh, "edge-3", body=request.body)
    for forged in (signed_target(b"/function/echo?x=1", OTHER, "call-7"), "/function/echo?x=1"):
        with pytest.raises(MeshAuthError):  # the digest and call id are signed too
            verify_request(KEY, "POST", forged, mesh, "edge-2", body=request.body)
    assert forward_count == 1


async def test_a_peer_that_refuses_is_not_marked_down_and_the_cloud_is_tried() -> None:
    refusal = answer(429, [("X-Edgefaas-Refused", "saturated")], b'{"error": {"message": "full"}}')
    async with (
        stub_server(refusal) as peer,
        stub_server(answer(200, body=b"from the cloud")) as cloud,
        busy_pool() as pool,
        routing(record("edge-2", peer.url), record("cloud-1", cloud.url, role="cloud")) as router,
    ):
        served = await spill(router, pool)
        assert router.view.has_peer("echo", DIGEST)
    assert (served.body, served.served_by) == (b"from the cloud", "cloud")
    assert len(peer.received) == 1
    (request,) = cloud.received
    mesh = mesh_headers(request)
    target = signed_target(request.target.encode(), DIGEST, "call-7")
    assert verify_request(KEY, "POST", target, mesh, "cloud-1", body=request.body)
    assert mesh["x-edgefaas-digest"] == DIGEST


async def test_a_peer_that_cannot_be_reached_is_marked_down() -> None:
    async with busy_pool() as pool, routing(record("edge-2", closed_url())) as router:
        failure = await refused(router, pool)
        assert not router.view.has_peer("echo", DIGEST)
        assert router.view.choose("echo", DIGEST) is None
        assert router.admit(pool, None)[1] == "queue_ok", "nowhere to go while it is down"
    assert failure.reason == "saturated"
    assert "peer edge-2 could not be reached" in failure.message
    assert "no cloud is set" in failure.message


async def test_a_call_that_failed_on_a_peer_is_not_sent_to_the_cloud() -> None:
    async def die(request: Received, writer: Any) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\npartial")
        writer.close()

    async with (
        stub_server(die) as peer,
        stub_server(answer()) as cloud,
        busy_pool() as pool,
        routing(record("edge-2", peer.url), record("cloud-1", cloud.url, role="cloud")) as router,
    ):
        with pytest.raises(UpstreamFailed, match="peer edge-2 failed during the call"):
            await spill(router, pool)
    assert cloud.received == []


async def test_a_peer_that_failed_during_a_call_is_marked_down() -> None:
    async def die(request: Received, writer: Any) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\npartial")
        writer.close()

    async with (
        stub_server(die) as peer,
        busy_pool() as pool,
        routing(record("edge-2", peer.url, slots=8)) as router,
    ):
        assert router.view.choose("echo", DIGEST) is not None
        with pytest.raises(UpstreamFailed):
            await spill(router, pool)
        assert router.view.choose("echo", DIGEST) is None, "a peer that broke is skipped"


async def test_a_cloud_that_times_out_opens_the_breaker() -> None:
    async def hang(request: Received, writer: Any) -> None:
        await asyncio.sleep(30)

    async with (
        stub_server(hang) as cloud,
        busy_pool(timeout_s=0.1, max_queue_wait_ms=0) as pool,
        routing(record("cloud-1", cloud.url, role="cloud")) as router,
    ):
        with pytest.raises(UpstreamTimedOut):
            await spill(router, pool)
        started = time.perf_counter()
        failure = await refused(router, pool)
        assert time.perf_counter() - started < 0.5, "the next call does not wait again"
    assert failure.reason == "cloud_down"


async def test_a_foreign_gateway_cannot_claim_it_refused_a_call() -> None:
    refusing = answer(429, [("X-Edgefaas-Refused", "saturated")], b"busy")
    async with (
        stub_server(refusing) as cloud,
        busy_pool(SpillSpec(cloud_compatible=True)) as pool,
        routing(cloud_url=cloud.url) as router,
    ):
        served = await spill(router, pool)
    assert (served.status, served.body, served.served_by) == (429, b"busy", "cloud")
    assert all(not k.startswith(b"x-edgefaas-") for k, _ in served.headers)


async def test_no_peer_with_a_free_slot_and_no_cloud_is_a_429() -> None:
    async with busy_pool() as pool, routing(record("edge-2", "http://p", in_flight=2)) as router:
        failure = await refused(router, pool)
    assert (failure.status, failure.reason) == (429, "saturated")
    assert failure.retry_after_s >= 1
    assert "no peer has a free worker" in failure.message


async def test_the_deadline_left_goes_with_the_call() -> None:
    async with (
        stub_server(answer()) as peer,
        busy_pool() as pool,
        routing(record("edge-2", peer.url)) as router,
    ):
        call = outgoing(deadline_s=3.0, started=time.perf_counter() - 1.0)
        await router.spill(pool, router.admit(pool, None)[0], "saturated", call)
        late = outgoing(deadline_s=0.5, started=time.perf_counter() - 1.0)
        await router.spill(pool, router.admit(pool, None)[0], "saturated", late)
    left = [int(r.header("x-deadline-ms") or 0) for r in peer.received]
    assert 1500 <= left[0] <= 2000
    assert left[1] == 1


# ---------------------------------------------------------------------- refusals


async def test_a_pinned_function_is_refused_without_asking_anyone() -> None:
    async with (
        stub_server(answer()) as peer,
        busy_pool(SpillSpec(to=())) as pool,
        routing(record("edge-2", peer.url)) as router,
    ):
        admission, reason = router.admit(pool, 0.01)  # a deadline refuses it here
        with pytest.raises(Overloaded) as caught:
            await router.spill(pool, admission, reason, outgoing())
    assert caught.value.reason == "pinned"
    assert "pinned to this node" in caught.value.message
    assert peer.received == []


async def test_a_cloud_node_never_sends_calls_on() -> None:
    async with (
        stub_server(answer()) as peer,
        busy_pool() as pool,
        routing(record("edge-2", peer.url), role="cloud") as router,
    ):
        admission, reason = router.admit(pool, 0.01)
        with pytest.raises(Overloaded) as caught:
            await router.spill(pool, admission, reason, outgoing())
    assert caught.value.reason == "deadline"
    assert peer.received == []


async def test_only_the_allowed_tiers_are_tried() -> None:
    async with (
        stub_server(answer(body=b"peer")) as peer,
        stub_server(answer(body=b"cloud")) as cloud,
        busy_pool(SpillSpec(to=("cloud",))) as pool,
        routing(record("edge-2", peer.url), record("cloud-1", cloud.url, role="cloud")) as router,
    ):
        assert (await spill(router, pool)).served_by == "cloud"
    assert peer.received == []


# ---------------------------------------------------------------------- the cloud


async def test_a_cloud_that_cannot_be_reached_opens_the_breaker() -> None:
    url = closed_url()
    async with busy_pool() as pool, routing(record("cloud-1", url, role="cloud")) as router:
        first = await refused(router, pool)
        breaker = router.breakers[url]
        assert not breaker.closed
        second = await refused(router, pool)
        async with stub_server(answer(503), port=int(url.rsplit(":", 1)[1])) as cloud:
            assert not await breaker.probe()
            cloud.handler = answer(200)
            assert await breaker.probe()
        assert [r.target for r in cloud.received] == ["/healthz", "/healthz"]
    assert first.reason == second.reason == "cloud_down"
    assert "the cloud could not be reached" in first.message
    assert "the cloud is unreachable" in second.message


async def test_a_cloud_that_refuses_is_not_down() -> None:
    refusal = answer(429, [("X-Edgefaas-Refused", "saturated")], b"full")
    async with (
        stub_server(refusal) as cloud,
        busy_pool() as pool,
        routing(record("cloud-1", cloud.url, role="cloud")) as router,
    ):
        failure = await refused(router, pool)
        assert router.breakers[cloud.url].closed
    assert failure.reason == "saturated"
    assert "the cloud refused the call: full" in failure.message


async def test_a_cloud_node_that_left_the_mesh_is_down() -> None:
    async with (
        busy_pool() as pool,
        routing(record("cloud-1", "http://c", role="cloud")) as router,
    ):
        router.view.update([])
        assert router.admit(pool, None)[1] == "saturated"
        failure = await refused(router, pool)
    assert failure.reason == "cloud_down"
    assert "cloud-1 has left the mesh" in failure.message


@pytest.mark.parametrize("compatible", [False, True])
async def test_a_cloud_node_with_another_version_is_never_used(compatible: bool) -> None:
    async with stub_server(answer()) as cloud:
        records = [record("cloud-1", cloud.url, role="cloud", digest=OTHER)]
        async with (
            busy_pool(SpillSpec(cloud_compatible=compatible)) as pool,
            routing(*records, cloud_url=cloud.url) as router,
        ):
            failure = await refused(router, pool, deadline_s=0.01)
    assert failure.reason == "deadline"
    assert "cloud-1 does not run this version" in failure.message
    assert cloud.received == []


async def test_a_foreign_cloud_takes_only_cloud_compatible_functions() -> None:
    async with stub_server(answer(body=b"faas")) as cloud:
        async with busy_pool() as pool, routing(cloud_url=cloud.url) as router:
            failure = await refused(router, pool, deadline_s=0.01)
        assert "not cloud_compatible" in failure.message
        assert cloud.received == []
        compatible = SpillSpec(cloud_compatible=True)
        async with busy_pool(compatible) as pool, routing(cloud_url=cloud.url + "/") as router:
            served = await spill(router, pool)
            await spill(router, pool, outgoing(raw_path=b"/api/echo?x=1"))
    assert (served.body, served.served_by) == (b"faas", "cloud")
    assert [r.target for r in cloud.received] == [
        "/function/echo?x=1",
        "/function/echo/api/echo?x=1",
    ]
    request = cloud.received[0]
    assert mesh_headers(request) == {}, "a foreign gateway gets no mesh headers"
    assert request.header("x-call-id") == "call-7"


async def test_a_cloud_member_at_the_cloud_url_is_preferred_to_a_foreign_call() -> None:
    async with stub_server(answer(body=b"member")) as cloud:
        records = [record("cloud-1", cloud.url, role="cloud")]
        async with (
            busy_pool(SpillSpec(cloud_compatible=True)) as pool,
            routing(*records, cloud_url=cloud.url) as router,
        ):
            await spill(router, pool)
    (request,) = cloud.received
    assert request.target == "/function/echo?x=1"
    assert mesh_headers(request)["x-edgefaas-hop"] == "edge-1"
