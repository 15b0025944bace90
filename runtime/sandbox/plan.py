"""What one function's sandbox is made of, decided by the node and carried to the zygote in
its load message: the uid it runs as, the folders it sees, its ``/tmp``, its network.

The plan is plain data (JSON across the process boundary); :mod:`.steps` builds the sandbox
from it inside the zygote, and the node's cgroups (:mod:`.cgroups`) hold its limits.
"""

from __future__ import annotations

import contextlib
import os
import site
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# The host's system folders a function sees, read-only (those that exist; links are kept
# as links, as /lib → usr/lib on a merged /usr).
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt")
PACKAGE_ROOT = Path(__file__).resolve().parents[2]
# Where the function's folder is inside its sandbox (where AWS Lambda keeps a function's
# code): one path whatever the node's data dir, which may itself lie below /tmp.
FUNCTION_ROOT = "/var/task"


def python_paths() -> tuple[str, ...]:
    """What a zygote imports from: the interpreter's installation, the virtual environment
    and their site-packages, whole; and of each folder on the zygote's ``PYTHONPATH``
    (edgefaas' own root first), only its packages — never the rest of a checkout, which may
    hold a local mesh's keys."""
    paths = {sys.base_prefix, sys.prefix, *site.getsitepackages()}
    entries = [str(PACKAGE_ROOT), *os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    for entry in filter(None, entries):
        with contextlib.suppress(OSError):
            paths.update(
                str(child) for child in Path(entry).iterdir() if (child / "__init__.py").is_file()
            )
    return tuple(sorted(p for p in paths if os.path.isdir(p)))


@dataclass(frozen=True)
class SandboxPlan:
    """One function's sandbox. ``stage`` is an empty folder of the node's where the new root
    is assembled (a mount point only inside the sandbox's own mount namespace)."""

    function: str
    uid: int
    gid: int
    root: str  # the function's folder on the node, read-only at FUNCTION_ROOT inside
    stage: str
    tmp_mb: int
    network: str  # "host" or "none"
    await_start: bool  # workers wait for the node to place them in their cgroup
    system_paths: tuple[str, ...] = SYSTEM_PATHS
    python_paths: tuple[str, ...] = field(default_factory=python_paths)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SandboxPlan:
        data = dict(data)
        data["system_paths"] = tuple(data["system_paths"])
        data["python_paths"] = tuple(data["python_paths"])
        return cls(**data)

    def visible_paths(self) -> list[str]:
        """Every host folder bound into the sandbox, outermost first, without those inside
        another (their parent's bind carries them)."""
        wanted = [*self.system_paths, *self.python_paths]
        kept: list[str] = []
        for path in sorted({os.path.normpath(p) for p in wanted}, key=lambda p: (len(p), p)):
            if not any(path == k or path.startswith(k.rstrip("/") + "/") for k in kept):
                kept.append(path)
        return kept
