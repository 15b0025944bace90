"""The cgroup interface: v2's file writes against a fake cgroupfs folder (this machine mounts
v1 with the controllers, and cgroup2 without any), v1's the same way, and v1 for real when
the test runs as root on a machine that has it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runtime.sandbox import cgroups
from runtime.sandbox.cgroups import CgroupsV1, CgroupsV2, clear_stale, kill_all
from runtime.sandbox.probe import find_cgroups


def fake_v2(tmp_path: Path) -> CgroupsV2:
    base = tmp_path / "node"
    base.mkdir()
    (base / "cgroup.subtree_control").write_text("")
    return CgroupsV2(base)


def test_v2_writes_limits_and_passes_controllers_down(tmp_path: Path) -> None:
    groups = fake_v2(tmp_path)
    groups.create("echo.1", cpu_cores=0.5, pids=64)
    groups.create("echo.1/w3", memory_bytes=64 * 1024 * 1024)
    base = groups.base
    assert (base / "cgroup.subtree_control").read_text() == "+memory +cpu +pids"
    assert (base / "echo.1" / "cgroup.subtree_control").read_text() == "+memory +cpu +pids"
    assert (base / "echo.1" / "cpu.max").read_text() == "50000 100000"
    assert (base / "echo.1" / "pids.max").read_text() == "64"
    assert (base / "echo.1" / "w3" / "memory.max").read_text() == str(64 * 1024 * 1024)
    assert (base / "echo.1" / "w3" / "memory.swap.max").read_text() == "0"
    groups.add("echo.1/w3", 4242)
    assert (base / "echo.1" / "w3" / "cgroup.procs").read_text() == "4242"


def test_v2_reads_usage_from_its_files(tmp_path: Path) -> None:
    groups = fake_v2(tmp_path)
    groups.create("f.1")
    folder = groups.base / "f.1"
    (folder / "memory.current").write_text("1048576\n")
    (folder / "cpu.stat").write_text("usage_usec 2500000\nthrottled_usec 500000\n")
    (folder / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 2\noom_kill 2\n")
    assert groups.memory_bytes("f.1") == 1048576
    assert groups.cpu_seconds("f.1") == 2.5
    assert groups.throttled_seconds("f.1") == 0.5
    assert groups.oom_kills("f.1") == 2
    assert groups.memory_bytes("missing") == 0


def test_v1_writes_each_controller_in_its_hierarchy(tmp_path: Path) -> None:
    bases = {c: tmp_path / c / "node" for c in cgroups.V1_CONTROLLERS}
    for base in bases.values():
        base.mkdir(parents=True)
    (bases["memory"]).mkdir(exist_ok=True)
    groups = CgroupsV1(bases)
    groups.create("f.1", cpu_cores=1.5, pids=32)
    (bases["memory"] / "f.1" / "w1").mkdir()
    (bases["memory"] / "f.1" / "w1" / "memory.memsw.limit_in_bytes").write_text("")
    groups.create("f.1/w1", memory_bytes=100)
    assert (bases["cpu"] / "f.1" / "cpu.cfs_quota_us").read_text() == "150000"
    assert (bases["cpu"] / "f.1" / "cpu.cfs_period_us").read_text() == "100000"
    assert (bases["pids"] / "f.1" / "pids.max").read_text() == "32"
    assert (bases["memory"] / "f.1" / "w1" / "memory.limit_in_bytes").read_text() == "100"
    assert (bases["memory"] / "f.1" / "w1" / "memory.memsw.limit_in_bytes").read_text() == "100"
    (bases["memory"] / "f.1" / "w1" / "memory.oom_control").write_text(
        "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n"
    )
    assert groups.oom_kills("f.1/w1") == 1
    groups.add("f.1/w1", 77)
    for controller in cgroups.V1_CONTROLLERS:
        assert (bases[controller] / "f.1" / "w1" / "cgroup.procs").read_text() == "77"


def test_stale_groups_of_dead_nodes_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f"edgefaas-a.{dead.pid}" / "echo.1" / "w1").mkdir(parents=True)
    (tmp_path / f"edgefaas-b.{os.getpid()}" / "echo.1").mkdir(parents=True)
    (tmp_path / "other").mkdir()
    clear_stale(tmp_path, "edgefaas-")
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"edgefaas-b.{os.getpid()}", "other"]


root_v1 = pytest.mark.skipif(
    os.geteuid() != 0 or not Path("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists(),
    reason="needs root and the cgroup v1 memory controller (CI here has both)",
)


@root_v1
def test_v1_for_real_limits_counts_and_kills_a_group() -> None:
    groups = find_cgroups(f"unit{os.getpid()}")
    assert groups.version == 1
    try:
        groups.create("f.1", cpu_cores=0.2, pids=16)
        groups.create("f.1/w1", memory_bytes=32 * 1024 * 1024)
        busy = (
            "import sys, time\nsys.stdin.read(1)\nt = time.time()\nwhile time.time() - t < 5: pass"
        )
        child = subprocess.Popen([sys.executable, "-c", busy], stdin=subprocess.PIPE)
        groups.add("f.1/w1", child.pid)
        assert groups.pids("f.1") == [child.pid]
        assert child.stdin is not None
        child.stdin.write(b"go")  # busy from now on, inside the group
        child.stdin.close()
        deadline = time.monotonic() + 5
        while groups.throttled_seconds("f.1") == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert groups.cpu_seconds("f.1") > 0  # counted in the group
        assert groups.throttled_seconds("f.1") > 0  # held to 0.2 of a core
        assert groups.memory_bytes("f.1") > 0
        assert kill_all(groups, "f.1")
        child.wait(timeout=5)
        assert groups.pids("f.1") == []
        assert groups.remove("f.1")
    finally:
        kill_all(groups, "f.1")
        groups.close()
