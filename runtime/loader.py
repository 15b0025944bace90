"""Import a function's handler module in the zygote, once, and report failures in the
function's own terms (its exception and the line of its code that raised)."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from registry.specs import FunctionSpec

Handler = Callable[[Any], Any]


class LoadError(Exception):
    """The handler module could not be imported, or does not define the handler."""

    def __init__(self, message: str, trace: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.trace = trace


@dataclass(frozen=True)
class LoadedFunction:
    handle: Handler
    init: Callable[[Any], Any] | None
    is_async: bool
    handle_batch: Callable[[list[Any]], Any] | None = None  # when the spec has ``batch``


def load_function(spec: FunctionSpec) -> LoadedFunction:
    """Import the handler module named by ``spec`` and return its entry points."""
    if spec.handler.kind == "pickle":
        if spec.batch is not None:
            raise LoadError("batch: needs a module with handle_batch, not a pickled callable")
        return _unpickle(spec)
    module = _import(spec)
    handle = getattr(module, spec.handler.attr, None)
    if handle is None:
        raise LoadError(f"{spec.handler.target} defines no {spec.handler.attr!r}")
    if not callable(handle):
        raise LoadError(f"{spec.handler}: {spec.handler.attr!r} is not callable")
    init = getattr(module, "init", None)
    if init is not None and not callable(init):
        raise LoadError(f"{spec.handler.target}: 'init' is not callable")
    if spec.batch is None:
        return LoadedFunction(handle, init, inspect.iscoroutinefunction(handle))
    handle_batch = getattr(module, "handle_batch", None)
    if handle_batch is None or not callable(handle_batch):
        raise LoadError(
            f"{spec.handler.target} defines no handle_batch(events), which batch: needs"
        )
    if inspect.iscoroutinefunction(handle_batch):
        raise LoadError(f"{spec.handler.target}: handle_batch must be a plain def, not async")
    return LoadedFunction(handle, init, False, handle_batch)


def _unpickle(spec: FunctionSpec) -> LoadedFunction:
    """A cloudpickled callable. Only bundles that passed digest and signature checks are
    unpacked, so the file read here is one the node verified."""
    import cloudpickle  # only zygotes of pickled functions need it

    try:
        with open(spec.handler.target, "rb") as source:
            handle = cloudpickle.load(source)
    except Exception as exc:
        raise LoadError(
            f"the pickled callable cannot be loaded: {type(exc).__name__}: {exc}", format_trace(exc)
        ) from exc
    if not callable(handle):
        raise LoadError(f"the pickled object is a {type(handle).__name__}, not a callable")
    return LoadedFunction(handle, None, inspect.iscoroutinefunction(handle))


def _import(spec: FunctionSpec) -> Any:
    root = str(spec.root)
    if root not in sys.path:
        sys.path.insert(0, root)
    try:
        if spec.handler.kind == "module":
            return importlib.import_module(spec.handler.target)
        return _import_file(spec.name, Path(spec.handler.target))
    except Exception as exc:
        raise LoadError(describe_exception(exc, spec.root), format_trace(exc)) from exc


def _import_file(name: str, path: Path) -> Any:
    module_name = f"edgefaas_function_{name.replace('-', '_')}"
    file_spec = importlib.util.spec_from_file_location(module_name, path)
    if file_spec is None or file_spec.loader is None:
        raise ImportError(f"cannot import {path}: not a Python source file")
    module = importlib.util.module_from_spec(file_spec)
    sys.modules[module_name] = module
    file_spec.loader.exec_module(module)
    return module


def describe_exception(exc: BaseException, root: Path) -> str:
    """``ZeroDivisionError: division by zero (handler.py, line 3)`` — the function's own
    innermost frame, or the innermost frame of all when the function's code is not on the
    stack (a syntax error is reported at its own file and line)."""
    text = f"{type(exc).__name__}: {exc}"
    where = _user_frame(exc, root)
    return f"{text} ({where})" if where else text


def _user_frame(exc: BaseException, root: Path) -> str:
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{_short(exc.filename, root)}, line {exc.lineno}"
    frames = traceback.extract_tb(exc.__traceback__)
    own = [f for f in frames if _is_under(f.filename, root)]
    real = [f for f in frames if not f.filename.startswith("<")]  # skip <frozen importlib...>
    chosen = own[-1] if own else (real[-1] if real else None)
    if chosen is None:
        return ""
    return f"{_short(chosen.filename, root)}, line {chosen.lineno}"


def _is_under(filename: str, root: Path) -> bool:
    try:
        Path(filename).resolve().relative_to(root)
    except (ValueError, OSError):
        return False
    return True


def _short(filename: str, root: Path) -> str:
    try:
        return str(Path(filename).resolve().relative_to(root))
    except (ValueError, OSError):
        return filename


def format_trace(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)).rstrip()
