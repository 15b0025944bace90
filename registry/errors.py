"""Errors raised by the registry package; all derive from :class:`RegistryError`."""

from __future__ import annotations

from typing import Any


class RegistryError(Exception):
    """Base class for registry errors. ``str()`` is a complete, user-facing sentence."""

    code = "registry_error"

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": str(self)}


class ManifestError(RegistryError):
    """A manifest is unreadable or invalid.

    ``source`` is the file as the user named it, ``key_path`` the dotted path of the bad key
    (``functions.motion.pool.max``; empty for the whole document), ``line`` the 1-based line of
    the offending node when known.
    """

    code = "invalid_manifest"

    def __init__(self, source: str, key_path: str, problem: str, line: int | None = None) -> None:
        self.source = source
        self.key_path = key_path
        self.problem = problem
        self.line = line
        where = f"{source}: {key_path}: " if key_path else f"{source}: "
        suffix = f" (line {line})" if line is not None else ""
        super().__init__(f"{where}{problem}{suffix}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "message": str(self),
            "source": self.source,
            "key_path": self.key_path,
            "line": self.line,
        }
