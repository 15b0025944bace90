"""Bundles: a function's code and manifest entry as one deterministic, signed archive.

A bundle is a gzip'd tar held as bytes and addressed by the sha256 of those bytes::

    function.json      the function's spec, every path relative to files/ (format 1)
    files/...          the function's folder (file handlers), its declared files (module
                       handlers), or callable.pkl (a cloudpickled callable)

Building is deterministic: members are sorted and carry no times, owners or host modes, and
the gzip header has no name or time, so the same folder gives the same bytes and digest on
every machine with the same zlib. A node calls :func:`unpack_bundle`, which checks the
digest and the signature before it parses anything, then checks every archive member before
it extracts any, and moves the unpacked folder into place in one rename.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import stat
import tarfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from registry import defaults
from registry.asyncspec import ASYNC_KEYS
from registry.errors import BundleError
from registry.signing import SigningKey
from registry.specs import (
    SPILL_KEYS,
    AsyncSpec,
    FunctionSpec,
    HandlerRef,
    HttpTrigger,
    PoolSpec,
    SpillSpec,
)

FORMAT = 1
FUNCTION_JSON = "function.json"
FILES_DIR = "files"
CALLABLE_FILE = "callable.pkl"
COMPRESS_LEVEL = 9
_NAME = re.compile(r"[a-z][a-z0-9_-]{0,62}")  # the manifest's rule for function names
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_POOL_DEFAULTS: dict[str, float] = {
    "min": defaults.POOL_MIN,
    "max": defaults.POOL_MAX,
    "concurrency": defaults.POOL_CONCURRENCY,
    "queue_max": defaults.POOL_QUEUE_MAX,
    "max_queue_wait_ms": defaults.POOL_MAX_QUEUE_WAIT_MS,
    "idle_timeout_s": defaults.POOL_IDLE_TIMEOUT_S,
}


@dataclass(frozen=True, slots=True)
class Bundle:
    """A built bundle: its function's name, the sha256 hex of ``data``, and ``data``."""

    name: str
    digest: str
    data: bytes = field(repr=False)

    def sign(self, key: SigningKey) -> SignedBundle:
        return SignedBundle(
            self.name, self.digest, self.data, key.sign_digest(self.digest), key.key_id
        )


@dataclass(frozen=True, slots=True)
class SignedBundle(Bundle):
    """A bundle with the base64 Ed25519 signature of its digest and the signer's key id."""

    signature: str
    key_id: str


# -- building --------------------------------------------------------------------------------


def build_bundle(spec: FunctionSpec) -> Bundle:
    """Archive ``spec``'s function. A file handler (or a pickle handler, as unpacked) takes
    every file under ``spec.root`` except ``__pycache__``, ``*.pyc`` and names starting with
    "."; a module handler takes only its declared files (its module must be importable on
    the node). Declared files always travel and must lie inside ``spec.root``."""
    root = spec.root.resolve()
    try:
        target = spec.handler.target
        if spec.handler.kind != "module":
            target = _relative(Path(target), root, "handler file")
        files = [_relative(path, root, "file") for path in spec.files]
        sources = _collect(spec, root)
        document = _document(spec, target, files)
        return _pack(spec.name, document, sources, root)
    except OSError as exc:
        raise BundleError(
            f"function {spec.name}: cannot read {exc.filename}: {exc.strerror}"
        ) from exc


def build_callable_bundle(
    fn: Callable[[Any], Any],
    name: str,
    *,
    pool: PoolSpec | Mapping[str, float] | None = None,
    timeout_s: float = defaults.TIMEOUT_S,
    memory_mb: int = defaults.MEMORY_MB,
    env: Mapping[str, str] | None = None,
    triggers: Iterable[HttpTrigger | str] = (),
    spill: SpillSpec | Mapping[str, Any] | None = None,
    async_policy: AsyncSpec | Mapping[str, Any] | None = None,
) -> Bundle:
    """Bundle ``fn`` cloudpickled as ``files/callable.pkl`` (handler kind "pickle"; the
    handler's attr is ``fn.__name__``, for messages only). ``pool``, ``spill`` and
    ``async_policy`` (the manifest's ``async``) may each be a spec (:class:`PoolSpec`,
    :class:`SpillSpec`, :class:`AsyncSpec`) or a mapping of the settings to change from the
    defaults, e.g. ``spill={"to": []}`` to pin the function to its node or
    ``async_policy={"retries": 0}``; a trigger given as a path accepts the default methods
    and is not async (pass ``HttpTrigger(path, methods, is_async=True)`` for one that is)."""
    import cloudpickle  # only deploys from Python need it

    spec = FunctionSpec(
        name=_check_name(name),
        handler=HandlerRef("pickle", CALLABLE_FILE, getattr(fn, "__name__", "")),
        root=Path(),
        triggers=tuple(_trigger(t) for t in triggers),
        pool=_pool(pool),
        timeout_s=_timeout(timeout_s),
        memory_mb=_memory(memory_mb),
        env=_env(env),
        spill=_spill(spill),
        async_policy=_async_policy(async_policy),
    )
    try:
        pickled: bytes = cloudpickle.dumps(fn)
    except Exception as exc:
        raise BundleError(f"function {name}: cannot pickle {fn!r}: {exc}") from exc
    return _pack(name, _document(spec, CALLABLE_FILE, []), {CALLABLE_FILE: pickled}, Path())


def _relative(path: Path, root: Path, what: str) -> str:
    """``path`` relative to ``root`` (its folder resolved, a final link kept as a link)."""
    real = path.parent.resolve() / path.name
    if not real.is_relative_to(root):
        raise BundleError(
            f"{what} {path} is outside the function's folder {root}: files must be inside "
            "the function's folder to travel in its bundle"
        )
    return real.relative_to(root).as_posix()


def _skipped(name: str) -> bool:
    return name.startswith(".") or name == "__pycache__" or name.endswith(".pyc")


def _collect(spec: FunctionSpec, root: Path) -> dict[str, Path]:
    """The files to archive, by path relative to ``root``."""
    sources: dict[str, Path] = {}
    if spec.handler.kind != "module":
        _add_tree(root, root, sources)
        handler = Path(spec.handler.target)
        sources[_relative(handler, root, "handler file")] = handler
    for path in spec.files:
        rel = _relative(path, root, "file")
        if path.is_dir() and not path.is_symlink():
            _add_tree(path, root, sources)
        else:
            sources[rel] = path
    return sources


def _add_tree(folder: Path, root: Path, sources: dict[str, Path]) -> None:
    with os.scandir(folder) as scan:
        entries = sorted(scan, key=lambda entry: entry.name)
    for entry in entries:
        if _skipped(entry.name):
            continue
        path = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            _add_tree(path, root, sources)
        else:
            sources[_relative(path, root, "file")] = path


def _document(spec: FunctionSpec, target: str, files: list[str]) -> bytes:
    document = spec.to_dict()
    del document["root"]
    document["format"] = FORMAT
    document["handler"]["target"] = target
    document["files"] = files
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


class _CappedBuffer:
    """Collects the gzip stream and stops it at the bundle size limit."""

    def __init__(self, function: str, limit: int) -> None:
        self.function = function
        self.limit = limit
        self.buffer = io.BytesIO()

    def write(self, data: bytes) -> int:
        if self.buffer.tell() + len(data) > self.limit:
            raise BundleError(
                f"function {self.function}: its bundle would be larger than the "
                f"{self.limit}-byte limit"
            )
        return self.buffer.write(data)

    def flush(self) -> None:
        pass


def _pack(name: str, document: bytes, sources: Mapping[str, Path | bytes], root: Path) -> Bundle:
    if len(sources) + 1 > defaults.MAX_BUNDLE_MEMBERS:
        raise BundleError(
            f"function {name}: {len(sources)} files are more than a bundle may hold "
            f"({defaults.MAX_BUNDLE_MEMBERS - 1}); keep the handler in a folder of its own"
        )
    out = _CappedBuffer(name, defaults.MAX_BUNDLE_BYTES)
    total = 0
    with (
        gzip.GzipFile("", "wb", COMPRESS_LEVEL, out, mtime=0) as packed,
        tarfile.open(fileobj=packed, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        _add_member(tar, FUNCTION_JSON, document, root)
        for rel in sorted(sources):
            total += _add_member(tar, f"{FILES_DIR}/{rel}", sources[rel], root)
            if total > defaults.MAX_UNPACKED_BYTES:
                raise BundleError(
                    f"function {name}: its files add up to more than "
                    f"{defaults.MAX_UNPACKED_BYTES} bytes; keep the handler in a folder of its own"
                )
    data = out.buffer.getvalue()
    return Bundle(name, hashlib.sha256(data).hexdigest(), data)


def _add_member(tar: tarfile.TarFile, arcname: str, source: Path | bytes, root: Path) -> int:
    """Add one normalised member; return its size."""
    info = tarfile.TarInfo(arcname)
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    info.mode = 0o644
    if isinstance(source, bytes):
        data = source
    else:
        mode = source.lstat().st_mode
        if stat.S_ISLNK(mode):
            info.type, info.mode = tarfile.SYMTYPE, 0o777
            info.linkname = _link_target(source, root)
            tar.addfile(info)
            return 0
        if not stat.S_ISREG(mode):
            raise BundleError(f"{source} is not a regular file, folder or link")
        data = source.read_bytes()
        info.mode = 0o755 if mode & stat.S_IXUSR else 0o644
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))
    return len(data)


def _link_target(link: Path, root: Path) -> str:
    """The link's target relative to the link's folder; it must stay inside ``root``."""
    try:
        target = link.resolve()
    except (OSError, RuntimeError) as exc:  # a loop of links
        raise BundleError(f"symlink {link} cannot be followed: {exc}") from exc
    if not target.is_relative_to(root):
        raise BundleError(
            f"symlink {link} points outside the function's folder {root} (to "
            f"{os.readlink(link)}): files must be inside the function's folder to travel in "
            "its bundle"
        )
    return os.path.relpath(target, link.parent)


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        rule = "lower case letters, digits, _ and -, starting with a letter, at most 63"
        raise BundleError(f"invalid function name {name!r}: expected {rule}")
    return name


def _trigger(trigger: HttpTrigger | str) -> HttpTrigger:
    if isinstance(trigger, str):
        trigger = HttpTrigger(trigger, defaults.DEFAULT_TRIGGER_METHODS)
    if not trigger.path.startswith("/") or not trigger.methods:
        raise BundleError(f"invalid trigger {trigger}: expected a path starting with / and methods")
    return trigger


def _pool(pool: PoolSpec | Mapping[str, float] | None) -> PoolSpec:
    if isinstance(pool, PoolSpec):
        return pool
    given = dict(pool or {})
    for key in given:
        if key not in _POOL_DEFAULTS:
            known = ", ".join(_POOL_DEFAULTS)
            raise BundleError(f"unknown pool setting {key!r}; expected one of {known}")
    values = {**_POOL_DEFAULTS, **given}
    expected = "expected numbers with 0 ≤ min ≤ max, max ≥ 1, concurrency ≥ 1"
    try:
        pool = PoolSpec(
            min=int(values["min"]),
            max=int(values["max"]),
            concurrency=int(values["concurrency"]),
            queue_max=int(values["queue_max"]),
            max_queue_wait_ms=int(values["max_queue_wait_ms"]),
            idle_timeout_s=float(values["idle_timeout_s"]),
        )
    except (TypeError, ValueError) as exc:
        raise BundleError(f"invalid pool {given}: {expected}") from exc
    if pool.min < 0 or pool.max < max(pool.min, 1) or pool.concurrency < 1:
        raise BundleError(f"invalid pool {given}: {expected}")
    return pool


def _spill(spill: SpillSpec | Mapping[str, Any] | None) -> SpillSpec:
    known = ", ".join(SPILL_KEYS)
    if isinstance(spill, SpillSpec):
        return spill
    if spill is not None and not isinstance(spill, Mapping):
        raise BundleError(f"invalid spill {spill!r}: expected a SpillSpec or a mapping of {known}")
    given = dict(spill or {})
    for key in given:
        if key not in SPILL_KEYS:
            raise BundleError(f"unknown spill setting {key!r}; expected one of {known}")
    try:
        return SpillSpec(**given)
    except (TypeError, ValueError) as exc:
        raise BundleError(f"invalid {exc}") from exc


def _async_policy(policy: AsyncSpec | Mapping[str, Any] | None) -> AsyncSpec:
    known = ", ".join(ASYNC_KEYS)
    if isinstance(policy, AsyncSpec):
        return policy
    if policy is not None and not isinstance(policy, Mapping):
        raise BundleError(
            f"invalid async_policy {policy!r}: expected an AsyncSpec or a mapping of {known}"
        )
    given = dict(policy or {})
    for key in given:
        if key not in ASYNC_KEYS:
            raise BundleError(f"unknown async setting {key!r}; expected one of {known}")
    try:
        return AsyncSpec(**given)
    except (TypeError, ValueError) as exc:
        raise BundleError(f"invalid {exc}") from exc


def _timeout(timeout_s: float) -> float:
    if not 0 < timeout_s <= defaults.MAX_TIMEOUT_S:
        raise BundleError(
            f"invalid timeout_s {timeout_s!r}: expected > 0, ≤ {defaults.MAX_TIMEOUT_S}"
        )
    return float(timeout_s)


def _memory(memory_mb: int) -> int:
    if memory_mb < defaults.MIN_MEMORY_MB:
        raise BundleError(f"invalid memory_mb {memory_mb!r}: expected ≥ {defaults.MIN_MEMORY_MB}")
    return int(memory_mb)


def _env(env: Mapping[str, str] | None) -> dict[str, str]:
    for key, value in (env or {}).items():
        if not _ENV_KEY.fullmatch(key) or not isinstance(value, str):
            raise BundleError(f"invalid env entry {key!r}: expected a variable name and a string")
    return dict(env or {})


# -- verifying and unpacking -------------------------------------------------------------------
