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


class MeshAuthError(RegistryError):
    """A request between nodes is not authenticated with the mesh key."""

    code = "mesh_auth"


class MeshError(RegistryError):
    """The mesh's control plane refused or could not do what was asked."""

    code = "mesh_error"


class MeshNotFound(MeshError):
    """The function or version asked for was never deployed to the mesh."""

    code = "not_found"


class BundleError(RegistryError):
    """A function cannot be made into a bundle (a file outside its folder, a link that
    leaves it, a folder too large to ship), or an unpacked bundle's folder is unusable."""

    code = "bundle_error"


class BundleRejected(RegistryError):
    """A bundle failed verification (digest, signature) or holds an unsafe archive member;
    nothing of it was unpacked or unpickled."""

    code = "bundle_rejected"


class KeyFileError(RegistryError):
    """A signing or public key file cannot be read, is not an Ed25519 key, or would be
    overwritten."""

    code = "key_file"


class RedisServerError(RegistryError):
    """The embedded Redis server cannot be found, started or stopped; the message says why
    and, when the server got as far as writing a log, ends with the log's last lines."""

    code = "redis_server"


class RedisUrlError(RegistryError):
    """A Redis URL (``--redis``, ``EDGEFAAS_REDIS``, ``REDIS_URL``) has a form that redis-py
    would reject or misread. ``url`` is the URL as given, its password masked."""

    code = "invalid_redis_url"

    def __init__(self, url: str, problem: str) -> None:
        self.url = url
        self.problem = problem
        super().__init__(
            f"invalid Redis URL {url!r}: {problem}; expected redis://HOST[:PORT][/DB], "
            "rediss://HOST[:PORT][/DB] or unix:///PATH/TO/redis.sock[?db=DB]"
        )

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": str(self), "url": self.url}
