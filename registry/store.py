"""A node's bundles on local disk, content-addressed, written atomically.

::

    DATA_DIR/bundles/DIGEST.bundle      the bundle's bytes (verified before they land here)
    DATA_DIR/bundles/DIGEST.json        its signature and signing key id
    DATA_DIR/bundles/unpacked/DIGEST/   the unpacked bundle the function's processes run from
    DATA_DIR/applied.json               what this node last ran, to serve it again at start
                                        when the mesh's Redis is unreachable

Every write goes to a temporary file in the same folder, is flushed to disk and renamed into
place, so a crash never leaves a half-written bundle under its digest.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from registry.errors import BundleRejected
from registry.signing import TrustedKeys
from registry.specs import FunctionSpec
from registry.unpack import check_bundle, unpack_bundle

_DIGEST = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class BundleMeta:
    signature: str
    key_id: str


def check_digest(digest: str) -> str:
    """A digest is 64 lowercase hex characters (it becomes a file name)."""
    if not _DIGEST.fullmatch(digest):
        raise BundleRejected(f"{digest[:80]!r} is not a sha256 digest (64 hex characters)")
    return digest


def write_atomically(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class BundleStore:
    """The bundles this node holds. Nothing unverified is ever stored or unpacked."""

    def __init__(self, data_dir: Path, trusted: TrustedKeys) -> None:
        self.root = data_dir / "bundles"
        self.unpacked = self.root / "unpacked"
        self.applied_path = data_dir / "applied.json"
        self.trusted = trusted
        self.unpacked.mkdir(parents=True, exist_ok=True, mode=0o700)

    def path(self, digest: str) -> Path:
        return self.root / f"{check_digest(digest)}.bundle"

    def has(self, digest: str) -> bool:
        return self.path(digest).is_file() and self._meta_path(digest).is_file()

    def meta(self, digest: str) -> BundleMeta:
        raw = json.loads(self._meta_path(digest).read_text())
        return BundleMeta(str(raw["signature"]), str(raw["key_id"]))

    def put(self, data: bytes, digest: str, signature: str, key_id: str) -> None:
        """Verify ``data`` (digest, signature, every archive member), then store it."""
        check_bundle(data, check_digest(digest), signature, key_id, self.trusted)
        if self.has(digest):
            return
        write_atomically(
            self._meta_path(digest), json.dumps(asdict(BundleMeta(signature, key_id))).encode()
        )
        write_atomically(self.path(digest), data)

    def unpack(self, digest: str) -> FunctionSpec:
        """Verify the stored bundle again and unpack it (once) for its processes to run."""
        meta = self.meta(digest)
        data = self.path(digest).read_bytes()
        return unpack_bundle(
            data, digest, meta.signature, meta.key_id, self.trusted, self.unpacked / digest
        )

    def digests(self) -> list[str]:
        return sorted(p.stem for p in self.root.glob("*.bundle"))

    def load_applied(self) -> dict[str, Any]:
        """What this node ran last (function name → digest and signature), or {}."""
        try:
            applied: dict[str, Any] = json.loads(self.applied_path.read_text())
        except (OSError, ValueError):
            return {}
        return applied

    def save_applied(self, applied: dict[str, Any]) -> None:
        write_atomically(self.applied_path, json.dumps(applied, sort_keys=True).encode())

    def _meta_path(self, digest: str) -> Path:
        return self.root / f"{check_digest(digest)}.json"
