"""Verifying and unpacking a bundle on a node — nothing is parsed, unpacked or unpickled
before the digest and the signature check out.

:func:`unpack_bundle` then checks every archive member before it extracts any: no absolute
paths or ``..``, nothing outside ``function.json`` and ``files/``, no devices or fifos, no
link that leaves ``files/``, and limits on member count and unpacked size (archive bombs).
It extracts into a staging folder and moves it into place in one rename.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Mapping
from pathlib import Path

from registry import defaults
from registry.bundle import FILES_DIR, FORMAT, FUNCTION_JSON
from registry.errors import BundleError, BundleRejected
from registry.signing import TrustedKeys
from registry.specs import FunctionSpec

DIGEST_FILE = "bundle.sha256"  # in an unpacked bundle's folder, next to function.json
MAX_FUNCTION_JSON_BYTES = 1024 * 1024

_KINDS = ("file", "module", "pickle")

_SAFE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE)
_UNSAFE_TYPES = {
    tarfile.CHRTYPE: "character device",
    tarfile.BLKTYPE: "block device",
    tarfile.FIFOTYPE: "fifo",
    tarfile.CONTTYPE: "contiguous file",
    tarfile.GNUTYPE_SPARSE: "sparse file",
}


def verify_bundle(
    data: bytes, digest: str, signature: str, key_id: str, trusted: TrustedKeys
) -> None:
    """Check that ``data`` hashes to ``digest`` and that ``signature`` is the trusted key
    ``key_id``'s signature of it; raise :class:`BundleRejected` saying why not."""
    if len(data) > defaults.MAX_BUNDLE_BYTES:
        raise BundleRejected(
            f"bundle is {len(data)} bytes, more than the {defaults.MAX_BUNDLE_BYTES}-byte limit"
        )
    actual = hashlib.sha256(data).hexdigest()
    if actual != digest:
        raise BundleRejected(
            f"bundle digest mismatch: expected {digest[:80]}, got {actual} (tampered or truncated)"
        )
    trusted.verify(digest, signature, key_id)


def check_bundle(
    data: bytes, digest: str, signature: str, key_id: str, trusted: TrustedKeys
) -> None:
    """Everything :func:`unpack_bundle` checks, without extracting: a node runs this before
    it stores (and so offers to peers) a bundle."""
    verify_bundle(data, digest, signature, key_id, trusted)
    with _open_archive(data) as tar:
        _check_archive(tar)


def unpack_bundle(
    data: bytes, digest: str, signature: str, key_id: str, trusted: TrustedKeys, dest: Path
) -> FunctionSpec:
    """Verify the bundle, check every archive member, and unpack it as folder ``dest``
    (made in a temporary sibling, then renamed into place). If ``dest`` already holds this
    digest it is used as it is. Returns the spec with its paths inside ``dest/files``."""
    verify_bundle(data, digest, signature, key_id, trusted)
    held = _held_digest(dest)
    if held == digest:
        return read_function_json(dest)
    if held is not None:
        raise BundleError(
            f"{dest} exists and does not hold bundle {digest}; refusing to replace it"
        )
    with _open_archive(data) as tar:
        members = _check_archive(tar)
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.unpacking-"))
        try:
            _extract(tar, members, staging)
            (staging / DIGEST_FILE).write_text(digest + "\n", encoding="ascii")
            _sync_tree(staging)
            _move_into_place(staging, dest, digest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return read_function_json(dest)


def read_function_json(dest: Path) -> FunctionSpec:
    """The spec of the bundle unpacked in ``dest``, with its paths inside ``dest/files``."""
    path = dest / FUNCTION_JSON
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise BundleError(f"cannot read {path}: {exc.strerror}") from exc
    return _spec_from_document(raw, dest.resolve() / FILES_DIR)


def _held_digest(dest: Path) -> str | None:
    """The digest of the bundle unpacked in ``dest``; None if there is no ``dest`` (or it is
    an empty folder), "" if it holds something else."""
    if not os.path.lexists(dest) or (dest.is_dir() and not any(dest.iterdir())):
        return None
    try:
        return (dest / DIGEST_FILE).read_text(encoding="ascii").strip()
    except (OSError, ValueError):
        return ""


def _spec_from_document(raw: bytes, root: Path) -> FunctionSpec:
    try:
        document = json.loads(raw)
    except ValueError as exc:
        raise BundleRejected(f"function.json is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise BundleRejected("function.json is not a JSON object")
    if document.get("format") != FORMAT:
        raise BundleRejected(
            f"function.json has format {document.get('format')!r}; this node reads format {FORMAT}"
        )
    try:
        handler = dict(document["handler"])
        if handler["kind"] not in _KINDS:
            raise BundleRejected(f"function.json: unknown handler kind {handler['kind']!r}")
        if handler["kind"] != "module":
            handler["target"] = str(root / _safe_relative(handler["target"], "handler"))
        files = [str(root / _safe_relative(p, "file")) for p in document["files"]]
        document = {**document, "root": str(root), "handler": handler, "files": files}
        return FunctionSpec.from_dict(document)
    except KeyError as exc:
        raise BundleRejected(f"function.json lacks the key {exc}") from exc
    except (TypeError, ValueError, AttributeError) as exc:
        raise BundleRejected(f"function.json is invalid: {exc}") from exc


def _safe_relative(value: object, what: str) -> str:
    if not isinstance(value, str) or (value != "." and {"", ".", ".."} & set(value.split("/"))):
        raise BundleRejected(f"function.json: {what} {value!r} is not a path inside files/")
    return value


def _open_archive(data: bytes) -> tarfile.TarFile:
    try:
        return tarfile.open(fileobj=io.BytesIO(data), mode="r:gz")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise BundleRejected(f"bundle is not a gzip'd tar archive: {exc}") from exc


def _check_archive(tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """Every member, checked; none is extracted. Headers are read one at a time, so the
    limits stop an archive bomb before the rest of it is decompressed."""
    members: dict[str, tarfile.TarInfo] = {}
    total = 0
    spec: FunctionSpec | None = None
    try:
        for member in tar:
            name = member.name
            if len(members) >= defaults.MAX_BUNDLE_MEMBERS:
                limit = defaults.MAX_BUNDLE_MEMBERS
                raise BundleRejected(f"member {name!r} is past the {limit}-member limit (a bomb?)")
            _check_member(member, members)
            total += member.size if member.isreg() else 0
            if total > defaults.MAX_UNPACKED_BYTES:
                limit = defaults.MAX_UNPACKED_BYTES
                raise BundleRejected(
                    f"member {name!r} takes the bundle past {limit} bytes unpacked"
                )
            members[name] = member
            if name == FUNCTION_JSON:
                spec = _read_document(tar, member)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise BundleRejected(f"bundle is not a readable tar archive: {exc}") from exc
    if spec is None:
        raise BundleRejected("bundle has no function.json")
    for member in members.values():
        _check_placement(member, members)
    _check_handler(spec, members)
    return list(members.values())


def _check_member(member: tarfile.TarInfo, earlier: Mapping[str, tarfile.TarInfo]) -> None:
    name = member.name
    _check_path(name, f"member {name!r}")
    if name in earlier:
        raise BundleRejected(f"member {name!r} appears twice")
    if member.type not in _SAFE_TYPES:
        what = _UNSAFE_TYPES.get(member.type, f"special member (type {member.type!r})")
        raise BundleRejected(
            f"member {name!r} is a {what}: only regular files, folders and links may travel "
            "in a bundle"
        )
    if name == FUNCTION_JSON and not member.isreg():
        raise BundleRejected("member 'function.json' is not a regular file")
    if name == FILES_DIR and not member.isdir():
        raise BundleRejected("member 'files' is not a folder")
    if member.islnk():
        target = member.linkname
        if target.startswith("/") or ".." in target.split("/") or _top(target) != FILES_DIR:
            raise BundleRejected(f"hard link {name!r} points outside files/ ({target!r})")
        if target not in earlier or not earlier[target].isreg():
            raise BundleRejected(
                f"hard link {name!r} points to {target!r}, which is not a file before it"
            )


def _top(path: str) -> str:
    return path.split("/", 1)[0]


def _check_path(name: str, what: str) -> None:
    parts = name.split("/")
    if name.startswith("/"):
        raise BundleRejected(f"{what} has an absolute path")
    if ".." in parts:
        raise BundleRejected(f"{what} has a '..' component")
    if "" in parts or "." in parts:
        raise BundleRejected(f"{what} has an empty or '.' component")
    if name != FUNCTION_JSON and parts[0] != FILES_DIR:
        raise BundleRejected(f"{what} is outside function.json and files/")


def _check_placement(member: tarfile.TarInfo, members: Mapping[str, tarfile.TarInfo]) -> None:
    """No member is written through a link or a file, and symlinks stay inside files/."""
    _check_folders(member.name, members, f"member {member.name!r}")
    if member.issym():
        _check_symlink(member, members)


def _check_folders(path: str, members: Mapping[str, tarfile.TarInfo], what: str) -> None:
    """Every proper prefix of ``path`` is a folder, or not in the archive."""
    parts = path.split("/")
    for end in range(1, len(parts)):
        prefix = "/".join(parts[:end])
        if prefix in members and not members[prefix].isdir():
            raise BundleRejected(f"{what} lies under {prefix!r}, which is not a folder")


def _check_symlink(member: tarfile.TarInfo, members: Mapping[str, tarfile.TarInfo]) -> None:
    """Resolve the link's target by its text: it must stay inside files/ and not pass
    through another link (whose own target the text does not show)."""
    name, target = member.name, member.linkname
    outside = BundleRejected(f"symlink {name!r} points outside files/ ({target!r})")
    if not target or target.startswith("/"):
        raise outside
    parts = [*name.split("/")[:-1], *target.split("/")]
    resolved: list[str] = []
    for index, part in enumerate(parts):
        if part in ("", "."):
            continue
        if part == "..":
            if len(resolved) <= 1:
                raise outside
            resolved.pop()
            continue
        resolved.append(part)
        through = "/".join(resolved)
        if index < len(parts) - 1 and through in members and not members[through].isdir():
            raise BundleRejected(
                f"symlink {name!r} points through {through!r}, which is not a folder ({target!r})"
            )
    if not resolved or resolved[0] != FILES_DIR:
        raise outside


def _read_document(tar: tarfile.TarFile, member: tarfile.TarInfo) -> FunctionSpec:
    """function.json, checked, as a spec whose paths are archive member names."""
    if member.size > MAX_FUNCTION_JSON_BYTES:
        raise BundleRejected(f"function.json is larger than {MAX_FUNCTION_JSON_BYTES} bytes")
    extracted = tar.extractfile(member)
    if extracted is None:
        raise BundleRejected("member 'function.json' is not a regular file")
    with extracted:
        return _spec_from_document(extracted.read(), Path(FILES_DIR))


def _check_handler(spec: FunctionSpec, members: Mapping[str, tarfile.TarInfo]) -> None:
    if spec.handler.kind == "module":
        return
    member = members.get(spec.handler.target)
    if member is None or not (member.isreg() or member.islnk() or member.issym()):
        raise BundleRejected(
            f"function.json names the handler {spec.handler.target!r}, which is not a file in "
            "the bundle"
        )


def _extract(tar: tarfile.TarFile, members: list[tarfile.TarInfo], staging: Path) -> None:
    # The "data" filter re-checks links and drops owners and special mode bits: a second
    # line behind the checks above.
    try:
        tar.extractall(staging, members=members, filter="data")
    except (tarfile.TarError, ValueError) as exc:
        raise BundleRejected(f"bundle refused while unpacking: {exc}") from exc
    except OSError as exc:
        raise BundleError(f"cannot unpack the bundle into {staging.parent}: {exc}") from exc
    # The function's working folder, even when nothing travels in it (a module handler).
    (staging / FILES_DIR).mkdir(exist_ok=True)


def _sync_tree(top: Path) -> None:
    """Flush every file and folder under ``top`` to disk before it is renamed into place,
    so that a power cut never leaves an unpacked bundle with empty files."""
    for folder, _dirs, files in os.walk(top):
        for name in [*files, "."]:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _move_into_place(staging: Path, dest: Path, digest: str) -> None:
    try:
        os.rename(staging, dest)
    except OSError as exc:
        if _held_digest(dest) == digest:  # unpacked meanwhile by someone else
            return
        raise BundleError(f"cannot move the unpacked bundle to {dest}: {exc.strerror}") from exc
    with contextlib.suppress(OSError):
        fd = os.open(dest.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
