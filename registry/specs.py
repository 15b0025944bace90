"""Typed, validated function specifications: what ``functions.yaml`` declares.

Specs are immutable. They cross process boundaries (gateway → zygote) as plain dicts through
:meth:`FunctionSpec.to_dict` / :meth:`FunctionSpec.from_dict`. This module imports nothing
heavy because the zygote imports it before loading user code.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from registry import defaults
from registry.asyncspec import ASYNC_KEYS, async_fault
from registry.sandboxspec import SandboxSpec

HandlerKind = Literal["file", "module", "pickle"]
SPILL_KEYS = ("to", "max_local_wait_ms", "cloud_compatible")  # the fields of SpillSpec


@dataclass(frozen=True, slots=True)
class HandlerRef:
    """Where a handler lives: a Python file (absolute path), an importable module name, or
    a cloudpickled callable (absolute path of its file inside an unpacked bundle)."""

    kind: HandlerKind
    target: str
    attr: str

    def __str__(self) -> str:
        return f"{self.target}:{self.attr}"


@dataclass(frozen=True, slots=True)
class HttpTrigger:
    """An extra URL path that reaches the function, with the HTTP methods it accepts.
    ``is_async`` (``async: true`` in the manifest) means a call there is queued and answered
    202 at once, as ``POST /async-function/{name}`` is, rather than run while the caller
    waits."""

    path: str
    methods: tuple[str, ...]
    is_async: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.is_async, bool):
            raise TypeError(
                f"trigger {self.path}: async: expected true or false, got {self.is_async!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "methods": list(self.methods), "async": self.is_async}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HttpTrigger:
        """The trigger :meth:`to_dict` wrote; a missing ``async`` (a bundle built before
        async calls existed) means false."""
        return cls(data["path"], tuple(data["methods"]), data.get("async", False))


@dataclass(frozen=True, slots=True)
class PoolSpec:
    """Warm pool bounds and queueing.

    ``min``/``max`` bound the worker count; ``concurrency`` is calls per worker at once (only
    ``async def`` handlers use more than 1); ``queue_max`` bounds calls waiting for a worker;
    a call that would wait longer than ``max_queue_wait_ms`` is refused with 429; a worker
    idle for ``idle_timeout_s`` above ``min`` is retired.
    """

    min: int
    max: int
    concurrency: int
    queue_max: int
    max_queue_wait_ms: int
    idle_timeout_s: float


@dataclass(frozen=True, slots=True)
class SpillSpec:
    """Where a call may go when this node cannot take it soon enough.

    ``to`` lists the tiers to try, always in :data:`registry.defaults.SPILL_TIERS` order
    (peers before cloud), whatever order they were given in; empty pins the function to its
    node. ``max_local_wait_ms`` is the longest a call is expected to wait here before it is
    sent elsewhere. ``cloud_compatible`` says whether the function may go to a foreign
    (non-edgefaas, OpenFaaS-style) cloud gateway. Bad values raise ValueError or TypeError:
    specs read from a bundle are untrusted input.
    """

    to: tuple[str, ...] = defaults.SPILL_TO
    max_local_wait_ms: int = defaults.SPILL_MAX_LOCAL_WAIT_MS
    cloud_compatible: bool = defaults.SPILL_CLOUD_COMPATIBLE

    def __post_init__(self) -> None:
        object.__setattr__(self, "to", _spill_tiers(self.to))
        _check_spill_values(self.max_local_wait_ms, self.cloud_compatible)

    @property
    def pinned(self) -> bool:
        """True when calls never leave this node."""
        return not self.to

    def to_dict(self) -> dict[str, Any]:
        return {
            "to": list(self.to),
            "max_local_wait_ms": self.max_local_wait_ms,
            "cloud_compatible": self.cloud_compatible,
        }

    @classmethod
    def from_dict(cls, data: object) -> SpillSpec:
        if not isinstance(data, dict):
            raise TypeError(f"spill: expected an object, got {data!r}")
        for key in data:
            if key not in SPILL_KEYS:
                raise ValueError(f"spill: unknown key {key!r}; expected {', '.join(SPILL_KEYS)}")
        for key in SPILL_KEYS:
            if key not in data:
                raise ValueError(f"spill: missing key {key!r}")
        return cls(data["to"], data["max_local_wait_ms"], data["cloud_compatible"])


def _spill_tiers(to: object) -> tuple[str, ...]:
    """``to`` checked, as a tuple in tier order."""
    tiers = defaults.SPILL_TIERS
    if not isinstance(to, tuple | list):  # a string would pass as a sequence of letters
        raise TypeError(f"spill.to: expected a list of tiers, got {to!r}")
    for i, tier in enumerate(to):
        if not isinstance(tier, str) or tier not in tiers:
            raise ValueError(f"spill.to: unknown tier {tier!r}; expected {' or '.join(tiers)}")
        if tier in to[:i]:
            raise ValueError(f"spill.to: duplicate tier {tier!r}")
    return tuple(tier for tier in tiers if tier in to)


def _check_spill_values(max_local_wait_ms: object, cloud_compatible: object) -> None:
    wait = max_local_wait_ms
    problem = f"spill.max_local_wait_ms: expected an integer ≥ 0, got {wait!r}"
    if isinstance(wait, bool) or not isinstance(wait, int):
        raise TypeError(problem)
    if wait < 0:
        raise ValueError(problem)
    if not isinstance(cloud_compatible, bool):
        raise TypeError(f"spill.cloud_compatible: expected true or false, got {cloud_compatible!r}")


@dataclass(frozen=True, slots=True)
class AsyncSpec:
    """How a call accepted with 202 (``POST /async-function/{name}`` or an ``async: true``
    trigger) is retried, and when it is given up.

    A call whose run fails is run again up to ``retries`` times. Before retry *n* (from 1) it
    waits ``backoff_s[n - 1]`` seconds; when there are more retries than entries, the last
    entry repeats (see :meth:`backoff_before`). A call still unfinished ``max_age_s`` seconds
    after it was accepted is not run again. Either way it then becomes a dead letter. Bad
    values raise ValueError (TypeError for a document that is not an object): specs read
    from a bundle are untrusted input. Numbers of seconds are kept as floats.
    """

    retries: int = defaults.ASYNC_RETRIES
    backoff_s: tuple[float, ...] = defaults.ASYNC_BACKOFF_S
    max_age_s: float = defaults.ASYNC_MAX_AGE_S

    def __post_init__(self) -> None:
        for key in ASYNC_KEYS:
            fault = async_fault(key, getattr(self, key))
            if fault is not None:
                got = f"got {fault.value!r}"
                raise ValueError(f"async.{key}{fault.at}: expected {fault.expected}, {got}")
        object.__setattr__(self, "backoff_s", tuple(float(s) for s in self.backoff_s))
        object.__setattr__(self, "max_age_s", float(self.max_age_s))

    def backoff_before(self, retry: int) -> float:
        """Seconds to wait before retry number ``retry`` (1 for the first retry)."""
        if retry < 1:
            raise ValueError(f"retry numbers start at 1, got {retry}")
        return self.backoff_s[min(retry, len(self.backoff_s)) - 1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "retries": self.retries,
            "backoff_s": list(self.backoff_s),
            "max_age_s": self.max_age_s,
        }

    @classmethod
    def from_dict(cls, data: object) -> AsyncSpec:
        if not isinstance(data, dict):
            raise TypeError(f"async: expected an object, got {data!r}")
        for key in data:
            if key not in ASYNC_KEYS:
                raise ValueError(f"async: unknown key {key!r}; expected {', '.join(ASYNC_KEYS)}")
        for key in ASYNC_KEYS:
            if key not in data:
                raise ValueError(f"async: missing key {key!r}")
        return cls(data["retries"], data["backoff_s"], data["max_age_s"])


@dataclass(frozen=True, slots=True)
class BatchSpec:
    """Micro-batching: calls that queue while the function's workers are busy go to one
    worker together, up to ``max_size``, through the module's ``handle_batch(events)``.
    ``max_wait_ms`` is the longest a call may be held for its batch to fill. Bad values
    raise ValueError (TypeError for a document that is not an object)."""

    max_size: int
    max_wait_ms: int = defaults.BATCH_MAX_WAIT_MS

    def __post_init__(self) -> None:
        for key in ("max_size", "max_wait_ms"):
            problem = batch_fault(key, getattr(self, key))
            if problem is not None:
                raise ValueError(f"batch.{key}: expected {problem}, got {getattr(self, key)!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"max_size": self.max_size, "max_wait_ms": self.max_wait_ms}

    @classmethod
    def from_dict(cls, data: object) -> BatchSpec:
        if not isinstance(data, dict):
            raise TypeError(f"batch: expected an object, got {data!r}")
        unknown = set(data) - {"max_size", "max_wait_ms"}
        if unknown:
            raise ValueError(f"batch: unknown key {sorted(unknown)[0]!r}")
        if "max_size" not in data:
            raise ValueError("batch: missing key 'max_size'")
        return cls(**data)


def batch_fault(key: str, value: object) -> str | None:
    """What a good ``batch.<key>`` looks like when ``value`` is not one, else None."""
    if key == "max_size":
        low, high = 2, defaults.BATCH_MAX_SIZE_LIMIT
    else:
        low, high = 0, defaults.BATCH_MAX_WAIT_LIMIT_MS
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        return f"an integer from {low} to {high}"
    return None


@dataclass(frozen=True, slots=True)
class FunctionSpec:
    """One function as declared in the manifest, with paths made absolute.

    ``root`` is the function's folder: the handler file's folder, or the manifest's folder for
    a module handler. Its processes run with ``root`` as working directory.
    """

    name: str
    handler: HandlerRef
    root: Path
    triggers: tuple[HttpTrigger, ...]
    pool: PoolSpec
    timeout_s: float
    memory_mb: int
    env: dict[str, str] = field(default_factory=dict)
    files: tuple[Path, ...] = ()
    spill: SpillSpec = field(default_factory=SpillSpec)
    async_policy: AsyncSpec = field(default_factory=AsyncSpec)  # "async" in documents
    batch: BatchSpec | None = None  # calls go to handle_batch when set
    sandbox: SandboxSpec = field(default_factory=SandboxSpec)

    def to_dict(self) -> dict[str, Any]:
        document = {
            "name": self.name,
            "handler": {
                "kind": self.handler.kind,
                "target": self.handler.target,
                "attr": self.handler.attr,
            },
            "root": str(self.root),
            "triggers": [t.to_dict() for t in self.triggers],
            "pool": {
                "min": self.pool.min,
                "max": self.pool.max,
                "concurrency": self.pool.concurrency,
                "queue_max": self.pool.queue_max,
                "max_queue_wait_ms": self.pool.max_queue_wait_ms,
                "idle_timeout_s": self.pool.idle_timeout_s,
            },
            "timeout_s": self.timeout_s,
            "memory_mb": self.memory_mb,
            "env": dict(self.env),
            "files": [str(p) for p in self.files],
            "spill": self.spill.to_dict(),
            "async": self.async_policy.to_dict(),
            "sandbox": self.sandbox.to_dict(),
        }
        if self.batch is not None:
            document["batch"] = self.batch.to_dict()
        return document

    def relocated(self, root: Path) -> FunctionSpec:
        """The same function seen from inside its sandbox, where its folder is at ``root``:
        the handler's file and the extra files move with it."""

        def moved(path: Path) -> Path:
            return root / path.relative_to(self.root) if path.is_relative_to(self.root) else path

        handler = self.handler
        if handler.kind != "module":
            handler = HandlerRef(handler.kind, str(moved(Path(handler.target))), handler.attr)
        return replace(
            self, root=root, handler=handler, files=tuple(moved(path) for path in self.files)
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FunctionSpec:
        """The spec :meth:`to_dict` wrote. A missing ``spill``, ``async`` or ``sandbox`` (a
        bundle built before spill-over, async calls or sandboxes existed) means the defaults,
        as does a trigger without ``async``; bad values raise ValueError or TypeError."""
        handler = data["handler"]
        pool = data["pool"]
        return cls(
            name=data["name"],
            handler=HandlerRef(handler["kind"], handler["target"], handler["attr"]),
            root=Path(data["root"]),
            triggers=tuple(HttpTrigger.from_dict(t) for t in data["triggers"]),
            pool=PoolSpec(
                min=pool["min"],
                max=pool["max"],
                concurrency=pool["concurrency"],
                queue_max=pool["queue_max"],
                max_queue_wait_ms=pool["max_queue_wait_ms"],
                idle_timeout_s=pool["idle_timeout_s"],
            ),
            timeout_s=data["timeout_s"],
            memory_mb=data["memory_mb"],
            env=dict(data["env"]),
            files=tuple(Path(p) for p in data["files"]),
            spill=SpillSpec.from_dict(data["spill"]) if "spill" in data else SpillSpec(),
            async_policy=AsyncSpec.from_dict(data["async"]) if "async" in data else AsyncSpec(),
            batch=BatchSpec.from_dict(data["batch"]) if data.get("batch") is not None else None,
            sandbox=(
                SandboxSpec.from_dict(data["sandbox"]) if "sandbox" in data else SandboxSpec()
            ),
        )


@dataclass(frozen=True, slots=True)
class Manifest:
    """A parsed ``functions.yaml``: its path and its functions in declaration order."""

    path: Path
    functions: dict[str, FunctionSpec]

    def trigger_routes(self) -> dict[str, tuple[FunctionSpec, HttpTrigger]]:
        """Map each declared trigger path to the function and trigger that own it."""
        return {
            trigger.path: (spec, trigger)
            for spec in self.functions.values()
            for trigger in spec.triggers
        }
