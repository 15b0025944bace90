"""The node's sandboxes: its mode (``--sandbox auto|strict|off``), what this machine allows,
each function's uid, and each pool's cgroups.

:class:`Sandboxes` is made once per node; :meth:`Sandboxes.for_pool` gives each warm pool a
:class:`PoolSandbox` — its plan (sent to the zygote, which builds the sandbox around itself)
and its control groups (which this process, the node, creates, fills and removes).
"""

from __future__ import annotations

import logging
import os
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from registry.specs import FunctionSpec
from runtime.errors import Unavailable
from runtime.sandbox import cgroups
from runtime.sandbox.plan import SandboxPlan
from runtime.sandbox.probe import Abilities, probe

log = logging.getLogger("edgefaas.runtime")

Mode = Literal["auto", "strict", "off"]
MODES = ("auto", "strict", "off")
MiB = 1024 * 1024
UID_BASE = 200_000  # functions get uids (and gids) from here
UID_SPAN = 100_000


@dataclass
class Usage:
    """What a pool's processes used, from its cgroups (totals since the pool started)."""

    memory_bytes: int = 0
    cpu_seconds: float = 0.0
    throttled_seconds: float = 0.0
    oom_kills: int = 0


class Sandboxes:
    """One node's sandboxing. ``active`` says whether functions get sandboxes; when the mode
    asks for them and the machine cannot give them, ``missing`` says why."""

    def __init__(
        self,
        mode: str,
        node_name: str,
        stage: Path,
        uid_base: int = UID_BASE,
        abilities: Abilities | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"sandbox mode: expected auto, strict or off, got {mode!r}")
        self.mode = mode
        self.stage = stage
        self.uid_base = uid_base
        if mode == "off":
            abilities = Abilities(missing=["the node runs with --sandbox off"])
        self.abilities = abilities if abilities is not None else probe(node_name)
        self.active = self.abilities.complete
        self._uids: dict[str, int] = {}
        self._pools = 0
        self._live: dict[str, PoolSandbox] = {}  # by group
        self._retired: dict[str, Usage] = {}  # by function: totals of pools that stopped
        self._lock = threading.Lock()
        if self.active:
            stage.mkdir(parents=True, exist_ok=True, mode=0o700)

    @property
    def cgroups(self) -> cgroups.Cgroups | None:
        return self.abilities.cgroups

    def close(self) -> None:
        """The node stops (its pools have): remove its cgroups."""
        if self.cgroups is not None:
            self.cgroups.close()

    def warning(self) -> str | None:
        """What a node that runs functions unsandboxed says about it (None when it does not,
        or when it was told to with ``off``)."""
        if self.active or self.mode == "off":
            return None
        return "functions run without a sandbox: " + "; ".join(self.abilities.missing)

    def status(self) -> dict[str, Any]:
        """For ``/readyz``, ``/system/info``, ``edgefaas ls`` and the mesh's node records."""
        return {
            "mode": self.mode,
            "active": self.active,
            "cgroups": f"v{self.cgroups.version}" if self.cgroups else None,
            "missing": [] if self.active else list(self.abilities.missing),
            "warning": self.warning(),
        }

    def uid_for(self, function: str) -> int:
        """The function's uid: from its name, within the node's range, the same across
        versions; another function that hashes to it takes the next free one."""
        with self._lock:
            if function in self._uids:
                return self._uids[function]
            taken = set(self._uids.values()) | {0, os.getuid()}
            uid = self.uid_base + zlib.crc32(function.encode()) % UID_SPAN
            while uid in taken:
                uid = self.uid_base + (uid - self.uid_base + 1) % UID_SPAN
            self._uids[function] = uid
            return uid

    def for_pool(self, spec: FunctionSpec) -> PoolSandbox | None:
        """A new pool's sandbox; None to run it as today (``off``, or ``auto`` on a machine
        that cannot). ``strict`` on such a machine raises :class:`Unavailable` (503)."""
        if not self.active:
            if self.mode == "strict":
                raise Unavailable(
                    f"function {spec.name} cannot be sandboxed here (--sandbox strict): "
                    + "; ".join(self.abilities.missing)
                )
            return None
        with self._lock:
            self._pools += 1
            group = f"{spec.name}.{self._pools}"
        uid = self.uid_for(spec.name)
        plan = SandboxPlan(
            function=spec.name,
            uid=uid,
            gid=uid,
            root=str(spec.root),
            stage=str(self.stage),
            tmp_mb=spec.sandbox.tmp_mb,
            network=spec.sandbox.network,
            await_start=self.cgroups is not None,
        )
        sandbox = PoolSandbox(spec, plan, self.cgroups, group, self._retire)
        self._live[group] = sandbox
        return sandbox

    def _retire(self, sandbox: PoolSandbox, final: Usage) -> None:
        self._live.pop(sandbox.group, None)
        total = self._retired.setdefault(sandbox.spec.name, Usage())
        total.cpu_seconds += final.cpu_seconds
        total.throttled_seconds += final.throttled_seconds
        total.oom_kills += final.oom_kills

    def usage_by_function(self) -> dict[str, Usage]:
        """Each function's use, from its pools' cgroups: memory now, and CPU seconds, CPU
        throttled seconds and OOM kills since the node started (all its pools so far)."""
        totals = {
            name: Usage(0, u.cpu_seconds, u.throttled_seconds, u.oom_kills)
            for name, u in self._retired.items()
        }
        for sandbox in list(self._live.values()):
            usage = sandbox.usage()
            total = totals.setdefault(sandbox.spec.name, Usage())
            total.memory_bytes += usage.memory_bytes
            total.cpu_seconds += usage.cpu_seconds
            total.throttled_seconds += usage.throttled_seconds
            total.oom_kills += usage.oom_kills
        return totals


class PoolSandbox:
    """One pool's sandbox: the plan its zygote builds from, and its cgroups — ``GROUP`` (CPU
    and process cap), ``GROUP/zygote`` and ``GROUP/wN`` (memory, one per worker). The next
    worker's group is made ahead of need (a pool of ready cgroups, as SOCK keeps), so that
    placing a fresh worker is one write, not a group's creation."""

    def __init__(
        self,
        spec: FunctionSpec,
        plan: SandboxPlan,
        groups: cgroups.Cgroups | None,
        group: str,
        on_close: Callable[[PoolSandbox, Usage], None] | None = None,
    ) -> None:
        self.spec = spec
        self.plan = plan
        self.groups = groups
        self.group = group
        self.oom_kills = 0
        self._on_close = on_close
        self._spare: list[str] = []
        self._by_token: dict[int, str] = {}
        self._made = 0
        self._memory_bytes = spec.memory_mb * MiB

    def open(self) -> None:
        """Create the pool's groups (before its zygote starts)."""
        if self.groups is None:
            return
        sandbox = self.spec.sandbox
        self.groups.create(self.group, cpu_cores=sandbox.cpu, pids=sandbox.pids)
        self.groups.create(f"{self.group}/zygote", memory_bytes=self._memory_bytes)

    def place_zygote(self, pid: int) -> None:
        if self.groups is not None:
            self.groups.add(f"{self.group}/zygote", pid)

    def place_worker(self, token: int, pid: int) -> None:
        """Put a freshly forked worker (``pid`` as this node sees it) in a group of its own,
        capped at ``memory_mb``, before it runs ``init``."""
        if self.groups is not None:
            group = self._spare.pop() if self._spare else self._new_worker_group(self.groups)
            self._by_token[token] = group
            self.groups.add(group, pid)

    def prepare_spare(self) -> None:
        """Make the next worker's group now, off its start's path."""
        if self.groups is not None and not self._spare:
            self._spare.append(self._new_worker_group(self.groups))

    def _new_worker_group(self, groups: cgroups.Cgroups) -> str:
        self._made += 1
        group = f"{self.group}/w{self._made}"
        groups.create(group, memory_bytes=self._memory_bytes)
        return group

    def worker_ended(self, token: int) -> bool:
        """The worker is gone: True if the kernel killed it for its memory. Processes it left
        behind are killed, and its group removed."""
        group = self._by_token.pop(token, None)
        if self.groups is None or group is None:
            return False
        killed = self.groups.oom_kills(group) > 0
        self.oom_kills += killed
        cgroups.kill_all(self.groups, group)
        if not self.groups.remove(group):
            log.warning("function %s: cgroup %s could not be removed", self.spec.name, group)
        return killed

    def usage(self) -> Usage:
        if self.groups is None:
            return Usage()
        return Usage(
            memory_bytes=self.groups.memory_bytes(self.group),
            cpu_seconds=self.groups.cpu_seconds(self.group),
            throttled_seconds=self.groups.throttled_seconds(self.group),
            oom_kills=self.oom_kills,
        )

    def close(self) -> None:
        """The pool stopped: kill what is left in its groups and remove them."""
        if self._on_close is not None:
            self._on_close(self, self.usage())
            self._on_close = None
        if self.groups is None:
            return
        cgroups.kill_all(self.groups, self.group)
        if not self.groups.remove(self.group):
            log.warning("function %s: cgroup %s could not be removed", self.spec.name, self.group)
