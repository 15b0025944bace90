"""What this machine lets a node build sandboxes from: root, namespaces, a cgroup hierarchy
with the memory, cpu and pids controllers, libseccomp. Read once at start; each thing that
is missing is said in words, for the start-up warning, ``/readyz`` and ``/system/info``.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

from runtime.sandbox import cgroups, seccomp
from runtime.sandbox.kernel import _SYSCALLS

MOUNTINFO = Path("/proc/self/mountinfo")
OWN_CGROUP = Path("/proc/self/cgroup")


@dataclass
class Abilities:
    """What the machine allows; ``missing`` says what stands in the way of a sandbox."""

    cgroups: cgroups.Cgroups | None = None
    missing: list[str] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.missing


def probe(node_name: str) -> Abilities:
    abilities = Abilities()
    if os.geteuid() != 0:
        abilities.missing.append(
            "the node does not run as root: functions cannot get uids, mounts and cgroups "
            "of their own (start the node as root to sandbox them)"
        )
        return abilities
    if platform.machine() not in _SYSCALLS:
        abilities.missing.append(f"no sandbox support for the {platform.machine()} architecture")
    try:
        seccomp.library()
    except seccomp.SeccompUnavailable as exc:
        abilities.missing.append(exc.strerror or str(exc))
    try:
        abilities.cgroups = find_cgroups(node_name)
    except OSError as exc:
        abilities.missing.append(f"no usable cgroups: {exc.strerror or exc}")
    return abilities


def find_cgroups(node_name: str) -> cgroups.Cgroups:
    """The node's base group under its own, in v1 when the machine mounts the memory, cpu,
    cpuacct and pids controllers there, else in v2 when it has them."""
    mounts = _cgroup_mounts()
    own = _own_groups()
    prefix = f"edgefaas-{node_name}"
    base_name = f"{prefix}.{os.getpid()}"  # two nodes of one name on a machine stay apart
    v1 = {c: mounts[c] for c in cgroups.V1_CONTROLLERS if c in mounts}
    if len(v1) == len(cgroups.V1_CONTROLLERS):
        bases = {c: v1[c] / own.get(c, "/").lstrip("/") / base_name for c in v1}
        for base in bases.values():
            cgroups.clear_stale(base.parent, "edgefaas-")
            base.mkdir(parents=True, exist_ok=True)
        return cgroups.CgroupsV1(bases)
    unified = mounts.get("")
    if unified is not None:
        found = (unified / "cgroup.controllers").read_text(encoding="ascii").split()
        lacking = [c for c in cgroups.V2_CONTROLLERS if c not in found]
        if lacking:
            raise OSError(0, f"cgroup v2 at {unified} lacks the {', '.join(lacking)} controller")
        own_folder = unified / own.get("", "/").lstrip("/")
        driver = cgroups.CgroupsV2(own_folder / base_name)
        try:
            driver.enable_controllers(own_folder)
        except OSError as exc:
            raise OSError(
                0,
                f"cgroup v2: cannot pass the controllers on below the node's group "
                f"{own_folder} ({exc.strerror}); run the node in a group of its own with "
                "the controllers delegated (systemd: Delegate=yes)",
            ) from None
        cgroups.clear_stale(own_folder, "edgefaas-")
        driver.base.mkdir(exist_ok=True)
        return driver
    have = ", ".join(sorted(v1)) or "none"
    raise OSError(0, f"neither cgroup v2 nor v1's memory, cpu, cpuacct and pids (have: {have})")


def _cgroup_mounts() -> dict[str, Path]:
    """Controller → mount point of its v1 hierarchy; ``""`` → the v2 mount point."""
    found: dict[str, Path] = {}
    for line in MOUNTINFO.read_text(encoding="utf-8").splitlines():
        fields = line.split()
        separator = fields.index("-")
        fstype, options = fields[separator + 1], fields[separator + 3]
        mount_point = Path(fields[4])
        if fstype == "cgroup2":
            found.setdefault("", mount_point)
        elif fstype == "cgroup":
            for option in options.split(","):
                if option in cgroups.V1_CONTROLLERS:
                    found.setdefault(option, mount_point)
    return found


def _own_groups() -> dict[str, str]:
    """Controller → this process's group path (``""`` for v2)."""
    groups: dict[str, str] = {}
    for line in OWN_CGROUP.read_text(encoding="ascii").splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(","):
            groups[controller] = path
    return groups
