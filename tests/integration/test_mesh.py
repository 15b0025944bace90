"""The mesh with real parts: `edgefaas up` processes sharing a real Redis, signed bundles
shipped node to node over real HTTP, and the real CLI (`deploy`, `nodes`, `rm`, `rollback`).

Each test builds its own mesh (one signing key, one mesh key, its own Redis key prefix);
only the first node publishes a manifest, the others start empty and run what the mesh
desires. Fixture functions are written into the test's folder and answer with a version
marker, so a test can change the code between deploys and see which version answered.
The Redis-outage tests run their own embedded Redis, so that they can stop and restart it.
"""

from __future__ import annotations

import hashlib
import secrets
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from registry.bundle import SignedBundle, build_callable_bundle
from registry.client import deploy_callable
from registry.keys import Keys
from registry.meshauth import sign_request
from registry.redis_server import EmbeddedRedis
from registry.signing import SigningKey, generate_key_pair
from tests.conftest import NodeProcess, wait_for
from tests.integration.mesh_helpers import (
    MISSING_MODULE,
    CallLoop,
    Canary,
    Knocks,
    Mesh,
    RoguePeer,
    StartNode,
    admin_get,
    archive,
    archive_members,
    call,
    flip_one_byte,
    function_view,
    in_order,
    live_names,
    mesh_nodes,
    put_bundle,
    readyz,
    signed_bundle,
    version_of,
    write_function,
)

pytestmark = pytest.mark.slow

NAME = "hello"
MEMBERSHIP_BOUND_S = 3.0  # the bound for a dead node to drop out
MEMBERSHIP_MARGIN_S = 6.0  # what the test allows, for a loaded CI machine


def new_mesh(
    start_node: StartNode, tmp_path: Path, redis_url: str, prefix: str, sandbox: str = "auto"
) -> Mesh:
    key, pub = generate_key_pair(tmp_path / "keys")
    workdir = tmp_path / "empty"
    workdir.mkdir()
    return Mesh(
        start_node,
        redis_url,
        prefix,
        key,
        pub,
        mesh_key=secrets.token_hex(16),
        workdir=workdir,
        project=tmp_path / "project",
        sandbox=sandbox,
    )


@pytest.fixture
def mesh(
    start_node: StartNode, tmp_path: Path, redis_url: str, redis_prefix: str
) -> Iterator[Mesh]:
    mesh = new_mesh(start_node, tmp_path, redis_url, redis_prefix)
    yield mesh
    mesh.stop()


@pytest.fixture
def own_redis() -> Iterator[EmbeddedRedis]:
    """An embedded Redis of the test's own, in a short /tmp folder so that its socket path
    stays the same across a stop and a start."""
    folder = Path(tempfile.mkdtemp(prefix="edgefaas-mesh-redis-", dir="/tmp"))
    server = EmbeddedRedis(folder)
    server.start()
    yield server
    server.stop()
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def outage_mesh(start_node: StartNode, tmp_path: Path, own_redis: EmbeddedRedis) -> Iterator[Mesh]:
    mesh = new_mesh(start_node, tmp_path, own_redis.url, "edgefaas-outage")
    yield mesh
    mesh.stop()


def digests_by_node(node: NodeProcess, name: str) -> dict[str, str | None]:
    """Per live node (as ``node`` sees the mesh): the digest of ``name`` it runs."""
    return {
        record["name"]: ((record.get("functions") or {}).get(name) or {}).get("digest")
        for record in mesh_nodes(node)["nodes"]
    }


def assert_refused(reply: httpx.Response, *words: str) -> str:
    assert reply.status_code == 422, reply.text
    message: str = reply.json()["error"]["message"]
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    return message


def assert_not_held(node: NodeProcess, digest: str) -> None:
    reply = httpx.head(
        f"{node.url}/system/bundles/{digest}", headers=node.admin_headers(), timeout=10
    )
    assert reply.status_code == 404


def reported_failures(node: NodeProcess, names: tuple[str, ...]) -> dict[str, dict[str, object]]:
    """Per node in ``names``: the failure it reports for ``NAME`` (empty if none)."""
    states = function_view(node, NAME)["mesh"]["nodes"]
    return {name: (states.get(name) or {}).get("failed") or {} for name in names}


def all_failed(node: NodeProcess, names: tuple[str, ...], digest: str) -> bool:
    """Whether every node in ``names`` reports that ``digest`` of ``NAME`` failed there."""
    return all(f.get("digest") == digest for f in reported_failures(node, names).values())


# ------------------------------------------------------------------------ deploy, converge


def test_deploy_reaches_every_node_and_nodes_lists_them(mesh: Mesh) -> None:
    first = write_function(mesh.project, NAME, "v1")
    nodes = mesh.start_many(3, first)
    mesh.wait_serving(NAME, "v1")

    manifest = write_function(mesh.project, NAME, "v2")
    bundle = signed_bundle(manifest, NAME, mesh.key)
    result = mesh.deploy(manifest, via=nodes[2])
    assert result.returncode == 0, result.stderr
    assert f"version 2 ({bundle.digest[:12]})" in result.stderr
    assert "every live node runs the new versions" in result.stderr
    table = result.stdout.splitlines()
    for node in ("test0", "test1", "test2"):
        assert any(line.split() == [node, "running"] for line in table), result.stdout

    expected = {"test0": bundle.digest, "test1": bundle.digest, "test2": bundle.digest}
    for node in nodes:
        assert digests_by_node(node, NAME) == expected
        assert version_of(node, NAME) == "v2"
    # The bundle went up to one node; the others fetched it through the mesh.
    for node in nodes[:2]:
        assert f"fetched bundle {bundle.digest[:12]} from" in node.log()

    listing = mesh.cli("nodes", "--gateway", nodes[0].url, check=True).stdout
    rows = {line.split()[0]: line for line in listing.splitlines()[1:]}
    assert set(rows) == {"test0", "test1", "test2"}, listing
    for row in rows.values():
        assert f"{NAME}@v2" in row and " ok " in row, listing

    # The same manifest again, through a node that fetched the bundle: nothing to upload,
    # no new version.
    again = mesh.deploy(manifest, via=nodes[0])
    assert again.returncode == 0, again.stderr
    assert f"skipped: the gateway holds {bundle.digest[:12]}" in again.stderr
    assert f"version 2 ({bundle.digest[:12]})" in again.stderr


def test_edgefaas_redis_url_in_the_environment_joins_the_mesh(mesh: Mesh) -> None:
    first = mesh.start(None)
    joined = mesh.start_node(
        None,
        "--key-prefix", mesh.prefix,
        "--signing-key", str(mesh.key),
        env={"EDGEFAAS_MESH_KEY": mesh.mesh_key, "EDGEFAAS_REDIS_URL": mesh.redis_url},
        cwd=mesh.workdir,
    )  # fmt: skip
    mesh.nodes.append(joined)
    wait_for(lambda: live_names(first) == {"test0", "test1"}, 3, what="the node to join")


def test_a_node_that_joins_later_catches_up_without_a_deploy(mesh: Mesh) -> None:
    nodes = mesh.start_many(3, write_function(mesh.project, NAME, "v1"))
    manifest = write_function(mesh.project, NAME, "v2")
    assert mesh.deploy(manifest, via=nodes[1]).returncode == 0
    digest = signed_bundle(manifest, NAME, mesh.key).digest

    late = mesh.start(None)
    mesh.wait_serving(NAME, "v2", [late])
    assert f"fetched bundle {digest[:12]} from" in late.log()
    expected = dict.fromkeys(("test0", "test1", "test2", "test3"), digest)
    seen: list[dict[str, str | None]] = []

    def every_node_reports_it() -> bool:
        seen.append(digests_by_node(nodes[0], NAME))
        return seen[-1] == expected

    try:
        wait_for(
            every_node_reports_it,
            timeout_s=20,
            what="every node, the late one too, to report the deployed digest",
        )
    except BaseException:
        print("last seen:", seen[-1:], "expected:", expected)
        for node in mesh.nodes:  # every node's log but its call lines
            lines = [line for line in node.log().splitlines() if "edgefaas.calls" not in line]
            print(f"===== {node.url}\n" + "\n".join(lines))
        raise


def test_a_killed_node_drops_out_and_a_stopped_one_leaves_at_once(mesh: Mesh) -> None:
    nodes = mesh.start_many(3, write_function(mesh.project, NAME, "v1"))
    mesh.wait_serving(NAME, "v1")
    wait_for(lambda: live_names(nodes[0]) == {"test0", "test1", "test2"}, what="3 live nodes")

    killed_at = time.monotonic()
    nodes[2].kill_group()  # SIGKILL to the gateway, its zygotes and workers at once
    wait_for(
        lambda: "test2" not in live_names(nodes[0]),
        MEMBERSHIP_MARGIN_S,
        0.02,
        "the killed node to drop out of /system/nodes",
    )
    gone_after = time.monotonic() - killed_at
    print(f"SIGKILLed node dropped out after {gone_after:.2f} s (bound {MEMBERSHIP_BOUND_S} s)")

    nodes[1].signal(signal.SIGTERM)
    assert nodes[1].process.wait(timeout=30) == 0
    assert live_names(nodes[0]) == {"test0"}  # deregistered on the way out, no TTL wait
    assert version_of(nodes[0], NAME) == "v1"


def test_a_second_node_with_a_live_nodes_name_is_refused(mesh: Mesh) -> None:
    first = mesh.start(None)
    twin = mesh.start(None, "--node", "test0", wait=False)
    assert twin.process.wait(timeout=30) != 0
    assert "node name 'test0' is already used by a live node" in twin.log()
    wait_for(lambda: live_names(first) == {"test0"}, what="the first node to stay listed")


def test_a_refused_twin_leaves_the_live_nodes_record_alone(mesh: Mesh) -> None:
    # A record that no heartbeat restores, so that a deletion shows however fast it is undone.
    mesh.register_rogue("edge-9", "http://127.0.0.1:9")
    twin = mesh.start(None, "--node", "edge-9", wait=False)
    assert twin.process.wait(timeout=30) != 0
    assert "already used by a live node" in twin.log()
    client = redis.Redis.from_url(mesh.redis_url)
    try:
        assert client.exists(Keys(mesh.prefix).node("edge-9")) == 1
    finally:
        client.close()


# -------------------------------------------------------------------------- refused bundles


def canary_callable(port: int) -> object:
    canary = Canary(port)

    def answer(event: object) -> dict[str, object]:
        return {"version": "pickled", "canary": canary}

    return answer


def traversal_bundle(mesh: Mesh, version: str) -> SignedBundle:
    """A bundle of function ``NAME`` — a real function.json and handler — with one more
    member, ``../evil``: its real digest, signed with the mesh's trusted key, so that only
    the archive check can refuse it."""
    real = signed_bundle(write_function(mesh.project, NAME, version), NAME, mesh.key)
    data = archive([*archive_members(real.data), ("../evil", b"escaped\n")])
    digest = hashlib.sha256(data).hexdigest()
    key = SigningKey.load(mesh.key)
    return SignedBundle(NAME, digest, data, key.sign_digest(digest), key.key_id)


def deploy_request(node: NodeProcess, digest: str) -> httpx.Response:
    return httpx.post(
        f"{node.url}/system/functions",
        json={"name": NAME, "digest": digest},
        headers=node.admin_headers(),
        timeout=10,
    )


def test_tampered_and_untrusted_bundles_are_refused_and_the_old_version_serves(
    mesh: Mesh, tmp_path: Path
) -> None:
    node = mesh.start(write_function(mesh.project, NAME, "v1"))
    mesh.wait_serving(NAME, "v1")
    held = signed_bundle(mesh.project / f"{NAME}.yaml", NAME, mesh.key)
    fresh = signed_bundle(write_function(mesh.project, NAME, "v2"), NAME, mesh.key)

    # One byte flipped, sent under the digest of the bytes it was made from.
    reply = put_bundle(node, fresh.digest, flip_one_byte(fresh.data), fresh.signature, fresh.key_id)
    assert_refused(reply, "digest mismatch", fresh.digest[:12])
    assert_not_held(node, fresh.digest)
    # Tampered bytes sent under a digest the node holds never replace what it holds.
    reply = put_bundle(node, held.digest, flip_one_byte(held.data), held.signature, held.key_id)
    assert reply.status_code != 201, reply.text
    stored = admin_get(node, f"/system/bundles/{held.digest}")
    assert hashlib.sha256(stored.content).hexdigest() == held.digest

    # Signed by a key the node does not trust.
    rogue_key = SigningKey.generate()
    signature = rogue_key.sign_digest(fresh.digest)
    reply = put_bundle(node, fresh.digest, fresh.data, signature, rogue_key.key_id)
    assert_refused(reply, rogue_key.key_id, "does not trust")
    assert_not_held(node, fresh.digest)

    # A cloudpickled callable whose signature is a valid one, of another digest.
    knocks = Knocks()
    pickled = build_callable_bundle(canary_callable(knocks.port), NAME)
    forged = SigningKey.load(mesh.key).sign_digest(held.digest)
    reply = put_bundle(node, pickled.digest, pickled.data, forged, SigningKey.load(mesh.key).key_id)
    assert_refused(reply, "signature does not match")
    assert_not_held(node, pickled.digest)
    deploy = deploy_request(node, pickled.digest)
    assert deploy.status_code == 404, deploy.text
    knocks.close()
    assert knocks.count == 0, "the forged pickle was unpickled"
    assert version_of(node, NAME) == "v1"
    assert digests_by_node(node, NAME) == {"test0": held.digest}


def upload_traversal_bundle(
    mesh: Mesh,
) -> tuple[NodeProcess, SignedBundle, httpx.Response, httpx.Response]:
    """A node serving v1, sent a path-traversal bundle (PUT) and asked to deploy it (POST);
    returns the node, the bundle and both replies."""
    node = mesh.start(write_function(mesh.project, NAME, "v1"))
    mesh.wait_serving(NAME, "v1")
    bundle = traversal_bundle(mesh, "v2")
    upload = put_bundle(node, bundle.digest, bundle.data, bundle.signature, bundle.key_id)
    return node, bundle, upload, deploy_request(node, bundle.digest)


def test_a_path_traversal_bundle_never_runs_and_nothing_escapes(mesh: Mesh, tmp_path: Path) -> None:
    node, _, _, deploy = upload_traversal_bundle(mesh)
    assert deploy.status_code != 200, deploy.text
    assert not list(tmp_path.rglob("evil")), "a '..' member was written"
    assert version_of(node, NAME) == "v1"
    assert function_view(node, NAME)["mesh"]["desired"]["version"] == 1


def test_a_path_traversal_bundle_is_refused_with_a_clear_error(mesh: Mesh) -> None:
    node, bundle, upload, deploy = upload_traversal_bundle(mesh)
    assert_refused(upload, "'..'")
    assert_not_held(node, bundle.digest)
    assert deploy.status_code in (404, 422), deploy.text


def test_bundles_from_a_rogue_peer_are_verified_and_another_holder_is_tried(
    mesh: Mesh, tmp_path: Path
) -> None:
    nodes = mesh.start_many(2, write_function(mesh.project, NAME, "v1"))
    names = ("test0", "test1")
    mesh.wait_serving(NAME, "v1")
    good = signed_bundle(write_function(mesh.project, NAME, "v2"), NAME, mesh.key)
    unsafe = traversal_bundle(mesh, "v3")

    with RoguePeer({good.digest: flip_one_byte(good.data), unsafe.digest: unsafe.data}) as rogue:
        mesh.register_rogue("rogue", rogue.url, good.digest, unsafe.digest)

        # v2, and its only holder sends it with one byte flipped: refused, v1 serves on.
        mesh.assign(good)
        wait_for(
            lambda: all_failed(nodes[0], names, good.digest), 15, 0.1, "the bad fetch reported"
        )
        for failure in reported_failures(nodes[0], names).values():
            assert failure["retrying"] is True
            assert "rogue: sent bytes whose sha256 is" in str(failure["message"])
        assert [version_of(node, NAME) for node in nodes] == ["v1", "v1"]

        # An honest holder appears: every node gets v2, in spite of the rogue.
        upload = put_bundle(nodes[0], good.digest, good.data, good.signature, good.key_id)
        assert upload.status_code == 201, upload.text
        mesh.wait_serving(NAME, "v2", nodes)

        # v3: digest and signature in order, but an archive with a '..' member. Nodes fetch
        # it, refuse to unpack it, say why, and v2 serves on.
        mesh.assign(unsafe)
        wait_for(lambda: all_failed(nodes[0], names, unsafe.digest), 15, 0.1, "the archive refused")
        for failure in reported_failures(nodes[0], names).values():
            assert failure["retrying"] is False
            assert "member '../evil' has a '..' component" in str(failure["message"])
        assert [version_of(node, NAME) for node in nodes] == ["v2", "v2"]
        assert set(rogue.requests) == {good.digest, unsafe.digest}
    assert not list(tmp_path.rglob("evil")), "a '..' member was written"


# ------------------------------------------------------------------- versions that fail


def test_a_version_that_cannot_import_leaves_the_old_one_serving(mesh: Mesh) -> None:
    nodes = mesh.start_many(2, write_function(mesh.project, NAME, "v1"))
    mesh.wait_serving(NAME, "v1")
    broken = write_function(mesh.project, NAME, "v2", broken=True)
    digest = signed_bundle(broken, NAME, mesh.key).digest

    result = mesh.deploy(broken, via=nodes[0])
    assert result.returncode == 1, result.stdout + result.stderr
    assert MISSING_MODULE in result.stderr
    assert f"/{NAME}: the new version failed to start" in result.stderr

    names = ("test0", "test1")
    wait_for(lambda: all_failed(nodes[1], names, digest), 15, 0.1, "the failure reported")
    view = function_view(nodes[1], NAME)
    assert view["mesh"]["desired"]["version"] == 2
    for state in view["mesh"]["nodes"].values():
        assert MISSING_MODULE in state["failed"]["message"]
        assert state["version"] == 1 and state["state"] == "running"
    assert [version_of(node, NAME) for node in nodes] == ["v1", "v1"]

    # The next good version clears the failure.
    fixed = write_function(mesh.project, NAME, "v3")
    assert mesh.deploy(fixed, via=nodes[1]).returncode == 0
    mesh.wait_serving(NAME, "v3")
    for state in function_view(nodes[0], NAME)["mesh"]["nodes"].values():
        assert "failed" not in state


# ------------------------------------------------------------------------ Redis outages


def save_and_stop(server: EmbeddedRedis) -> str:
    """Stop the server after saving its data (loaded again at its next start, as a Redis
    with persistence would); return its URL."""
    url = server.url
    client = redis.Redis.from_url(url)
    client.save()
    client.close()
    server.stop()
    return url


def stop_loops(loops: list[CallLoop]) -> list[str]:
    """Stop the loops; return their failures. A loop that ran out of calls did not cover
    all it was meant to."""
    for loop in loops:
        assert not loop.exhausted, "a call loop ran out of calls before the test was done"
        loop.stop()
    return [failure for loop in loops for failure in loop.failures]


def test_calls_keep_succeeding_while_redis_is_down_and_the_mesh_resyncs(
    outage_mesh: Mesh, own_redis: EmbeddedRedis
) -> None:
    mesh = outage_mesh
    nodes = mesh.start_many(2, write_function(mesh.project, NAME, "v1"))
    mesh.wait_serving(NAME, "v1")
    wait_for(lambda: live_names(nodes[0]) == {"test0", "test1"}, what="2 live nodes")
    loops = [CallLoop(node, NAME, max_calls=5000, pause_s=0.005) for node in nodes]
    for loop in loops:
        loop.start()

    url = save_and_stop(own_redis)
    for node in nodes:
        wait_for(lambda n=node: readyz(n)["mesh"]["degraded"], 10, 0.1, "a degraded mesh")
    outage = mesh_nodes(nodes[0])
    assert outage["mesh"].startswith("unreachable")
    assert [r["name"] for r in outage["nodes"]] == ["test0"] and outage["nodes"][0]["degraded"]
    listing = mesh.cli("nodes", "--gateway", nodes[1].url, check=True).stdout
    assert "degraded" in listing
    view = function_view(nodes[1], NAME)["mesh"]
    assert view["reachable"] is False and view["nodes"]["test1"]["version"] == 1
    calls_before = sum(loop.calls for loop in loops)
    time.sleep(2.0)  # two heartbeats' worth of outage, under load
    assert sum(loop.calls for loop in loops) > calls_before + 20

    assert own_redis.start() == url
    for node in nodes:
        wait_for(lambda n=node: not readyz(n)["mesh"]["degraded"], 15, 0.1, "the mesh back")
    wait_for(lambda: live_names(nodes[1]) == {"test0", "test1"}, 10, what="re-registration")
    # A deploy after the outage reaches both nodes; the calls go on through it.
    result = mesh.deploy(write_function(mesh.project, NAME, "v2"), via=nodes[1])
    assert result.returncode == 0, result.stderr
    mesh.wait_serving(NAME, "v2")
    failures = stop_loops(loops)
    assert failures == [], failures[:5]
    for loop in loops:
        assert in_order(loop.versions, ["v1", "v2"]) and loop.versions[-1] == "v2"


def test_a_redis_that_comes_back_empty_does_not_stop_the_functions(
    outage_mesh: Mesh, own_redis: EmbeddedRedis
) -> None:
    mesh = outage_mesh
    nodes = mesh.start_many(2, write_function(mesh.project, NAME, "v1"))
    mesh.wait_serving(NAME, "v1")
    loops = [CallLoop(node, NAME, max_calls=5000, pause_s=0.005) for node in nodes]
    for loop in loops:
        loop.start()
    url = own_redis.url
    own_redis.stop()  # no SAVE: it comes back empty
    for node in nodes:
        wait_for(lambda n=node: readyz(n)["mesh"]["degraded"], 10, 0.1, "a degraded mesh")
    assert own_redis.start() == url
    for node in nodes:
        wait_for(lambda n=node: not readyz(n)["mesh"]["degraded"], 15, 0.1, "the mesh back")
    # Long enough for every node to resync (watch backoff ≤ 5 s), unless calls fail first.
    deadline = time.monotonic() + 8.0
    while time.monotonic() < deadline and not any(loop.failures for loop in loops):
        time.sleep(0.1)
    failures = stop_loops(loops)
    assert failures == [], failures[:3]
    assert [version_of(node, NAME) for node in nodes] == ["v1", "v1"]


def test_a_node_restarted_while_redis_is_down_serves_what_it_ran_from_its_disk(
    outage_mesh: Mesh, own_redis: EmbeddedRedis
) -> None:
    mesh = outage_mesh
    nodes = mesh.start_many(2, write_function(mesh.project, NAME, "v1"))
    manifest = write_function(mesh.project, NAME, "v2")
    assert mesh.deploy(manifest, via=nodes[0]).returncode == 0
    mesh.wait_serving(NAME, "v2")  # test1 fetched v2 from test0: it has it on disk only

    url = save_and_stop(own_redis)
    nodes[1].signal(signal.SIGTERM)
    assert nodes[1].process.wait(timeout=30) == 0
    again = mesh.start(None, "--data-dir", str(nodes[1].data_dir), "--node", "test1")

    assert version_of(again, NAME) == "v2"
    ready = httpx.get(again.url + "/readyz", timeout=5)
    assert ready.status_code == 200, ready.text
    assert ready.json()["mesh"]["degraded"] is True
    assert "serving the 1 function(s) this node ran last" in again.log()

    assert own_redis.start() == url
    wait_for(lambda: not readyz(again)["mesh"]["degraded"], 15, 0.1, "the mesh back")
    wait_for(lambda: live_names(nodes[0]) == {"test0", "test1"}, 10, what="re-registration")
    assert (
        digests_by_node(nodes[0], NAME)["test1"] == signed_bundle(manifest, NAME, mesh.key).digest
    )


# ---------------------------------------------------------------- switching under load


def test_a_redeploy_under_load_fails_no_call_and_switches_versions(mesh: Mesh) -> None:
    nodes = mesh.start_many(2, write_function(mesh.project, NAME, "v1"))
    mesh.wait_serving(NAME, "v1")
    loops = [CallLoop(nodes[1], NAME, 3000, query="?sleep_ms=5") for _ in range(2)]
    for loop in loops:
        loop.start()
    wait_for(lambda: all(loop.versions for loop in loops), what="the first answers")

    for version in ("v2", "v3"):
        result = mesh.deploy(write_function(mesh.project, NAME, version), via=nodes[0])
        assert result.returncode == 0, result.stderr
        wait_for(
            lambda v=version: all(loop.versions[-1:] == [v] for loop in loops),
            what=f"answers from {version}",
        )
    failures = stop_loops(loops)
    assert failures == [], failures[:5]
    for loop in loops:
        assert in_order(loop.versions, ["v1", "v2", "v3"]), loop.versions
        assert {"v1", "v2", "v3"} <= set(loop.versions)
    print(f"calls under load: {sum(loop.calls for loop in loops)}")


# ------------------------------------------------------------------------ rm and rollback


def test_rm_removes_everywhere_and_rollback_brings_versions_back(mesh: Mesh) -> None:
    nodes = mesh.start_many(2, write_function(mesh.project, NAME, "v1"))
    for version in ("v2", "v3"):
        result = mesh.deploy(write_function(mesh.project, NAME, version), via=nodes[0])
        assert result.returncode == 0, result.stderr
    mesh.wait_serving(NAME, "v3")

    result = mesh.cli("rollback", NAME, "--gateway", nodes[1].url, check=True)
    assert '"version": 4' in result.stdout
    mesh.wait_serving(NAME, "v2")
    result = mesh.cli("rollback", NAME, "--to", "1", "--gateway", nodes[1].url, check=True)
    assert '"version": 5' in result.stdout
    mesh.wait_serving(NAME, "v1")
    missing = mesh.cli("rollback", NAME, "--to", "99", "--gateway", nodes[1].url)
    assert missing.returncode == 1 and "no version 99" in missing.stderr

    mesh.cli("rm", NAME, "--gateway", nodes[0].url, check=True)

    def removed() -> bool:
        return all(call(node, NAME).status_code == 404 for node in nodes)

    wait_for(removed, 15, 0.1, "the function to be gone from every node")
    again = mesh.cli("rm", NAME, "--gateway", nodes[0].url)
    assert again.returncode == 1 and "not deployed" in again.stderr
    assert admin_get(nodes[1], f"/system/functions/{NAME}").status_code == 404

    mesh.cli("rollback", NAME, "--to", "3", "--gateway", nodes[0].url, check=True)
    mesh.wait_serving(NAME, "v3")


# ---------------------------------------------------------------- deploying from Python


def test_deploy_callable_ships_a_closure_that_every_node_serves(mesh: Mesh, tmp_path: Path) -> None:
    nodes = mesh.start_many(3, None)
    knocks = Knocks()
    canary = Canary(knocks.port)
    greeting = "hello from a closure"

    entry = deploy_callable(
        lambda event: {"greeting": greeting, "body": event.body.decode(), "canary": canary},
        name="greet",
        gateway=nodes[1].url,
        token=nodes[1].token,
        signing_key=mesh.key,
    )
    assert entry["version"] == 1
    for node in nodes:
        reply = httpx.post(f"{node.url}/function/greet", content=b"hi", timeout=10)
        assert reply.status_code == 200, reply.text
        # The canary comes out of the pickle as None: what its connection's close returned.
        assert reply.json() == {"greeting": greeting, "body": "hi", "canary": None}
    knocks.close()
    assert knocks.count >= 1  # the canary works: a node did unpickle it
    digests = set(digests_by_node(nodes[0], "greet").values())
    assert digests == {entry["digest"]}


# ------------------------------------------------------------------- bundles between peers


def test_bundles_are_served_to_peers_only_with_a_fresh_mesh_signature(mesh: Mesh) -> None:
    manifest = write_function(mesh.project, NAME, "v1")
    node = mesh.start(manifest)
    mesh.wait_serving(NAME, "v1")
    digest = signed_bundle(manifest, NAME, mesh.key).digest
    path = f"/system/bundles/{digest}"
    key = mesh.mesh_key.encode()

    def get(headers: dict[str, str]) -> httpx.Response:
        return httpx.get(node.url + path, headers=headers, timeout=10)

    me = httpx.get(node.url + "/system/info", headers=node.admin_headers(), timeout=10)
    name = me.json()["node"]

    assert get({}).status_code == 401
    assert httpx.head(node.url + path, timeout=10).status_code == 401
    other_path = f"/system/bundles/{'0' * 64}"
    assert get(sign_request(key, "peer", "GET", other_path, name)).status_code == 401
    stale = sign_request(key, "peer", "GET", path, name, now=time.time() - 600)
    refused = get(stale)
    assert refused.status_code == 401 and "old" in refused.json()["error"]["message"]
    assert get(sign_request(b"another mesh", "peer", "GET", path, name)).status_code == 401
    for_another_node = get(sign_request(key, "peer", "GET", path, name + "-other"))
    assert for_another_node.status_code == 401  # captured headers cannot be replayed here

    served = get(sign_request(key, "peer", "GET", path, name))
    assert served.status_code == 200
    assert hashlib.sha256(served.content).hexdigest() == digest
    assert served.headers["x-bundle-key"] == SigningKey.load(mesh.key).key_id
