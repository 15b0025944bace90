"""Building a function's sandbox inside its zygote, as an ordered list of small steps. The
order is the security argument, so it is kept here, in one place:

1. **Namespaces** (``unshare``): mount, PID, IPC, UTS — and network for ``network: none``.
   The PID namespace takes effect for children only, so the process then **forks**: the
   parent stays outside as the *keeper* (the node's handle on the zygote; it waits and
   passes on how the zygote ended), the child is PID 1 of the new namespace and becomes the
   zygote. Whatever it forks is inside; when it dies the kernel kills every process there.
2. **Lifeline**: the zygote dies with its keeper, the keeper with the gateway (asked for
   again after the uid changes in step 5, which clears it).
3. **Mounts, while still root**: private propagation (nothing leaks back to the host); a
   fresh tmpfs as the new root; into it, read-only binds of the host's system folders, of
   Python and the packages on the node's ``PYTHONPATH``, and of the function's own folder;
   a minimal ``/dev``; a fresh ``/proc`` (this namespace's processes only); the parts of
   ``/sys`` that describe CPUs and cgroups; the function's **``/tmp``** (a tmpfs capped at
   ``tmp_mb``; ``/dev/shm`` links to it), with any of those folders that lie in the node's
   ``/tmp`` bound inside it. The function's folder appears at ``/var/task``
   (``context.root``), whatever its path on the node. Then ``pivot_root`` and detach the
   old root: the node's data dir, keys, tokens, Redis socket, ``/root``, ``/home``,
   ``/var`` and every other function's folder are no longer reachable by any path. Only
   then everything is made **read-only** (``mount_setattr``, recursive), and ``/tmp`` alone
   writable again.
4. **Name and network**: the host name is the function's; with ``network: none`` the new
   network namespace gets its loopback up, and nothing else.
5. **Privileges, last of the set-up that needs them**: ``no_new_privs``; the capability
   bounding set emptied; supplementary groups dropped; gid then uid set to the function's
   (never 0, never the node's) — which clears every capability.
6. **seccomp**, last of all, because the set-up itself uses calls it denies (``mount``,
   ``unshare``, ``pivot_root``).

A step that fails raises :class:`SandboxFailed` naming it; nothing needs undoing, because
everything a step changed belongs to the namespaces of a process that then exits with the
failure (the zygote reports it as its load failure). The cgroups, which outlive processes,
are the node's and are undone there (:mod:`.cgroups`).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
from collections.abc import Callable
from typing import NoReturn

from runtime.sandbox import kernel, seccomp
from runtime.sandbox.plan import FUNCTION_ROOT, SandboxPlan

TMP = "/tmp"  # noqa: S108 (inside the sandbox: the function's own tmpfs)
DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")
DEV_LINKS = {
    "fd": "/proc/self/fd",
    "stdin": "/proc/self/fd/0",
    "stdout": "/proc/self/fd/1",
    "stderr": "/proc/self/fd/2",
    "ptmx": "pts/ptmx",
    "shm": TMP,
}
SYS_PATHS = ("/sys/devices/system/cpu", "/sys/devices/system/node", "/sys/fs/cgroup")
OLD_ROOT = ".old-root"


class SandboxFailed(Exception):
    """A step of the sandbox could not be taken; the message names it and the reason."""


def enter(plan: SandboxPlan, close_in_keeper: Callable[[], None]) -> None:
    """Build the sandbox and return inside it, as the zygote (PID 1 of its namespace). The
    calling process becomes the keeper and never returns; ``close_in_keeper`` closes what
    it must not hold (the control socket)."""
    _step("namespaces", _unshare, plan)
    lifeline_r, lifeline_w = os.pipe()
    child = os.fork()
    if child:
        os.close(lifeline_r)
        close_in_keeper()
        _keep(child)
    os.close(lifeline_w)
    _step("lifeline", _die_with_keeper, lifeline_r)
    for name, step in _MOUNT_STEPS:
        _step(name, step, plan)
    _step("host name", kernel.sethostname, plan.function[:64])
    if plan.network == "none":
        _step("loopback", kernel.loopback_up)
    _step("working folder", os.chdir, FUNCTION_ROOT)
    _step("privileges", _drop_privileges, plan)
    # A change of uid clears the parent-death signal: ask for it again, as the function.
    _step("lifeline as the function", _die_with_keeper, lifeline_r)
    os.close(lifeline_r)
    _step("seccomp", seccomp.load_filter)
    os.environ.update(HOME=TMP, TMPDIR=TMP)


def _step(name: str, action: Callable[..., object], *args: object) -> None:
    try:
        action(*args)
    except OSError as exc:
        raise SandboxFailed(f"sandbox step '{name}' failed: {exc.strerror or exc}") from None


# ---------------------------------------------------------------------- 1, 2: processes


def _unshare(plan: SandboxPlan) -> None:
    flags = kernel.CLONE_NEWNS | kernel.CLONE_NEWPID | kernel.CLONE_NEWIPC | kernel.CLONE_NEWUTS
    if plan.network == "none":
        flags |= kernel.CLONE_NEWNET
    kernel.unshare(flags)


def _keep(child: int) -> NoReturn:
    """The keeper: wait for the zygote and end as it ended."""
    while True:
        try:
            _, status = os.waitpid(child, 0)
            break
        except InterruptedError:
            continue
    sys.stdout.flush()
    sys.stderr.flush()
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1)


def _die_with_keeper(lifeline: int) -> None:
    """SIGKILL when the keeper dies; exit now if it already has (its end of the pipe is
    closed: the pipe reads as ready). PID 1 of a namespace sees no parent pid to compare."""
    kernel.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    ready, _, _ = select.select([lifeline], [], [], 0)
    if ready:
        os._exit(1)


# ---------------------------------------------------------------------- 3: mounts


def _private(plan: SandboxPlan) -> None:
    kernel.mount("none", "/", "", kernel.MS_REC | kernel.MS_PRIVATE)


def _new_root(plan: SandboxPlan) -> None:
    kernel.mount("tmpfs", plan.stage, "tmpfs", kernel.MS_NOSUID | kernel.MS_NODEV, "mode=0755")


def _bind_visible(plan: SandboxPlan) -> None:
    for path in plan.visible_paths():
        if _under(path, TMP):
            continue  # bound into the sandbox's own /tmp, once that exists (_writable_tmp)
        _bind_read_only(plan, path)
    kernel.mount(plan.root, _in_root(plan, FUNCTION_ROOT), "", kernel.MS_BIND | kernel.MS_REC)


def _bind_read_only(plan: SandboxPlan, path: str) -> None:
    """``path`` at the same place in the new root (made read-only with the rest, later)."""
    if os.path.islink(path):
        _in_root(plan, os.path.dirname(path))
        os.symlink(os.readlink(path), plan.stage + path)
    elif os.path.isdir(path):
        kernel.mount(path, _in_root(plan, path), "", kernel.MS_BIND | kernel.MS_REC)


def _dev(plan: SandboxPlan) -> None:
    dev = _in_root(plan, "/dev")
    kernel.mount("tmpfs", dev, "tmpfs", kernel.MS_NOSUID, "mode=0755,size=64k")
    for node in DEV_NODES:
        if os.path.exists(f"/dev/{node}"):
            with open(f"{dev}/{node}", "w"):
                pass
            kernel.mount(f"/dev/{node}", f"{dev}/{node}", "", kernel.MS_BIND)
    for name, target in DEV_LINKS.items():
        os.symlink(target, f"{dev}/{name}")
    os.mkdir(f"{dev}/pts")


def _proc(plan: SandboxPlan) -> None:
    flags = kernel.MS_NOSUID | kernel.MS_NODEV | kernel.MS_NOEXEC
    kernel.mount("proc", _in_root(plan, "/proc"), "proc", flags)


def _sys(plan: SandboxPlan) -> None:
    """Only what programs read of the machine: its CPUs (thread pools size themselves from
    them) and NUMA nodes, and the cgroups (a function may read its limits). Not the host's
    network interfaces, devices or kernel settings."""
    for path in SYS_PATHS:
        if os.path.isdir(path):
            kernel.mount(path, _in_root(plan, path), "", kernel.MS_BIND | kernel.MS_REC)


def _writable_tmp(plan: SandboxPlan) -> None:
    """The function's ``/tmp`` (``/dev/shm`` is a link to it: one cap for both), with the
    folders it needs from the node's ``/tmp`` (Python packages there) bound inside it."""
    flags = kernel.MS_NOSUID | kernel.MS_NODEV
    tmp = _in_root(plan, TMP)
    kernel.mount("tmpfs", tmp, "tmpfs", flags, f"mode=1777,size={plan.tmp_mb}m")
    for path in plan.visible_paths():
        if _under(path, TMP):
            _bind_read_only(plan, path)


def _pivot(plan: SandboxPlan) -> None:
    os.mkdir(f"{plan.stage}/{OLD_ROOT}")
    kernel.pivot_root(plan.stage, f"{plan.stage}/{OLD_ROOT}")
    os.chdir("/")
    kernel.umount(f"/{OLD_ROOT}", kernel.MNT_DETACH)
    os.rmdir(f"/{OLD_ROOT}")


def _read_only(plan: SandboxPlan) -> None:
    """Everything read-only and without set-uid programs; then ``/tmp`` alone (not what is
    bound below it) writable again."""
    kernel.set_mount_attributes("/", kernel.MOUNT_ATTR_RDONLY | kernel.MOUNT_ATTR_NOSUID)
    kernel.set_mount_attributes(TMP, 0, kernel.MOUNT_ATTR_RDONLY, recursive=False)


_MOUNT_STEPS: list[tuple[str, Callable[[SandboxPlan], None]]] = [
    ("private mounts", _private),
    ("new root", _new_root),
    ("visible folders", _bind_visible),
    ("/dev", _dev),
    ("/proc", _proc),
    ("/sys", _sys),
    ("the function's /tmp", _writable_tmp),
    ("pivot_root", _pivot),
    ("read-only root", _read_only),
]


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder + "/")


def _in_root(plan: SandboxPlan, path: str) -> str:
    """``path`` inside the new root, created as a folder (with its parents)."""
    target = plan.stage + path
    os.makedirs(target, mode=0o755, exist_ok=True)
    return target


# ---------------------------------------------------------------------- 5: privileges


def _drop_privileges(plan: SandboxPlan) -> None:
    if plan.uid == 0 or plan.gid == 0:
        raise OSError(0, "a function never runs as uid or gid 0")
    kernel.prctl(kernel.PR_SET_NO_NEW_PRIVS, 1)
    for capability in range(kernel.last_capability() + 1):
        with contextlib.suppress(OSError):  # capabilities this kernel does not know
            kernel.prctl(kernel.PR_CAPBSET_DROP, capability)
    os.setgroups([])
    os.setresgid(plan.gid, plan.gid, plan.gid)
    os.setresuid(plan.uid, plan.uid, plan.uid)
