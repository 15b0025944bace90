"""A seccomp filter that denies the system calls a function never needs, built by libseccomp
(the C library Debian ships as ``libseccomp2``; this is a binding of the five functions it
takes, through ctypes).

Denied calls fail with ``EPERM``, so a function sees an ordinary error, not a kill; calls of
another architecture's ABI (32-bit ``int 0x80`` on x86-64) kill the process, libseccomp's
default for a foreign architecture. ``clone3`` answers ``ENOSYS``, so that the C library
falls back to ``clone``, whose namespace flags the filter can see and refuses.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
from typing import Any

from runtime.sandbox.kernel import NAMESPACE_FLAGS

# Changing the system (mounts, modules, time, swap, reboot), leaving or making namespaces,
# reaching into other processes or the kernel (ptrace, bpf, perf, keys, kexec).
DENIED = (
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "unshare",
    "setns",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "open_tree",
    "move_mount",
    "mount_setattr",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "bpf",
    "keyctl",
    "add_key",
    "request_key",
    "perf_event_open",
    "userfaultfd",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "open_by_handle_at",
    "name_to_handle_at",
    "swapon",
    "swapoff",
    "reboot",
    "acct",
    "quotactl",
    "syslog",
    "settimeofday",
    "clock_settime",
    "clock_adjtime",
    "adjtimex",
    "iopl",
    "ioperm",
    "vhangup",
    "lookup_dcookie",
)

_ACT_ALLOW = 0x7FFF0000
_ACT_ERRNO = 0x00050000
_CMP_MASKED_EQ = 7


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


class SeccompUnavailable(OSError):
    """libseccomp is not installed (Debian: ``apt-get install libseccomp2``)."""


def library() -> Any:
    """libseccomp, loaded; raises :class:`SeccompUnavailable` when it is missing."""
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as exc:
        raise SeccompUnavailable(
            0, f"libseccomp is missing ({exc}); install it with: apt-get install libseccomp2"
        ) from None
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    ]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    return lib


def load_filter() -> None:
    """Install the filter on this process (and every process it forks from now on). Needs
    ``no_new_privs`` or CAP_SYS_ADMIN."""
    lib = library()
    ctx = lib.seccomp_init(_ACT_ALLOW)
    if not ctx:
        raise OSError(errno.ENOMEM, "seccomp_init failed")
    try:
        for name in DENIED:
            _deny(lib, ctx, name, errno.EPERM)
        _deny(lib, ctx, "clone3", errno.ENOSYS)
        for bit in range(64):  # clone with any namespace flag: one rule per flag
            flag = 1 << bit
            if NAMESPACE_FLAGS & flag:
                _deny(lib, ctx, "clone", errno.EPERM, _ArgCmp(0, _CMP_MASKED_EQ, flag, flag))
        _ok(lib.seccomp_load(ctx), "seccomp_load")
    finally:
        lib.seccomp_release(ctx)


def _deny(lib: Any, ctx: int, name: str, err: int, *conditions: _ArgCmp) -> None:
    number = lib.seccomp_syscall_resolve_name(name.encode())
    if number < 0:  # not a system call of this architecture (e.g. iopl on arm64)
        return
    array = (_ArgCmp * len(conditions))(*conditions) if conditions else None
    _ok(
        lib.seccomp_rule_add_array(ctx, _ACT_ERRNO | err, number, len(conditions), array),
        f"seccomp_rule_add {name}",
    )


def _ok(result: int, what: str) -> None:
    if result < 0:
        raise OSError(-result, f"{what}: {errno.errorcode.get(-result, str(-result))}")
