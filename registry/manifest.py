"""Read ``functions.yaml`` (schema version 1) into typed :class:`~registry.specs.Manifest` specs.

The YAML is composed into a node tree and walked here, not loaded with ``yaml.safe_load``, so
that every error can name the key path and the line that caused it::

    functions.yaml: functions.motion.pool.max: expected an integer ≥ min (1), got "lots" (line 14)

Settings resolve in three layers: the function's own keys, then the ``defaults:`` block, then
:mod:`registry.defaults`. ``pool``, ``spill``, ``async``, ``sandbox`` and ``env`` merge key
by key. Relative
paths resolve against the manifest's folder and may not leave it. Every problem raises
:class:`ManifestError`.
"""

from __future__ import annotations

import difflib
import keyword
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from registry import defaults
from registry.asyncspec import ASYNC_KEYS, Fault, async_fault
from registry.errors import ManifestError
from registry.sandboxspec import SANDBOX_KEYS, SandboxSpec, sandbox_fault
from registry.specs import (
    SPILL_KEYS,
    AsyncSpec,
    BatchSpec,
    FunctionSpec,
    HandlerRef,
    HttpTrigger,
    Manifest,
    PoolSpec,
    SpillSpec,
    batch_fault,
)
from registry.yamltree import YamlTree, join_path, show_value

_TOP_KEYS = ("version", "defaults", "functions")
_DEFAULT_KEYS = ("pool", "spill", "async", "sandbox", "timeout_s", "memory_mb", "env")
_FUNCTION_ONLY_KEYS = ("handler", "triggers", "files", "batch")
_FUNCTION_KEYS = ("handler", "triggers", *_DEFAULT_KEYS, "files", "batch")
_POOL_KEYS = ("min", "max", "concurrency", "queue_max", "max_queue_wait_ms", "idle_timeout_s")
_GROUPS = {
    "pool": _POOL_KEYS,
    "spill": SPILL_KEYS,
    "async": ASYNC_KEYS,
    "sandbox": SANDBOX_KEYS,
}  # settings that merge key by key
_MAX_CONCURRENCY = 1000

_NAME = re.compile(r"[a-z][a-z0-9_-]{0,62}")
_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_RESERVED_ENV_PREFIX = "EDGEFAAS_"
_HANDLER_FORMS = '"path/to/file.py:function" or "dotted.module:function"'

_BUILTIN_SETTINGS: dict[str, object] = {
    "timeout_s": defaults.TIMEOUT_S,
    "memory_mb": defaults.MEMORY_MB,
    "pool.min": defaults.POOL_MIN,
    "pool.max": defaults.POOL_MAX,
    "pool.concurrency": defaults.POOL_CONCURRENCY,
    "pool.queue_max": defaults.POOL_QUEUE_MAX,
    "pool.max_queue_wait_ms": defaults.POOL_MAX_QUEUE_WAIT_MS,
    "pool.idle_timeout_s": defaults.POOL_IDLE_TIMEOUT_S,
    "spill.to": list(defaults.SPILL_TO),
    "spill.max_local_wait_ms": defaults.SPILL_MAX_LOCAL_WAIT_MS,
    "spill.cloud_compatible": defaults.SPILL_CLOUD_COMPATIBLE,
    "async.retries": defaults.ASYNC_RETRIES,
    "async.backoff_s": list(defaults.ASYNC_BACKOFF_S),
    "async.max_age_s": defaults.ASYNC_MAX_AGE_S,
    "sandbox.network": defaults.SANDBOX_NETWORK,
    "sandbox.tmp_mb": defaults.SANDBOX_TMP_MB,
    "sandbox.cpu": defaults.SANDBOX_CPU,
    "sandbox.pids": defaults.SANDBOX_PIDS,
}


def load_manifest(path: str | Path) -> Manifest:
    """Read, parse and validate the manifest file at ``path``.

    Errors name the file as given; relative handler and file paths resolve against the
    folder of the file (after following symlinks).
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
        real_path = Path(path).resolve()
    except OSError as exc:
        raise ManifestError(source, "", f"cannot read the manifest: {exc.strerror}") from exc
    except ValueError as exc:  # not UTF-8, or a NUL byte in the path
        raise ManifestError(source, "", f"cannot read the manifest: {exc}") from exc
    return _parse(text, source, real_path)


def parse_manifest(text: str, source: str, base_dir: Path) -> Manifest:
    """Parse and validate manifest ``text``; ``source`` names it in errors and relative
    handler and file paths resolve against ``base_dir``."""
    return _parse(text, source, base_dir.resolve() / source)


def _parse(text: str, source: str, manifest_path: Path) -> Manifest:
    tree = YamlTree(source)
    document = tree.build(text)
    checker = _Checker(source, manifest_path.parent, tree.lines)
    return Manifest(manifest_path, checker.functions(document))


def _is_identifier(text: str) -> bool:
    return text.isidentifier() and not keyword.iskeyword(text)


class _Given(NamedTuple):
    """A setting's raw value and the key path that gave it ("" when built in)."""

    value: object
    path: str

    @property
    def rank(self) -> int:
        """How specifically it was given: built in (0), ``defaults`` (1), the function (2)."""
        if not self.path:
            return 0
        return 1 if self.path.startswith("defaults.") else 2


@dataclass(frozen=True, slots=True)
class _Layer:
    """Settings resolved so far, keyed ``timeout_s``, ``memory_mb``, ``pool.<key>``,
    ``spill.<key>``, ``async.<key>``; and env."""

    given: dict[str, _Given]
    env: dict[str, str]


class _Checker:
    """Validates the built document into specs; every error names its key path and line."""

    def __init__(self, source: str, base: Path, lines: dict[str, int]) -> None:
        self.source = source
        self.base = base
        self.lines = lines
        self.trigger_owners: dict[str, str] = {}

    def error(self, path: str, problem: str) -> ManifestError:
        at = path
        while at and at not in self.lines:  # a missing key: point at its parent
            at = at[: max(at.rfind("."), at.rfind("["), 0)]
        return ManifestError(self.source, path, problem, self.lines.get(at))

    def invalid(self, path: str, expected: str, value: object) -> ManifestError:
        return self.error(path, f"expected {expected}, got {show_value(value)}")

    # -- the document ---------------------------------------------------------------------

    def functions(self, document: object) -> dict[str, FunctionSpec]:
        top = self.mapping(document, "", "a mapping with version and functions")
        self.check_keys(top, "", _TOP_KEYS)
        self.version(self.require(top, "version", ""))
        base = self.defaults(top["defaults"]) if "defaults" in top else self.builtin_layer()
        declared = self.mapping(self.require(top, "functions", ""), "functions")
        if not declared:
            raise self.error("functions", "expected at least one function")
        return {name: self.function(name, value, base) for name, value in declared.items()}

    def version(self, value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.invalid("version", f"the integer {defaults.SCHEMA_VERSION}", value)
        if value != defaults.SCHEMA_VERSION:
            supported = f"this edgefaas reads version {defaults.SCHEMA_VERSION}"
            raise self.error("version", f"unsupported schema version {value}; {supported}")

    def defaults(self, value: object) -> _Layer:
        block = self.mapping(value, "defaults")
        for key in _FUNCTION_ONLY_KEYS:
            if key in block:
                raise self.error(f"defaults.{key}", f"{key} can only be set per function")
        self.check_keys(block, "defaults", _DEFAULT_KEYS)
        layer = self.overlay(self.builtin_layer(), block, "defaults")
        self.settings(layer)  # report bad defaults even where every function overrides them
        self.sandbox(layer.given)
        return layer

    def function(self, name: str, value: object, base: _Layer) -> FunctionSpec:
        path = f"functions.{name}"
        if not _NAME.fullmatch(name):
            rule = "lower case letters, digits, _ and -, starting with a letter, at most 63"
            raise self.error(path, f"invalid function name {show_value(name)}: expected {rule}")
        block = self.mapping(value, path)
        self.check_keys(block, path, _FUNCTION_KEYS)
        handler, root = self.handler(self.require(block, "handler", path), f"{path}.handler")
        layer = self.overlay(base, block, path)
        pool, spill, async_policy, timeout_s, memory_mb = self.settings(layer)
        triggers = self.triggers(block.get("triggers", []), f"{path}.triggers", name)
        files = self.files(block.get("files", []), f"{path}.files")
        batch = self.batch(block["batch"], f"{path}.batch") if "batch" in block else None
        return FunctionSpec(
            name=name,
            handler=handler,
            root=root,
            triggers=triggers,
            pool=pool,
            timeout_s=timeout_s,
            memory_mb=memory_mb,
            env=layer.env,
            files=files,
            spill=spill,
            async_policy=async_policy,
            batch=batch,
            sandbox=self.sandbox(layer.given),
        )

    def batch(self, value: object, path: str) -> BatchSpec:
        block = self.mapping(value, path)
        self.check_keys(block, path, ("max_size", "max_wait_ms"))
        self.require(block, "max_size", path)
        for key, item in block.items():
            expected = batch_fault(key, item)
            if expected is not None:
                raise self.invalid(f"{path}.{key}", expected, item)
        return BatchSpec(**block)  # type: ignore[arg-type]

    # -- settings that layer: function over defaults over built-in ------------------------

    def builtin_layer(self) -> _Layer:
        return _Layer({key: _Given(value, "") for key, value in _BUILTIN_SETTINGS.items()}, {})

    def overlay(self, base: _Layer, block: dict[str, object], path: str) -> _Layer:
        given = dict(base.given)
        for key in ("timeout_s", "memory_mb"):
            if key in block:
                given[key] = _Given(block[key], f"{path}.{key}")
        for group, keys in _GROUPS.items():
            if group in block:
                items = self.mapping(block[group], f"{path}.{group}")
                self.check_keys(items, f"{path}.{group}", keys)
                given.update(
                    {f"{group}.{k}": _Given(v, f"{path}.{group}.{k}") for k, v in items.items()}
                )
        env = dict(base.env)
        if "env" in block:
            env.update(self.env(block["env"], f"{path}.env"))
        return _Layer(given, env)

    def settings(self, layer: _Layer) -> tuple[PoolSpec, SpillSpec, AsyncSpec, float, int]:
        """The layer's pool, spill, async, timeout_s and memory_mb, checked."""
        given = layer.given
        longest = defaults.MAX_TIMEOUT_S
        timeout_s = self.number(
            given["timeout_s"], f"a number > 0 and ≤ {longest:g}", lambda x: 0 < x <= longest
        )
        least = defaults.MIN_MEMORY_MB
        memory_mb = self.integer(given["memory_mb"], f"an integer ≥ {least}", lambda n: n >= least)
        return self.pool(given), self.spill(given), self.async_policy(given), timeout_s, memory_mb

    def pool(self, given: dict[str, _Given]) -> PoolSpec:
        minimum, maximum = self.pool_bounds(given["pool.min"], given["pool.max"])
        most = _MAX_CONCURRENCY
        at_least_0 = "an integer ≥ 0"
        return PoolSpec(
            min=minimum,
            max=maximum,
            concurrency=self.integer(
                given["pool.concurrency"], f"an integer from 1 to {most}", lambda n: 1 <= n <= most
            ),
            queue_max=self.integer(given["pool.queue_max"], at_least_0, lambda n: n >= 0),
            max_queue_wait_ms=self.integer(
                given["pool.max_queue_wait_ms"], at_least_0, lambda n: n >= 0
            ),
            idle_timeout_s=self.number(
                given["pool.idle_timeout_s"], "a number ≥ 0", lambda x: x >= 0
            ),
        )

    def pool_bounds(self, given_min: _Given, given_max: _Given) -> tuple[int, int]:
        """Check min and max; when they conflict, blame the one given more specifically
        (the function's own key over ``defaults``), and max on a tie."""
        if given_min.rank > given_max.rank:
            maximum = self.integer(given_max, "an integer ≥ 1", lambda n: n >= 1)
            within = f"an integer ≥ 0 and ≤ max ({maximum})"
            return self.integer(given_min, within, lambda n: 0 <= n <= maximum), maximum
        minimum = self.integer(given_min, "an integer ≥ 0", lambda n: n >= 0)
        floor = max(minimum, 1)
        expected = f"an integer ≥ min ({minimum})" if minimum >= 1 else "an integer ≥ 1"
        return minimum, self.integer(given_max, expected, lambda n: n >= floor)

    def spill(self, given: dict[str, _Given]) -> SpillSpec:
        tiers = self.tiers(given["spill.to"])
        wait_ms = self.integer(given["spill.max_local_wait_ms"], "an integer ≥ 0", lambda n: n >= 0)
        return SpillSpec(tiers, wait_ms, self.boolean(given["spill.cloud_compatible"]))

    def tiers(self, given: _Given) -> tuple[str, ...]:
        """Spill tiers, in tier order whatever order they were given in."""
        known = ", ".join(defaults.SPILL_TIERS)
        expected = f"a list of {known} (or [] to pin the function to its node)"
        items = self.sequence(given.value, given.path, expected)
        for i, item in enumerate(items):
            if item not in defaults.SPILL_TIERS:
                raise self.invalid(f"{given.path}[{i}]", f"one of {known}", item)
            if item in items[:i]:
                raise self.error(f"{given.path}[{i}]", f"duplicate tier {show_value(item)}")
        return tuple(tier for tier in defaults.SPILL_TIERS if tier in items)

    def async_policy(self, given: dict[str, _Given]) -> AsyncSpec:
        """The async policy; its rules live in :mod:`registry.asyncspec`."""
        return AsyncSpec.from_dict(self.checked_group(given, "async", ASYNC_KEYS, async_fault))

    def sandbox(self, given: dict[str, _Given]) -> SandboxSpec:
        """The sandbox settings; their rules live in :mod:`registry.sandboxspec`."""
        values = self.checked_group(given, "sandbox", SANDBOX_KEYS, sandbox_fault)
        return SandboxSpec.from_dict(values)

    def checked_group(
        self,
        given: dict[str, _Given],
        group: str,
        keys: tuple[str, ...],
        fault_of: Callable[[str, object], Fault | None],
    ) -> dict[str, object]:
        """The values of ``group.<key>`` for ``keys``, each checked by ``fault_of``; the first
        fault is reported at the key path (and line) where it was given."""
        for key in keys:
            item = given[f"{group}.{key}"]
            fault = fault_of(key, item.value)
            if fault is not None:
                raise self.invalid(f"{item.path}{fault.at}", fault.expected, fault.value)
        return {key: given[f"{group}.{key}"].value for key in keys}

    def env(self, value: object, path: str) -> dict[str, str]:
        env: dict[str, str] = {}
        for key, item in self.mapping(value, path).items():
            key_path = f"{path}.{key}"
            if not _ENV_KEY.fullmatch(key):
                rule = "letters, digits and _, not starting with a digit"
                raise self.error(
                    key_path, f"invalid variable name {show_value(key)}: expected {rule}"
                )
            if key.startswith(_RESERVED_ENV_PREFIX):
                raise self.error(key_path, f"{_RESERVED_ENV_PREFIX}* names are reserved")
            env[key] = self.env_value(item, key_path)
        return env

    def env_value(self, value: object, path: str) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, str | int | float):
            return str(value)
        raise self.invalid(path, "a string, number or boolean", value)

    # -- per-function keys ----------------------------------------------------------------

    def handler(self, value: object, path: str) -> tuple[HandlerRef, Path]:
        """The handler reference and the function's root folder."""
        text = self.string(value, path, _HANDLER_FORMS)
        target, _, attr = text.rpartition(":")
        if target.endswith(".py") and _is_identifier(attr):
            file = self.inside(target, path, "handler file")
            if not file.is_file():
                raise self.error(path, f"handler file {show_value(target)} is not a file")
            return HandlerRef("file", str(file), attr), file.parent
        parts = target.split(".")
        if all(_is_identifier(part) for part in parts) and _is_identifier(attr):
            return HandlerRef("module", target, attr), self.base
        raise self.invalid(path, _HANDLER_FORMS, text)

    def triggers(self, value: object, path: str, function: str) -> tuple[HttpTrigger, ...]:
        items = self.sequence(value, path, "a list of triggers")
        triggers = tuple(self.trigger(item, f"{path}[{i}]") for i, item in enumerate(items))
        for i, trigger in enumerate(triggers):
            owner = self.trigger_owners.setdefault(trigger.path, function)
            if owner != function or trigger.path in [t.path for t in triggers[:i]]:
                claimed = (
                    f"{show_value(trigger.path)} is already the trigger path of function {owner}"
                )
                raise self.error(f"{path}[{i}].http.path", claimed)
        return triggers

    def trigger(self, value: object, path: str) -> HttpTrigger:
        item = self.mapping(value, path, "a mapping such as {http: {path: /echo}}")
        self.check_keys(item, path, ("http",))
        if not item:
            raise self.error(path, "expected one trigger kind (http)")
        http = self.mapping(item["http"], f"{path}.http")
        self.check_keys(http, f"{path}.http", ("path", "methods", "async"))
        url_path = self.http_path(self.require(http, "path", f"{path}.http"), f"{path}.http.path")
        methods: tuple[str, ...] = defaults.DEFAULT_TRIGGER_METHODS
        if "methods" in http:
            methods = self.methods(http["methods"], f"{path}.http.methods")
        is_async = self.boolean(_Given(http.get("async", False), f"{path}.http.async"))
        return HttpTrigger(url_path, methods, is_async)

    def http_path(self, value: object, path: str) -> str:
        text = self.string(value, path, 'a URL path such as "/echo"')
        problem = _path_problem(text)
        if problem:
            raise self.error(path, f"{show_value(text)} {problem}")
        return text

    def methods(self, value: object, path: str) -> tuple[str, ...]:
        expected = f"a non-empty list of HTTP methods ({', '.join(defaults.HTTP_METHODS)})"
        items = self.sequence(value, path, expected)
        if not items:
            raise self.invalid(path, expected, value)
        methods: list[str] = []
        for i, item in enumerate(items):
            if not isinstance(item, str) or item.upper() not in defaults.HTTP_METHODS:
                raise self.invalid(
                    f"{path}[{i}]", f"one of {', '.join(defaults.HTTP_METHODS)}", item
                )
            name = item.upper()
            if name in methods:
                raise self.error(f"{path}[{i}]", f"duplicate method {show_value(name)}")
            methods.append(name)
        return tuple(methods)

    def files(self, value: object, path: str) -> tuple[Path, ...]:
        items = self.sequence(value, path, "a list of paths")
        return tuple(
            self.inside(self.string(item, f"{path}[{i}]", "a path"), f"{path}[{i}]", "file")
            for i, item in enumerate(items)
        )

    def inside(self, relative: str, path: str, what: str) -> Path:
        """``relative`` resolved against the manifest's folder; it must exist there."""
        try:
            resolved = (self.base / relative).resolve()
            exists = resolved.exists()
        except (OSError, RuntimeError, ValueError) as exc:
            raise self.error(path, f"{what} {show_value(relative)} is not a usable path") from exc
        if not resolved.is_relative_to(self.base):
            where = f"outside the manifest's folder {self.base}"
            raise self.error(path, f"{what} {show_value(relative)} is {where}")
        if not exists:
            raise self.error(path, f"{what} {show_value(relative)} does not exist")
        return resolved

    # -- shapes and scalars ---------------------------------------------------------------

    def check_keys(self, block: dict[str, object], path: str, allowed: tuple[str, ...]) -> None:
        for key in block:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                known = f"expected one of {', '.join(allowed)}"
                hint = f'did you mean "{close[0]}"?' if close else known
                raise self.error(join_path(path, key), f"unknown key {show_value(key)}; {hint}")

    def require(self, block: dict[str, object], key: str, path: str) -> object:
        if key not in block:
            raise self.error(join_path(path, key), "required key is missing")
        return block[key]

    def mapping(self, value: object, path: str, expected: str = "a mapping") -> dict[str, object]:
        if not isinstance(value, dict):
            raise self.invalid(path, expected, value)
        return value

    def sequence(self, value: object, path: str, expected: str) -> list[object]:
        if not isinstance(value, list):
            raise self.invalid(path, expected, value)
        return value

    def string(self, value: object, path: str, expected: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.invalid(path, expected, value)
        return value

    def boolean(self, given: _Given) -> bool:
        if not isinstance(given.value, bool):
            raise self.invalid(given.path, "true or false", given.value)
        return given.value

    def integer(self, given: _Given, expected: str, ok: Callable[[int], bool]) -> int:
        """An int (never a bool) for which ``ok`` holds."""
        value = given.value
        if isinstance(value, bool) or not isinstance(value, int) or not ok(value):
            raise self.invalid(given.path, expected, value)
        return value

    def number(self, given: _Given, expected: str, ok: Callable[[float], bool]) -> float:
        """A finite int or float (never a bool) for which ``ok`` holds, as a float."""
        value = given.value
        if isinstance(value, int | float) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:
                number = math.inf
            if math.isfinite(number) and ok(number):
                return number
        raise self.invalid(given.path, expected, value)


def _path_problem(path: str) -> str | None:
    """Why ``path`` cannot be a trigger path, or None if it can."""
    for broken, problem in _PATH_RULES:
        if broken(path):
            return problem
    for prefix in defaults.RESERVED_PATH_PREFIXES:
        stem = prefix.rstrip("/")
        if path == stem or path.startswith(f"{stem}/"):
            return f'is reserved by the gateway (it is under "{prefix}")'
    return None


_PATH_RULES: tuple[tuple[Callable[[str], bool], str], ...] = (
    (lambda p: not p.startswith("/"), 'must start with "/"'),
    (lambda p: p == "/", 'must not be "/" alone'),
    (
        lambda p: any(ch.isspace() or not ch.isprintable() for ch in p),
        "must not contain whitespace or control characters",
    ),
    (lambda p: "?" in p or "#" in p, 'must not contain "?" or "#"'),
    (lambda p: "" in p[1:].split("/"), 'must not contain "//" or end with "/"'),
    (lambda p: bool({".", ".."} & set(p.split("/"))), 'must not contain "." or ".." segments'),
)
