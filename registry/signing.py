"""Ed25519 keys that sign bundles, and the set of public keys a node trusts.

A signature covers a bundle's sha256 digest, never its bytes directly: the signed message is
``b"edgefaas-bundle-v1:" + digest_hex``, so that a signature made for a bundle cannot be
passed off as a signature over anything else. Signatures travel as base64 text.

Key files are PEM: PKCS#8 (unencrypted) for a private key, SubjectPublicKeyInfo for a public
key. A key is named by its *key id*, the first 16 hex characters of the sha256 of its raw
32-byte public key. A private key file is created with mode 0600 and no key file is ever
overwritten.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from registry.errors import BundleRejected, KeyFileError

SIGNED_PREFIX = b"edgefaas-bundle-v1:"
KEY_ID_CHARS = 16
PRIVATE_KEY_MODE = 0o600
PUBLIC_KEY_MODE = 0o644

_KEY_ID = re.compile(r"[0-9a-f]{16}")


def _message(digest_hex: str) -> bytes:
    return SIGNED_PREFIX + digest_hex.encode("ascii")


def _show_key_id(key_id: str) -> str:
    """``key_id`` as it may appear in a message: as is when well formed, else quoted and cut
    (it may come from a request header)."""
    return key_id if _KEY_ID.fullmatch(key_id) else repr(key_id[:40])


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read {what} {path}: {exc.strerror}") from exc


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode`` from the start (O_EXCL: never over an existing file)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError as exc:
        raise KeyFileError(f"{path} already exists; refusing to overwrite a key file") from exc
    except OSError as exc:
        raise KeyFileError(f"cannot create {path}: {exc.strerror}") from exc
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), mode)  # the umask may have taken bits away
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            path.unlink()
        raise


@dataclass(frozen=True, slots=True)
class PublicKey:
    """An Ed25519 public key; equal keys have equal raw bytes."""

    raw: bytes

    def __post_init__(self) -> None:
        if len(self.raw) != 32:
            raise KeyFileError(f"an Ed25519 public key has 32 bytes, not {len(self.raw)}")

    @classmethod
    def from_pem(cls, pem: bytes, source: str = "public key") -> PublicKey:
        """Parse a PEM SubjectPublicKeyInfo; ``source`` names it in errors."""
        try:
            key = serialization.load_pem_public_key(pem)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise KeyFileError(f"{source} is not a PEM public key") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFileError(f"{source} is not an Ed25519 public key")
        return cls.from_key(key)

    @classmethod
    def from_key(cls, key: Ed25519PublicKey) -> PublicKey:
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return cls(raw)

    @classmethod
    def load(cls, path: Path) -> PublicKey:
        return cls.from_pem(_read(path, "public key file"), str(path))

    def save(self, path: Path) -> None:
        """Write the key to a new file ``path`` (0644); an existing file is an error."""
        _write_new(path, self.pem, PUBLIC_KEY_MODE)

    @property
    def key_id(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()[:KEY_ID_CHARS]

    @property
    def pem(self) -> bytes:
        return self._key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def verify_digest(self, digest_hex: str, signature: bytes) -> bool:
        """True if ``signature`` is this key's signature of the bundle digest ``digest_hex``."""
        try:
            self._key().verify(signature, _message(digest_hex))
        except (InvalidSignature, UnicodeEncodeError):
            return False
        return True

    def _key(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(self.raw)


class SigningKey:
    """An Ed25519 private key that signs bundle digests."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.public = PublicKey.from_key(private.public_key())

    def __repr__(self) -> str:
        return f"SigningKey(key_id={self.key_id!r})"

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: Path) -> SigningKey:
        """Read an unencrypted PEM PKCS#8 Ed25519 private key."""
        data = _read(path, "signing key file")
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except TypeError as exc:  # encrypted
            raise KeyFileError(f"signing key {path} is encrypted; edgefaas needs it plain") from exc
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise KeyFileError(f"{path} is not a PEM private key") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFileError(f"{path} is not an Ed25519 private key")
        return cls(key)

    def save(self, private_path: Path, public_path: Path) -> None:
        """Write the private key (0600) and its public key (0644) to two new files. If
        either file exists, nothing is written."""
        for path in (private_path, public_path):
            if os.path.lexists(path):
                raise KeyFileError(f"{path} already exists; refusing to overwrite a key file")
        pem = self._private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _write_new(private_path, pem, PRIVATE_KEY_MODE)
        try:
            self.public.save(public_path)
        except BaseException:
            private_path.unlink()
            raise

    @property
    def key_id(self) -> str:
        return self.public.key_id

    def sign_digest(self, digest_hex: str) -> str:
        """The base64 signature of the bundle digest ``digest_hex``."""
        signature = self._private.sign(_message(digest_hex))
        return base64.b64encode(signature).decode("ascii")


class TrustedKeys:
    """The public keys whose signatures a node accepts, by key id."""

    def __init__(self, keys: Iterable[PublicKey] = ()) -> None:
        self._keys = {key.key_id: key for key in keys}

    def __repr__(self) -> str:
        return f"TrustedKeys({self.key_ids!r})"

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys

    @classmethod
    def load(cls, paths: Iterable[Path]) -> TrustedKeys:
        """Trust each ``.pub`` file named, and every ``*.pub`` file directly inside each
        folder named."""
        keys: list[PublicKey] = []
        for path in paths:
            if path.is_dir():
                keys.extend(PublicKey.load(p) for p in sorted(path.glob("*.pub")))
            elif path.exists():
                keys.append(PublicKey.load(path))
            else:
                raise KeyFileError(f"trusted key path {path} does not exist")
        return cls(keys)

    def with_key(self, key: PublicKey) -> TrustedKeys:
        """These keys and ``key``."""
        return TrustedKeys([*self._keys.values(), key])

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._keys)

    def verify(self, digest_hex: str, signature_b64: str, key_id: str) -> None:
        """Check that ``signature_b64`` is the signature of ``digest_hex`` by the trusted key
        ``key_id``; raise :class:`BundleRejected` saying why not."""
        key = self._keys.get(key_id)
        if key is None:
            trusted = ", ".join(self.key_ids) or "none"
            raise BundleRejected(
                f"signed by key {_show_key_id(key_id)}, which this node does not trust "
                f"(trusted: {trusted})"
            )
        try:
            signature = base64.b64decode(signature_b64, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise BundleRejected("signature is not valid base64") from exc
        if not key.verify_digest(digest_hex, signature):
            raise BundleRejected(f"signature does not match the bundle (key {key_id})")


def generate_key_pair(directory: Path, name: str = "edgefaas-signing") -> tuple[Path, Path]:
    """Write a new key pair as ``directory/NAME.key`` (0600) and ``directory/NAME.pub``;
    return both paths. Existing files are an error and are left as they are."""
    directory.mkdir(parents=True, exist_ok=True)
    private_path, public_path = directory / f"{name}.key", directory / f"{name}.pub"
    SigningKey.generate().save(private_path, public_path)
    return private_path, public_path
