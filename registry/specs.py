"""Typed, validated function specifications: what ``functions.yaml`` declares.

Specs are immutable. They cross process boundaries (gateway → zygote) as plain dicts through
:meth:`FunctionSpec.to_dict` / :meth:`FunctionSpec.from_dict`. This module imports nothing
heavy because the zygote imports it before loading user code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

HandlerKind = Literal["file", "module", "pickle"]


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
    """An extra URL path that reaches the function, with the HTTP methods it accepts."""

    path: str
    methods: tuple[str, ...]


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

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "handler": {
                "kind": self.handler.kind,
                "target": self.handler.target,
                "attr": self.handler.attr,
            },
            "root": str(self.root),
            "triggers": [{"path": t.path, "methods": list(t.methods)} for t in self.triggers],
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
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FunctionSpec:
        handler = data["handler"]
        pool = data["pool"]
        return cls(
            name=data["name"],
            handler=HandlerRef(handler["kind"], handler["target"], handler["attr"]),
            root=Path(data["root"]),
            triggers=tuple(HttpTrigger(t["path"], tuple(t["methods"])) for t in data["triggers"]),
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
