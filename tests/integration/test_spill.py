"""Spill-over with real parts: `edgefaas up` processes (an edge node, a peer, a `--role cloud`
node) sharing a real Redis, calls over real HTTP, and the routing each node reports in its
answers (``X-Served-By``), its metrics and its call log.

The edge node publishes the manifest; its function ``busy`` has one worker and takes 50 ms
a call, so the edge serves 20 calls a second and a burst of 60 a second has to go
somewhere else. Each test builds its own site (one mesh, its own Redis key prefix). Timing
bounds are loose on purpose: they tell "answered at once" from "waited for the call that
holds the worker" (seconds apart), not fast from slow.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from gateway.mesh.router import signed_target
from registry.meshauth import sign_call, verify_request
from tests.conftest import NodeProcess, wait_for
from tests.integration.mesh_helpers import Mesh, StartNode
from tests.integration.spill_helpers import (
    BUSY,
    PATIENT,
    PINNED,
    Background,
    CountingServer,
    Site,
    burst,
    call_log,
    call_once,
    calls_counted,
    claim,
    describe,
    digest_of,
    hold_worker,
    invocations,
    served_by,
    start_site,
    wait_converged,
    wait_in_flight,
    warm,
    write_site_manifest,
)
from tests.integration.test_mesh import new_mesh

pytestmark = pytest.mark.slow

RATE_3X = 60.0  # calls a second: 3 × what one 50 ms worker serves
BURST_S = 2.0
AT_ONCE_S = 1.5  # "answered at once", against a worker held for several seconds
DEAD_NODE_S = 3.0  # the bound for a killed peer to get no more calls


@pytest.fixture
def mesh(
    start_node: StartNode, tmp_path: Path, redis_url: str, redis_prefix: str
) -> Iterator[Mesh]:
    mesh = new_mesh(start_node, tmp_path, redis_url, redis_prefix)
    yield mesh
    mesh.stop()


def site_running(
    mesh: Mesh, functions: dict[str, str], *, peer: bool = True, cloud_flag: bool = False
) -> Site:
    """A site whose nodes all run ``functions``, ``busy`` warmed on each of them."""
    site = start_site(
        mesh, write_site_manifest(mesh.project, functions), peer=peer, cloud_flag=cloud_flag
    )
    wait_converged(site, list(functions))
    for node in site.nodes:
        warm(node, "busy")
    return site


def assert_routes_match(node: NodeProcess, function: str, seen: dict[str, int]) -> None:
    """The node's edgefaas_invocations_total agrees with the X-Served-By it answered with
    (for the tiers other than local, which the warm-up calls also count)."""
    counted: dict[str, int] = {}
    for (where, _), count in invocations(node, function).items():
        counted[where] = counted.get(where, 0) + count
    for where, count in seen.items():
        if where != "local":
            assert counted.get(where) == count, (where, counted, seen)


# ------------------------------------------------------------------------------- bursts


def test_a_burst_at_3x_local_capacity_is_served_here_by_the_peer_and_in_the_cloud(
    mesh: Mesh,
) -> None:
    site = site_running(mesh, {"busy": BUSY})

    answers = burst(site.edge, "busy", rate_per_s=RATE_3X, duration_s=BURST_S)

    assert all(a.ok for a in answers), describe(answers)
    tiers = served_by(answers)
    assert set(tiers) == {"local", "peer:peer", "cloud"}, describe(answers)
    assert len({a.call_id for a in answers}) == len(answers)
    assert_routes_match(site.edge, "busy", dict(tiers))
    print(f"3x burst on the edge: {describe(answers)}")


def test_a_pinned_function_under_the_same_burst_gets_429s_and_never_leaves_its_node(
    mesh: Mesh,
) -> None:
    site = site_running(mesh, {"busy": BUSY, "pinned": PINNED})
    assert site.peer is not None and site.cloud is not None
    warm(site.edge, "pinned")

    answers = burst(site.edge, "pinned", rate_per_s=RATE_3X, duration_s=BURST_S)

    refused = [a for a in answers if a.status == 429]
    assert refused, describe(answers)
    assert all(a.status in (200, 429) for a in answers), describe(answers)
    assert {a.served_by for a in answers} == {"local"}, describe(answers)
    for answer in refused:
        assert answer.retry_after is not None and int(answer.retry_after) >= 1
    # queue_timeout: admitted on the wait estimate, then it waited out max_queue_wait_ms
    # on a busy machine — refused here all the same.
    assert {a.reason for a in refused} <= {"pinned", "queue_timeout"}, describe(answers)
    assert any(a.reason == "pinned" for a in refused), describe(answers)
    routes = invocations(site.edge, "pinned")
    assert {where for where, _ in routes} <= {"local", "none"}, routes
    assert routes[("none", "pinned")] == sum(a.reason == "pinned" for a in refused)
    # The peer and the cloud run it too, and never got a call of it.
    for node in (site.peer, site.cloud):
        assert invocations(node, "pinned") == {}
        assert calls_counted(node, "pinned") == 0
        assert not call_log(node, "pinned")
    print(f"pinned burst on the edge: {describe(answers)}")


# ------------------------------------------------------------------------------ deadline


def test_a_call_whose_deadline_is_shorter_than_the_local_wait_goes_elsewhere_at_once(
    mesh: Mesh,
) -> None:
    site = site_running(mesh, {"busy": BUSY, "patient": PATIENT})
    warm(site.edge, "patient")
    holds = [hold_worker(site.edge, "busy", 2500), hold_worker(site.edge, "patient", 1800)]

    quick = call_once(site.edge, "busy", headers={"X-Deadline-Ms": "50"})
    assert quick.ok, quick
    assert quick.served_by in ("peer:peer", "cloud"), quick
    assert quick.seconds < AT_ONCE_S, quick

    # `patient` waits here up to 2 s: without a deadline the call queues behind the one that
    # holds the worker; with one it cannot meet here, it goes elsewhere at once.
    tight = call_once(site.edge, "patient", headers={"X-Deadline-Ms": "100"})
    assert tight.ok, tight
    assert tight.served_by in ("peer:peer", "cloud"), tight
    assert tight.seconds < AT_ONCE_S, tight
    patient = call_once(site.edge, "patient")
    assert patient.ok and patient.served_by == "local", patient

    assert [h.result().served_by for h in holds] == ["local", "local"]
    routes = invocations(site.edge, "patient")
    assert routes[(tight.served_by, "deadline")] == 1, routes
    assert routes[("local", "queue_ok")] == 1, routes


# -------------------------------------------------------------------------- cloud down


@pytest.mark.parametrize(
    ("stop", "cloud_flag"),
    [("kill", False), ("term", True)],
    ids=["sigkill-found-in-mesh", "sigterm-given-with-cloud-flag"],
)
def test_with_the_cloud_down_saturated_calls_get_429_at_once_and_the_rest_are_served(
    mesh: Mesh, stop: str, cloud_flag: bool
) -> None:
    site = site_running(mesh, {"busy": BUSY}, peer=False, cloud_flag=cloud_flag)
    assert site.cloud is not None
    before = burst(site.edge, "busy", rate_per_s=RATE_3X, duration_s=1.0)
    assert all(a.ok for a in before) and "cloud" in served_by(before), describe(before)

    hold = hold_worker(site.edge, "busy", 6000)
    if stop == "kill":
        site.cloud.kill_group()
    else:
        site.cloud.signal(signal.SIGTERM)
        assert site.cloud.process.wait(timeout=10) == 0
    stopped_at = time.monotonic()

    # Saturated calls, while the dead cloud may still be listed in the mesh and after its
    # record is gone.
    answers = []
    while time.monotonic() - stopped_at < 3.5:
        answers.append(call_once(site.edge, "busy", timeout_s=10))
        time.sleep(0.2)
    assert len(answers) >= 5, describe(answers)
    for answer in answers:
        assert answer.status == 429 and answer.reason == "cloud_down", describe(answers)
        assert answer.retry_after is not None and int(answer.retry_after) >= 1
        assert answer.seconds < 2.0, describe(answers)
    assert hold.result().served_by == "local"

    # Calls that fit here (the worker free) are served here as before.
    for _ in range(5):
        answer = call_once(site.edge, "busy")
        assert answer.ok and answer.served_by == "local", answer
        assert answer.seconds < 2.0, answer
    routes = invocations(site.edge, "busy")
    assert routes[("none", "cloud_down")] == len(answers), routes


# ---------------------------------------------------------------------- a peer killed


def test_a_killed_peer_gets_no_calls_after_3_s_and_its_calls_in_flight_fail_fast(
    mesh: Mesh,
) -> None:
    site = site_running(mesh, {"busy": BUSY})
    assert site.peer is not None
    hold = hold_worker(site.edge, "busy", 2000)
    # Spilled: the edge's worker is held and the peer has a free one.
    stranded = Background(site.edge, "busy", "?sleep_ms=9000")
    stranded.start()
    wait_in_flight(site.peer, "busy")

    port = urlsplit(site.peer.url).port
    site.peer.kill_group()
    killed_at = time.monotonic()
    answer = stranded.result()
    assert answer.status in (502, 504), answer
    assert stranded.finished_at - killed_at < 4.0, answer

    # Something listens on the dead peer's port again: a call routed to its address
    # would be counted there.
    with CountingServer(port or 0) as impostor:
        time.sleep(max(0.0, killed_at + DEAD_NODE_S - time.monotonic()))
        answers = burst(site.edge, "busy", rate_per_s=RATE_3X, duration_s=BURST_S)
        assert impostor.received == []
    assert all(a.ok for a in answers), describe(answers)
    assert set(served_by(answers)) == {"local", "cloud"}, describe(answers)
    assert hold.result().served_by == "local"


# --------------------------------------------------------------- which peers are chosen


def test_a_peer_with_another_digest_is_never_chosen_and_one_with_the_same_is(
    mesh: Mesh,
) -> None:
    site = site_running(mesh, {"busy": BUSY}, peer=False)
    digest = digest_of(site.edge, "busy")
    free = {"slots": 8, "in_flight": 0, "queue_depth": 0}
    with CountingServer() as rogue:
        mesh.register_rogue("rogue", rogue.url)
        claim(mesh, "rogue", {"busy": {"digest": "f" * 64, **free}})
        time.sleep(0.5)  # the edge's peer view refreshes every 0.2 s
        answers = burst(site.edge, "busy", rate_per_s=RATE_3X, duration_s=BURST_S)
        assert all(a.ok for a in answers), describe(answers)
        assert set(served_by(answers)) == {"local", "cloud"}, describe(answers)
        assert rogue.received == []

        # The same record claiming the digest the edge runs: now it is a peer.
        claim(mesh, "rogue", {"busy": {"digest": digest, **free}})
        time.sleep(0.5)
        answers = burst(site.edge, "busy", rate_per_s=RATE_3X, duration_s=1.0)
        assert served_by(answers)["peer:rogue"] > 0, describe(answers)
        assert len(rogue.received) == served_by(answers)["peer:rogue"]
        for request in rogue.received:
            assert request.method == "POST" and request.path == "/function/busy"
            assert request.headers["x-edgefaas-hop"] == "edge"
            assert request.headers["x-edgefaas-digest"] == digest
            sender = verify_request(
                mesh.mesh_key.encode(),
                request.method,
                signed_target(request.path.encode(), digest, request.headers["x-call-id"]),
                request.headers,
                "rogue",
                body=request.body,
            )
            assert sender == "edge"


# ------------------------------------------------------------------------ one hop only


def signed_forward(mesh: Mesh, to: NodeProcess, name: str, digest: str) -> httpx.Response:
    """A call as the edge node forwards it to ``to`` (named "peer"): hop marker, digest,
    and the mesh signature."""
    path = f"/function/{name}"
    body = b"forwarded"
    call_id = f"signed-{time.monotonic_ns()}"
    target = signed_target(path.encode(), digest, call_id)
    headers = {
        "X-Edgefaas-Hop": "edge",
        "X-Edgefaas-Digest": digest,
        "X-Call-Id": call_id,
        **sign_call(mesh.mesh_key.encode(), "edge", "POST", target, "peer", body),
    }
    return httpx.post(to.url + path, content=body, headers=headers, timeout=10, trust_env=False)


def test_a_forwarded_call_is_never_forwarded_again(mesh: Mesh) -> None:
    site = site_running(mesh, {"busy": BUSY})
    assert site.peer is not None and site.cloud is not None
    # Edge and peer learn that these calls take 300 ms.
    for _ in range(3):
        learners = [Background(node, "busy", "?sleep_ms=300") for node in (site.edge, site.peer)]
        for learner in learners:
            learner.start()
        assert all(learner.result().ok for learner in learners)

    # Edge and peer both saturated. A call sent straight to the peer takes its worker just
    # before the burst: the edge's view of the peer is up to ~0.5 s old, so calls it sends
    # there meanwhile find the worker busy (most bursts; a few may miss the window). The
    # peer refuses them (it never sends a forwarded call on) and the edge sends them on.
    answers = []
    for _ in range(8):
        holder = Background(site.peer, "busy", "?sleep_ms=1500")
        holder.start()
        time.sleep(0.05)
        answers += burst(site.edge, "busy", rate_per_s=12, duration_s=2.0, query="?sleep_ms=300")
        assert holder.result().ok
        if invocations(site.peer, "busy")[("none", "saturated")]:
            break
    print(f"saturating bursts: {describe(answers)}")
    assert all(a.ok for a in answers), describe(answers)
    refused_routes = invocations(site.peer, "busy")
    assert refused_routes[("none", "saturated")] > 0, (refused_routes, describe(answers))
    assert {where for where, _ in refused_routes} <= {"local", "none"}, refused_routes
    assert {where for where, _ in invocations(site.cloud, "busy")} == {"local"}

    peer = site.peer

    def refused_in_log() -> list[str]:
        return [f[6] for f in call_log(peer, "busy") if f[2] == "429"]

    wait_for(
        lambda: len(refused_in_log()) == refused_routes[("none", "saturated")],
        5,
        0.1,
        "the peer's call log to show the refusals",
    )
    by_id = {a.call_id: a for a in answers}
    for call_id in refused_in_log():
        assert by_id[call_id].ok and by_id[call_id].served_by == "cloud", by_id[call_id]
    assert {f[4] for f in call_log(site.peer, "busy")} == {"local"}

    # The same, sent straight to the saturated peer: refused, not sent to the cloud.
    hold = hold_worker(site.peer, "busy", 2500)
    before = invocations(site.peer, "busy")
    reply = signed_forward(mesh, site.peer, "busy", digest_of(site.edge, "busy"))
    assert reply.status_code == 429, reply.text
    assert reply.headers["x-edgefaas-refused"] == "saturated"
    assert reply.headers["x-served-by"] == "local"
    after = invocations(site.peer, "busy")
    assert after - before == {("none", "saturated"): 1}, (before, after)

    # A hop marker without the mesh signature is refused outright.
    unsigned = httpx.post(
        site.peer.url + "/function/busy",
        content=b"x",
        headers={"X-Edgefaas-Hop": "edge"},
        timeout=10,
        trust_env=False,
    )
    assert unsigned.status_code == 401, unsigned.text
    assert unsigned.headers["x-edgefaas-refused"] == "unauthorized"  # a sender would go on
    # ...while a plain call to the saturated peer is spilled as usual.
    plain = call_once(site.peer, "busy")
    assert plain.ok and plain.served_by in ("peer:edge", "cloud"), plain
    assert hold.result().served_by == "local"
