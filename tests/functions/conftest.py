"""Load example functions the way a worker does: by file path, then ``init(context)``."""

from __future__ import annotations

import importlib.util
import itertools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

from runtime import Context

FUNCTIONS_DIR = Path(__file__).resolve().parents[2] / "functions"

_loaded = itertools.count()

StartFunction = Callable[..., ModuleType]


def load_handler(name: str) -> ModuleType:
    """A fresh copy of ``functions/<name>/handler.py``, not left in ``sys.modules``."""
    path = FUNCTIONS_DIR / name / "handler.py"
    module_name = f"_edgefaas_test_{name}_handler_{next(_loaded)}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses look the module up while the class body runs.
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[module_name]
    return module


def start_function(name: str, root: Path | None = None) -> ModuleType:
    """Load a handler and run its ``init`` with a real Context; ``root`` defaults to its folder."""
    module = load_handler(name)
    init = getattr(module, "init", None)
    if init is not None:
        context = Context(
            function=name,
            root=root or FUNCTIONS_DIR / name,
            worker_pid=os.getpid(),
            timeout_s=5.0,
            memory_mb=128,
        )
        init(context)
    return module


@pytest.fixture
def function_factory() -> StartFunction:
    return start_function
