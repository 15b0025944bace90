"""Control groups: one small interface over cgroup v2 (one unified hierarchy, what current
distributions mount) and v1 (a hierarchy per controller: ``memory``, ``cpu``, ``cpuacct``,
``pids``), so the rest of the node never sees which one it has.

A node keeps its groups under its own: ``<own>/edgefaas-NODE/``; each pool of a function
gets ``POOL/`` there (its CPU quota and process cap, for all its workers together), with a
leaf ``POOL/zygote`` and one leaf ``POOL/wTOKEN`` per worker (its memory limit, so a worker
over ``memory_mb`` is killed alone). Only the node writes these files; inside a sandbox they
are read-only, as runc mounts them.

Every method takes a group as a path relative to the node's base (``echo.3/w12``). Errors are
:class:`OSError` with the file named.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

CPU_PERIOD_US = 100_000
V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids")
V2_CONTROLLERS = ("memory", "cpu", "pids")


class Cgroups(Protocol):
    """What the node does with control groups (v1 or v2)."""

    version: int

    def close(self) -> None: ...

    def create(
        self,
        group: str,
        *,
        memory_bytes: int | None = None,
        cpu_cores: float | None = None,
        pids: int | None = None,
    ) -> None: ...

    def add(self, group: str, pid: int) -> None: ...

    def pids(self, group: str) -> list[int]: ...

    def remove(self, group: str) -> bool: ...

    def memory_bytes(self, group: str) -> int: ...

    def cpu_seconds(self, group: str) -> float: ...

    def throttled_seconds(self, group: str) -> float: ...

    def oom_kills(self, group: str) -> int: ...


def kill_all(cgroups: Cgroups, group: str, within_s: float = 1.0) -> bool:
    """SIGKILL every process of ``group`` (a worker's leftovers, a fork bomb) until none is
    left, for at most ``within_s``; True when it is empty. A process forking as fast as it
    can is outpaced: each round kills every process the group has, and the group's ``pids``
    cap bounds the new ones. Blocks its caller: an empty group (the common case) costs one
    read."""
    deadline = time.monotonic() + within_s
    while True:
        found = cgroups.pids(group)
        if not found:
            return True
        if time.monotonic() > deadline:
            return False
        for pid in found:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.002)  # let the killed processes leave the group


def clear_stale(parent: Path, prefix: str) -> None:
    """Remove the groups ``PREFIX*.PID`` below ``parent`` of nodes no longer running (their
    process ``PID`` is gone, e.g. killed with SIGKILL), with any process still in them."""
    for folder in parent.glob(f"{prefix}*.*"):
        pid = folder.name.rpartition(".")[2]
        if not pid.isdigit() or Path(f"/proc/{pid}").exists():
            continue
        for stale in _procs_below(folder):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(stale, signal.SIGKILL)
        _remove_tree(folder)


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value, encoding="ascii")
    except OSError as exc:
        raise OSError(exc.errno, f"writing {value!r} to {path}: {exc.strerror}") from None


def _read(path: Path) -> str:
    return path.read_text(encoding="ascii")


def _stat_field(path: Path, name: str) -> int:
    """A ``key value`` line of a flat-keyed file (``memory.events``, ``cpu.stat``)."""
    with contextlib.suppress(OSError):
        for line in _read(path).splitlines():
            key, _, value = line.partition(" ")
            if key == name:
                return int(value)
    return 0


def _procs_below(top: Path) -> list[int]:
    """The processes of the group at ``top`` and of every group below it."""
    found: list[int] = []
    for folder in [top, *top.rglob("*")]:
        with contextlib.suppress(OSError, ValueError):
            if folder.is_dir():
                found.extend(int(p) for p in _read(folder / "cgroup.procs").split())
    return found


def _remove_tree(top: Path) -> bool:
    """Remove ``top`` and the groups below it, deepest first; False if one is still busy."""
    if not top.is_dir():
        return True
    done = True
    for child in [p for p in top.iterdir() if p.is_dir()]:
        done = _remove_tree(child) and done
    try:
        top.rmdir()
    except FileNotFoundError:
        pass
    except OSError:
        return False
    return done


class CgroupsV1:
    """cgroup v1: the group exists once in each controller's hierarchy."""

    version = 1

    def __init__(self, bases: dict[str, Path]) -> None:
        self.bases = bases  # controller → this node's base folder in its hierarchy

    def _dirs(self, group: str) -> Iterator[tuple[str, Path]]:
        for controller, base in self.bases.items():
            yield controller, base / group

    def create(
        self,
        group: str,
        *,
        memory_bytes: int | None = None,
        cpu_cores: float | None = None,
        pids: int | None = None,
    ) -> None:
        for _, folder in self._dirs(group):
            folder.mkdir(parents=True, exist_ok=True)
        memory = self.bases["memory"] / group
        if memory_bytes is not None:
            _write(memory / "memory.limit_in_bytes", str(memory_bytes))
            swap = memory / "memory.memsw.limit_in_bytes"  # memory and swap together
            if swap.exists():
                _write(swap, str(memory_bytes))
        if cpu_cores is not None:
            cpu = self.bases["cpu"] / group
            _write(cpu / "cpu.cfs_period_us", str(CPU_PERIOD_US))
            _write(cpu / "cpu.cfs_quota_us", str(max(1000, int(cpu_cores * CPU_PERIOD_US))))
        if pids is not None:
            _write(self.bases["pids"] / group / "pids.max", str(pids))

    def close(self) -> None:
        """Remove the node's base groups (once its pools have stopped)."""
        for base in self.bases.values():
            _remove_tree(base)

    def add(self, group: str, pid: int) -> None:
        for _, folder in self._dirs(group):
            _write(folder / "cgroup.procs", str(pid))

    def pids(self, group: str) -> list[int]:
        return _procs_below(self.bases["pids"] / group)

    def remove(self, group: str) -> bool:
        return all([_remove_tree(folder) for _, folder in self._dirs(group)])

    def memory_bytes(self, group: str) -> int:
        with contextlib.suppress(OSError, ValueError):
            return int(_read(self.bases["memory"] / group / "memory.usage_in_bytes"))
        return 0

    def cpu_seconds(self, group: str) -> float:
        with contextlib.suppress(OSError, ValueError):
            return int(_read(self.bases["cpuacct"] / group / "cpuacct.usage")) / 1e9
        return 0.0

    def throttled_seconds(self, group: str) -> float:
        return _stat_field(self.bases["cpu"] / group / "cpu.stat", "throttled_time") / 1e9

    def oom_kills(self, group: str) -> int:
        return _stat_field(self.bases["memory"] / group / "memory.oom_control", "oom_kill")


class CgroupsV2:
    """cgroup v2: one hierarchy; a group's controllers are those its parent enables in
    ``cgroup.subtree_control``, which only a group without processes of its own may do."""

    version = 2

    def __init__(self, base: Path) -> None:
        self.base = base

    def enable_controllers(self, folder: Path) -> None:
        _write(folder / "cgroup.subtree_control", " ".join(f"+{c}" for c in V2_CONTROLLERS))

    def create(
        self,
        group: str,
        *,
        memory_bytes: int | None = None,
        cpu_cores: float | None = None,
        pids: int | None = None,
    ) -> None:
        folder = self.base / group
        parent = self.base
        for part in Path(group).parts:  # each level passes the controllers on
            self.enable_controllers(parent)
            parent = parent / part
            parent.mkdir(exist_ok=True)
        if memory_bytes is not None:
            _write(folder / "memory.max", str(memory_bytes))
            _write(folder / "memory.swap.max", "0")
        if cpu_cores is not None:
            quota = max(1000, int(cpu_cores * CPU_PERIOD_US))
            _write(folder / "cpu.max", f"{quota} {CPU_PERIOD_US}")
        if pids is not None:
            _write(folder / "pids.max", str(pids))

    def close(self) -> None:
        _remove_tree(self.base)

    def add(self, group: str, pid: int) -> None:
        _write(self.base / group / "cgroup.procs", str(pid))

    def pids(self, group: str) -> list[int]:
        return _procs_below(self.base / group)

    def remove(self, group: str) -> bool:
        return _remove_tree(self.base / group)

    def memory_bytes(self, group: str) -> int:
        with contextlib.suppress(OSError, ValueError):
            return int(_read(self.base / group / "memory.current"))
        return 0

    def cpu_seconds(self, group: str) -> float:
        return _stat_field(self.base / group / "cpu.stat", "usage_usec") / 1e6

    def throttled_seconds(self, group: str) -> float:
        return _stat_field(self.base / group / "cpu.stat", "throttled_usec") / 1e6

    def oom_kills(self, group: str) -> int:
        return _stat_field(self.base / group / "memory.events", "oom_kill")
