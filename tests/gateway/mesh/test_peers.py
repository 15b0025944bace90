"""The peer view: which peers and cloud nodes a node sees, and which peer gets a call."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.mesh import peers
from gateway.mesh.peers import DOWN_S, STALE_S, PeerView

DIGEST = "a" * 64
OTHER = "b" * 64


def load(
    digest: str = DIGEST, slots: int = 2, in_flight: int = 0, queue_depth: int = 0, **extra: Any
) -> dict[str, Any]:
    return {
        "digest": digest,
        "state": "running",
        "slots": slots,
        "in_flight": in_flight,
        "queue_depth": queue_depth,
        **extra,
    }


def record(
    name: str,
    functions: dict[str, Any] | None = None,
    role: str = "edge",
    serving: bool = True,
    url: str = "",
) -> dict[str, Any]:
    return {
        "name": name,
        "role": role,
        "url": url or f"http://{name}:8080/",
        "serving": serving,
        "functions": {"echo": load()} if functions is None else functions,
    }


class Clock:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 1000.0
        monkeypatch.setattr(peers.time, "monotonic", lambda: self.now)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return Clock(monkeypatch)


@pytest.fixture
def seeded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peers, "random", random.Random(4))


def view_of(*records: dict[str, Any]) -> PeerView:
    view = PeerView("edge-1")
    view.update(list(records))
    return view


def choices(view: PeerView, times: int = 600) -> Counter[str | None]:
    picks = (view.choose("echo", DIGEST) for _ in range(times))
    return Counter(p.name if p else None for p in picks)


def test_the_view_holds_serving_peers_and_clouds_but_not_this_node() -> None:
    view = view_of(
        record("edge-1"),
        record("edge-2", url="http://edge-2:8080/"),
        record("edge-3", serving=False),
        record("cloud-b", role="cloud"),
        record("cloud-a", role="cloud"),
        record("odd", role="mainframe"),
    )
    assert sorted(view.peers) == ["edge-2", "odd"]
    assert view.peers["edge-2"].url == "http://edge-2:8080"
    assert view.peers["odd"].role == "edge"
    assert list(view.clouds) == ["cloud-a", "cloud-b"]


@pytest.mark.parametrize(
    "status",
    [
        load(state="backoff"),
        load(slots=True),
        load(slots=-1),
        load(in_flight="3"),
        load(queue_depth=None),
        load(digest=None),
        {"failed": {"message": "boom"}},
        "running",
    ],
)
def test_a_function_that_is_not_running_or_has_odd_numbers_is_left_out(status: object) -> None:
    view = view_of(record("edge-2", {"echo": status, "other": load()}))
    assert list(view.peers["edge-2"].functions) == ["other"]
    assert not view.has_peer("echo", DIGEST)
    assert view.choose("echo", DIGEST) is None


def test_load_is_running_plus_queued_calls() -> None:
    view = view_of(record("edge-2", {"echo": load(slots=4, in_flight=2, queue_depth=1)}))
    function = view.peers["edge-2"].functions["echo"]
    assert (function.slots, function.busy) == (4, 3)


@pytest.mark.usefixtures("seeded")
def test_only_peers_with_the_same_digest_and_a_free_slot_are_chosen() -> None:
    view = view_of(
        record("full", {"echo": load(slots=2, in_flight=1, queue_depth=1)}),
        record("other-version", {"echo": load(OTHER)}),
        record("other-function", {"resize": load()}),
        record("asleep", serving=False),
        record("cloud", role="cloud"),
        record("spare-1"),
        record("spare-2"),
    )
    picked = choices(view)
    assert set(picked) == {"spare-1", "spare-2"}
    assert view.has_peer("echo", DIGEST)
    assert not view.has_peer("echo", "c" * 64)


def test_a_lone_candidate_is_chosen_and_none_means_none() -> None:
    assert view_of(record("edge-2")).choose("echo", DIGEST).name == "edge-2"  # type: ignore[union-attr]
    assert view_of().choose("echo", DIGEST) is None
    full = view_of(record("edge-2", {"echo": load(slots=1, in_flight=1)}))
    assert full.choose("echo", DIGEST) is None
    assert full.has_peer("echo", DIGEST), "a busy peer still runs the function"


@pytest.mark.usefixtures("seeded")
def test_two_choices_never_pick_the_busiest_and_favour_the_idlest() -> None:
    """Of two random candidates the less loaded wins: with loads 0, 1, 2 the idlest wins
    both pairs it is in (2/3 of draws), the middle one 1/3, the busiest never."""
    view = view_of(
        record("idle", {"echo": load(slots=4)}),
        record("some", {"echo": load(slots=4, in_flight=1)}),
        record("busy", {"echo": load(slots=4, in_flight=2)}),
    )
    picked = choices(view, 900)
    assert "busy" not in picked
    assert 520 < picked["idle"] < 680 and 220 < picked["some"] < 380


@pytest.mark.usefixtures("seeded")
def test_equally_loaded_peers_share_the_calls() -> None:
    view = view_of(*(record(f"edge-{n}", {"echo": load(slots=8)}) for n in range(2, 6)))
    picked = choices(view, 800)
    assert set(picked) == {"edge-2", "edge-3", "edge-4", "edge-5"}
    assert min(picked.values()) > 140


def test_calls_sent_count_while_they_run_and_until_the_peer_reports_them() -> None:
    records = [record("edge-2", {"echo": load(slots=2)})]
    view = view_of(*records)
    first = view.sent("edge-2", "echo")
    assert view.choose("echo", DIGEST) is not None
    second = view.sent("edge-2", "echo")
    assert view.choose("echo", DIGEST) is None, "both slots were just given calls"
    view.sent("edge-2", "resize")  # another function's calls do not count against echo
    view.update(records)  # a record written before the calls were sent: they still count
    assert view.choose("echo", DIGEST) is None
    view.done("edge-2", "echo", first)  # an answered call frees its slot at once
    assert view.choose("echo", DIGEST) is not None
    reported = record("edge-2", {"echo": load(slots=2, in_flight=1)})
    reported["heartbeat_at"] = second  # the peer's record now shows the running call
    view.update([reported])
    assert view.choose("echo", DIGEST) is not None, "the running call is counted once"
    full = record("edge-2", {"echo": load(slots=2, in_flight=2)})
    full["heartbeat_at"] = time.time()  # two calls running, one of them ours (second)
    view.update([full])
    assert view.choose("echo", DIGEST) is None
    view.done("edge-2", "echo", second)  # ours is answered: the record over-counts by one
    assert view.choose("echo", DIGEST) is not None
    later = record("edge-2", {"echo": load(slots=2, in_flight=2)})
    later["heartbeat_at"] = time.time() + 1  # a newer record: whatever it counts is current
    view.update([later])
    assert view.choose("echo", DIGEST) is None


@pytest.mark.usefixtures("seeded")
def test_sent_calls_steer_the_next_choice_to_the_other_peer() -> None:
    view = view_of(
        record("edge-2", {"echo": load(slots=8)}), record("edge-3", {"echo": load(slots=8)})
    )
    view.sent("edge-2", "echo")
    assert set(choices(view, 50)) == {"edge-3"}


def test_a_stale_view_offers_no_peer_but_keeps_the_cloud(clock: Clock) -> None:
    """Peers' load must be fresh; the cloud's record may not be (Redis down says nothing
    of the cloud, its breaker does), and a stale view cannot tell that the cloud left."""
    view = view_of(record("edge-2"), record("cloud", role="cloud"))
    clock.now += STALE_S
    assert view.fresh() and view.choose("echo", DIGEST) is not None
    clock.now += 0.01
    assert not view.fresh()
    assert view.choose("echo", DIGEST) is None
    assert not view.has_peer("echo", DIGEST)
    cloud = view.cloud()
    assert cloud is not None and cloud.name == "cloud"
    assert view.cloud_gone() is None
    view.update([record("edge-2")])
    assert view.choose("echo", DIGEST) is not None
    assert view.cloud() is None and view.cloud_gone() == "cloud"


def test_a_view_never_refreshed_is_stale() -> None:
    view = PeerView("edge-1")
    assert not view.fresh() and view.choose("echo", DIGEST) is None


def test_a_peer_marked_down_is_skipped_for_a_while_even_across_refreshes(clock: Clock) -> None:
    records = [record("edge-2")]
    view = view_of(*records)
    view.mark_down("edge-2")
    for _ in range(int(DOWN_S / 0.25) - 1):
        clock.now += 0.25
        view.update(records)
        assert view.choose("echo", DIGEST) is None
        assert not view.has_peer("echo", DIGEST)
    clock.now += 0.25
    view.update(records)
    assert view.choose("echo", DIGEST) is not None
    assert view.has_peer("echo", DIGEST)


def test_a_peer_marked_down_leaves_the_others_available(clock: Clock) -> None:
    view = view_of(record("edge-2"), record("edge-3"))
    view.mark_down("edge-2")
    assert {view.choose("echo", DIGEST).name for _ in range(20)} == {"edge-3"}  # type: ignore[union-attr]


def test_the_cloud_is_found_by_url_or_is_the_first_by_name() -> None:
    view = view_of(
        record("cloud-b", role="cloud", url="http://b:9000/"),
        record("cloud-a", role="cloud", url="http://a:9000"),
    )
    assert view.cloud().name == "cloud-a"  # type: ignore[union-attr]
    assert view.cloud("http://b:9000").name == "cloud-b"  # type: ignore[union-attr]
    assert view.cloud("http://c:9000") is None
    assert view_of(record("edge-2")).cloud() is None


def test_a_cloud_node_that_left_is_remembered_as_gone() -> None:
    cloud = record("cloud-a", role="cloud", url="http://a:9000")
    view = view_of(cloud)
    assert view.cloud_gone() is None and view.cloud_gone("http://a:9000") is None
    view.update([record("edge-2")])
    assert view.cloud_gone() == "cloud-a"
    assert view.cloud_gone("http://a:9000") == "cloud-a"
    assert view.cloud_gone("http://elsewhere:9000") is None
    view.update([cloud])
    assert view.cloud_gone() is None


@pytest.mark.anyio
async def test_the_view_refreshes_in_the_background_and_goes_stale_without_redis(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(peers, "REFRESH_S", 0.01)
    monkeypatch.setattr(peers, "STALE_S", 0.15)
    replies: list[list[dict[str, Any]]] = [[{"name": "no-url"}], [record("edge-2")]]
    redis_up = True

    async def members() -> list[dict[str, Any]]:
        if not redis_up:
            raise RedisConnectionError("Redis is down")
        return replies.pop(0) if len(replies) > 1 else replies[0]

    view = PeerView("edge-1", members)
    view.start()
    try:
        await until(lambda: view.choose("echo", DIGEST) is not None, "a peer after a bad record")
        redis_up = False  # the last view ages out
        await until(lambda: view.choose("echo", DIGEST) is None, "the view to go stale")
        assert not view.fresh()
    finally:
        await view.close()


async def until(predicate: Any, what: str, timeout_s: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)
