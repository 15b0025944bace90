"""The node's sandboxes without building one: modes, what a node that cannot says, uids,
plans, and the seccomp filter (in a forked child, which it then cannot leave)."""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path

import pytest

from registry.specs import FunctionSpec, HandlerRef, PoolSpec
from runtime.errors import Unavailable
from runtime.sandbox import kernel, seccomp
from runtime.sandbox.plan import SandboxPlan, python_paths
from runtime.sandbox.probe import Abilities
from runtime.sandbox.sandboxes import UID_SPAN, Sandboxes


def spec(name: str = "echo", root: Path = Path("/srv/echo")) -> FunctionSpec:
    return FunctionSpec(
        name=name,
        handler=HandlerRef("file", str(root / "handler.py"), "handle"),
        root=root,
        triggers=(),
        pool=PoolSpec(1, 2, 1, 8, 1000, 30.0),
        timeout_s=5.0,
        memory_mb=128,
        files=(root / "data.json",),
    )


def cannot(tmp_path: Path, mode: str) -> Sandboxes:
    return Sandboxes(mode, "n", tmp_path / "stage", abilities=Abilities(missing=["no root"]))


def test_auto_on_a_node_that_cannot_runs_functions_as_before_and_says_why(
    tmp_path: Path,
) -> None:
    sandboxes = cannot(tmp_path, "auto")
    assert sandboxes.for_pool(spec()) is None
    status = sandboxes.status()
    assert status["active"] is False
    assert status["missing"] == ["no root"]
    assert "without a sandbox" in status["warning"] and "no root" in status["warning"]


def test_strict_on_a_node_that_cannot_refuses_the_function_with_the_reason(
    tmp_path: Path,
) -> None:
    with pytest.raises(Unavailable, match=r"echo cannot be sandboxed here.*no root"):
        cannot(tmp_path, "strict").for_pool(spec())


def test_off_runs_functions_as_before_and_does_not_warn(tmp_path: Path) -> None:
    sandboxes = Sandboxes("off", "n", tmp_path / "stage")
    assert sandboxes.for_pool(spec()) is None
    assert sandboxes.warning() is None
    assert sandboxes.status()["mode"] == "off"


def test_a_bad_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="auto, strict or off"):
        Sandboxes("sometimes", "n", tmp_path)


def test_uids_are_stable_per_function_distinct_and_never_root(tmp_path: Path) -> None:
    sandboxes = Sandboxes("auto", "n", tmp_path, uid_base=5000, abilities=Abilities())
    names = [f"f{i}" for i in range(300)]
    uids = [sandboxes.uid_for(name) for name in names]
    assert len(set(uids)) == len(uids)
    assert all(5000 <= uid < 5000 + UID_SPAN for uid in uids)
    assert sandboxes.uid_for("f7") == uids[7]
    again = Sandboxes("auto", "n", tmp_path, uid_base=5000, abilities=Abilities())
    assert again.uid_for("f7") == uids[7]  # the same on another start
    assert 0 not in uids and os.getuid() not in uids


def test_each_pool_gets_a_plan_of_its_own(tmp_path: Path) -> None:
    sandboxes = Sandboxes("auto", "n", tmp_path / "stage", abilities=Abilities())
    first, second = sandboxes.for_pool(spec()), sandboxes.for_pool(spec())
    assert first is not None and second is not None
    assert first.group != second.group  # two versions side by side during a switch
    plan = first.plan
    assert plan.uid == plan.gid == sandboxes.uid_for("echo")
    assert plan.root == "/srv/echo" and plan.tmp_mb == 64 and plan.network == "host"
    assert plan.await_start is False  # no cgroups in these abilities
    assert SandboxPlan.from_dict(plan.to_dict()) == plan


def test_visible_paths_keep_the_outermost_of_nested_folders() -> None:
    plan = SandboxPlan(
        "f", 1000, 1000, "/srv/f", "/stage", 8, "host", False,
        system_paths=("/usr", "/etc"),
        python_paths=("/usr/lib/python3", "/opt/venv", "/opt/venv/lib", "/opt/venvx"),
    )  # fmt: skip
    assert plan.visible_paths() == ["/etc", "/usr", "/opt/venv", "/opt/venvx"]


def test_python_paths_show_packages_of_a_checkout_but_not_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / ".edgefaas-mesh").mkdir()  # a local mesh's keys live in folders like this
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    paths = python_paths()
    assert str(tmp_path / "mypkg") in paths
    assert not any(p.startswith(str(tmp_path / ".edgefaas-mesh")) for p in paths)
    assert str(tmp_path) not in paths


def test_a_spec_moves_with_its_folder_into_the_sandbox() -> None:
    moved = spec().relocated(Path("/var/task"))
    assert moved.root == Path("/var/task")
    assert moved.handler.target == "/var/task/handler.py"
    assert moved.files == (Path("/var/task/data.json"),)


def test_seccomp_denies_namespaces_and_mounts_to_the_process_and_its_children() -> None:
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the filter cannot be taken off: only a throwaway child loads it
        os.close(read)
        results = []
        try:
            kernel.prctl(kernel.PR_SET_NO_NEW_PRIVS, 1)
            seccomp.load_filter()
            for call in (
                lambda: kernel.unshare(kernel.CLONE_NEWUSER),
                lambda: kernel.umount("/nonexistent/edgefaas"),  # ENOENT were it allowed
            ):
                try:
                    call()
                    results.append("allowed")
                except OSError as exc:
                    results.append(errno.errorcode.get(exc.errno or 0, "?"))
            libc = ctypes.CDLL(None, use_errno=True)
            results.append("getpid ok" if libc.getpid() == os.getpid() else "getpid wrong")
        except BaseException as exc:
            results.append(f"error {exc}")
        os.write(write, ",".join(results).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        answer = pipe.read()
    os.waitpid(child, 0)
    assert answer == "EPERM,EPERM,getpid ok"
