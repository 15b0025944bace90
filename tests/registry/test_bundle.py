from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cloudpickle
import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from registry import defaults
from registry.bundle import Bundle, SignedBundle, build_bundle, build_callable_bundle
from registry.client import deploy_callable
from registry.errors import BundleError, BundleRejected
from registry.manifest import load_manifest
from registry.signing import SigningKey, TrustedKeys
from registry.specs import AsyncSpec, FunctionSpec, HandlerRef, HttpTrigger, SpillSpec
from registry.unpack import read_function_json, unpack_bundle, verify_bundle

MANIFEST = """\
version: 1
functions:
  motion:
    handler: functions/motion/handler.py:detect
    triggers:
      - http: {path: /sensors/motion, methods: [POST, PUT], async: true}
    pool: {min: 0, max: 3, concurrency: 2}
    timeout_s: 5
    memory_mb: 128
    env: {REGION: eu}
    spill: {to: [peers], max_local_wait_ms: 20}
    async: {retries: 4, backoff_s: [2]}
    files: [functions/motion/data/ads.json]
  plugin:
    handler: vendor.plugin:main
    files: [functions/motion/data/ads.json]
"""

# The files of the motion function that travel in its bundle, by path inside its folder.
SHIPPED = {
    "handler.py": b"import json\n\ndef detect(event):\n    return {'motion': True}\n",
    "data/ads.json": b'{"ads": ["spring.png"]}\n',
    "lib/zones.py": b"ZONES = ('door', 'till')\n",
    "run.sh": b"#!/bin/sh\necho hi\n",
}
# Files that are in the folder but never travel.
LEFT_BEHIND = {
    "__pycache__/handler.cpython-311.pyc": b"\x00compiled",
    "lib/zones.pyc": b"\x00compiled",
    ".git/HEAD": b"ref: refs/heads/main\n",
    ".venv/bin/python": b"",
    ".DS_Store": b"\x00",
}


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def trusted(key: SigningKey) -> TrustedKeys:
    return TrustedKeys([key.public])


def make_folder(base: Path) -> Path:
    """A manifest folder with the motion function (and a symlink inside it); returns the
    manifest's path."""
    function = base / "functions" / "motion"
    for rel, data in {**SHIPPED, **LEFT_BEHIND}.items():
        (function / rel).parent.mkdir(parents=True, exist_ok=True)
        (function / rel).write_bytes(data)
    (function / "run.sh").chmod(0o755)
    (function / "latest.json").symlink_to("data/ads.json")
    (base / "functions.yaml").write_text(MANIFEST)
    return base / "functions.yaml"


@pytest.fixture
def spec_of(tmp_path: Path) -> Callable[[str], FunctionSpec]:
    """Build the example folder once (under tmp_path/src) and return its specs by name."""
    manifest = load_manifest(make_folder(tmp_path / "src"))
    return lambda name: manifest.functions[name]


def unpack(signed: SignedBundle, trusted: TrustedKeys, dest: Path) -> FunctionSpec:
    return unpack_bundle(signed.data, signed.digest, signed.signature, signed.key_id, trusted, dest)


def tree(folder: Path) -> dict[str, bytes | str]:
    """Every file (contents) and symlink (target) under ``folder``, by relative path."""
    found: dict[str, bytes | str] = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_symlink():
            found[rel] = os.readlink(path)
        elif path.is_file():
            found[rel] = path.read_bytes()
    return found


def snapshot(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


def members(bundle: Bundle) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(bundle.data), mode="r:gz") as tar:
        return tar.getmembers()


def function_json(bundle: Bundle) -> dict[str, object]:
    with tarfile.open(fileobj=io.BytesIO(bundle.data), mode="r:gz") as tar:
        extracted = tar.extractfile("function.json")
        assert extracted is not None
        loaded: dict[str, object] = json.loads(extracted.read())
        return loaded


# -- building: deterministic, normalised -------------------------------------------------------


def test_same_folder_gives_the_same_bytes(spec_of: Callable[[str], FunctionSpec]) -> None:
    first, second = build_bundle(spec_of("motion")), build_bundle(spec_of("motion"))
    assert first.data == second.data
    assert first.digest == second.digest == hashlib.sha256(first.data).hexdigest()
    assert first.name == "motion"


def test_times_and_permissions_other_than_exec_do_not_change_the_digest(
    spec_of: Callable[[str], FunctionSpec],
) -> None:
    spec = spec_of("motion")
    before = build_bundle(spec).digest
    for path in spec.root.rglob("*"):
        if not path.is_symlink():
            os.utime(path, (1_000_000, 1_000_000))
    (spec.root / "data/ads.json").chmod(0o600)
    assert build_bundle(spec).digest == before
    (spec.root / "lib/zones.py").chmod(0o744)
    assert build_bundle(spec).digest != before


def test_a_changed_file_changes_the_digest(spec_of: Callable[[str], FunctionSpec]) -> None:
    spec = spec_of("motion")
    before = build_bundle(spec).digest
    (spec.root / "data/ads.json").write_bytes(b'{"ads": ["summer.png"]}\n')
    assert build_bundle(spec).digest != before


def test_hidden_and_compiled_files_are_left_out(spec_of: Callable[[str], FunctionSpec]) -> None:
    spec = spec_of("motion")
    before = build_bundle(spec).digest
    (spec.root / ".git/ORIG_HEAD").write_text("abc\n")
    (spec.root / "__pycache__/zones.cpython-311.pyc").write_bytes(b"\x01")
    assert build_bundle(spec).digest == before
    names = [m.name for m in members(build_bundle(spec))]
    assert names == [
        "function.json",
        "files/data/ads.json",
        "files/handler.py",
        "files/latest.json",
        "files/lib/zones.py",
        "files/run.sh",
    ]


def test_the_digest_does_not_depend_on_where_the_folder_is(
    tmp_path: Path, spec_of: Callable[[str], FunctionSpec]
) -> None:
    shutil.copytree(tmp_path / "src", tmp_path / "elsewhere", symlinks=True)
    moved = load_manifest(tmp_path / "elsewhere/functions.yaml").functions["motion"]
    assert build_bundle(moved).data == build_bundle(spec_of("motion")).data


def test_members_and_gzip_header_are_normalised(spec_of: Callable[[str], FunctionSpec]) -> None:
    bundle = build_bundle(spec_of("motion"))
    assert bundle.data[:3] == b"\x1f\x8b\x08"
    assert bundle.data[3] & 0x08 == 0  # no file name
    assert bundle.data[4:8] == b"\x00\x00\x00\x00"  # no time
    modes = {}
    for member in members(bundle):
        assert (member.mtime, member.uid, member.gid) == (0, 0, 0)
        assert (member.uname, member.gname) == ("", "")
        modes[member.name] = member.mode
    assert modes["files/run.sh"] == 0o755
    assert modes["files/handler.py"] == modes["files/data/ads.json"] == 0o644
    link = next(m for m in members(bundle) if m.name == "files/latest.json")
    assert link.issym() and link.linkname == "data/ads.json"


def test_function_json_has_paths_relative_to_files(
    spec_of: Callable[[str], FunctionSpec],
) -> None:
    spec = spec_of("motion")
    document = function_json(build_bundle(spec))
    expected = spec.to_dict()
    del expected["root"]
    expected.update(
        format=1,
        handler={"kind": "file", "target": "handler.py", "attr": "detect"},
        files=["data/ads.json"],
    )
    assert document == expected
    with tarfile.open(fileobj=io.BytesIO(build_bundle(spec).data), mode="r:gz") as tar:
        extracted = tar.extractfile("function.json")
        assert extracted is not None
        raw = extracted.read()
    assert raw == json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def test_a_module_handler_bundles_only_its_declared_files(
    spec_of: Callable[[str], FunctionSpec],
) -> None:
    bundle = build_bundle(spec_of("plugin"))
    assert [m.name for m in members(bundle)] == [
        "function.json",
        "files/functions/motion/data/ads.json",
    ]
    document = function_json(bundle)
    assert document["handler"] == {"kind": "module", "target": "vendor.plugin", "attr": "main"}
    assert document["files"] == ["functions/motion/data/ads.json"]


def test_a_declared_file_outside_the_folder_is_an_error(
    tmp_path: Path, spec_of: Callable[[str], FunctionSpec]
) -> None:
    outside = tmp_path / "src/functions/prices.csv"
    outside.write_text("apple,1\n")
    spec = dataclasses.replace(spec_of("motion"), files=(outside,))
    with pytest.raises(BundleError) as caught:
        build_bundle(spec)
    message = str(caught.value)
    assert f"file {outside} is outside the function's folder" in message
    assert "files must be inside the function's folder to travel in its bundle" in message


def test_a_symlink_leaving_the_folder_is_an_error(
    tmp_path: Path, spec_of: Callable[[str], FunctionSpec]
) -> None:
    spec = spec_of("motion")
    (tmp_path / "secret.txt").write_text("password\n")
    (spec.root / "lib/secret").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(BundleError, match=re.escape(f"symlink {spec.root / 'lib/secret'} points")):
        build_bundle(spec)


def test_bundle_size_limit(
    monkeypatch: pytest.MonkeyPatch, spec_of: Callable[[str], FunctionSpec]
) -> None:
    spec = spec_of("motion")
    (spec.root / "model.bin").write_bytes(os.urandom(20_000))
    monkeypatch.setattr(defaults, "MAX_BUNDLE_BYTES", 10_000)
    with pytest.raises(BundleError, match="larger than the 10000-byte limit"):
        build_bundle(spec)
    monkeypatch.setattr(defaults, "MAX_BUNDLE_BYTES", 40_000)
    assert len(build_bundle(spec).data) <= 40_000


def test_too_many_files_is_an_error(
    monkeypatch: pytest.MonkeyPatch, spec_of: Callable[[str], FunctionSpec]
) -> None:
    monkeypatch.setattr(defaults, "MAX_BUNDLE_MEMBERS", 4)
    with pytest.raises(BundleError, match="5 files are more than a bundle may hold"):
        build_bundle(spec_of("motion"))


# -- round trip ------------------------------------------------------------------------------


def test_build_sign_unpack_round_trip(
    tmp_path: Path,
    key: SigningKey,
    trusted: TrustedKeys,
    spec_of: Callable[[str], FunctionSpec],
) -> None:
    spec = spec_of("motion")
    signed = build_bundle(spec).sign(key)
    assert signed.key_id == key.key_id
    dest = tmp_path / "node/unpacked" / signed.digest

    unpacked = unpack(signed, trusted, dest)

    root = dest.resolve() / "files"
    assert unpacked == dataclasses.replace(
        spec,
        root=root,
        handler=HandlerRef("file", str(root / "handler.py"), "detect"),
        files=(root / "data/ads.json",),
    )
    assert tree(root) == {**SHIPPED, "latest.json": "data/ads.json"}
    assert (root / "latest.json").read_bytes() == SHIPPED["data/ads.json"]
    assert stat.S_IMODE((root / "run.sh").stat().st_mode) & 0o100
    assert not stat.S_IMODE((root / "handler.py").stat().st_mode) & 0o111
    assert unpacked.spill == SpillSpec(to=("peers",), max_local_wait_ms=20)
    assert unpacked.async_policy == AsyncSpec(retries=4, backoff_s=(2.0,))
    assert unpacked.triggers == (HttpTrigger("/sensors/motion", ("POST", "PUT"), is_async=True),)
    assert read_function_json(dest) == unpacked
    assert sorted(os.listdir(dest.parent)) == [signed.digest]  # no staging folder left


def test_an_unpacked_bundle_builds_back_to_the_same_digest(
    tmp_path: Path, key: SigningKey, trusted: TrustedKeys, spec_of: Callable[[str], FunctionSpec]
) -> None:
    signed = build_bundle(spec_of("motion")).sign(key)
    unpacked = unpack(signed, trusted, tmp_path / "node" / signed.digest)
    assert build_bundle(unpacked).digest == signed.digest


def test_a_module_handler_round_trip(
    tmp_path: Path, key: SigningKey, trusted: TrustedKeys, spec_of: Callable[[str], FunctionSpec]
) -> None:
    signed = build_bundle(spec_of("plugin")).sign(key)
    unpacked = unpack(signed, trusted, tmp_path / "d")
    root = (tmp_path / "d").resolve() / "files"
    assert unpacked.handler == HandlerRef("module", "vendor.plugin", "main")
    assert unpacked.root == root
    assert unpacked.files == (root / "functions/motion/data/ads.json",)
    assert unpacked.files[0].read_bytes() == SHIPPED["data/ads.json"]


def test_unpacking_into_a_folder_that_holds_the_digest_reuses_it(
    tmp_path: Path, key: SigningKey, trusted: TrustedKeys, spec_of: Callable[[str], FunctionSpec]
) -> None:
    signed = build_bundle(spec_of("motion")).sign(key)
    dest = tmp_path / "d"
    first = unpack(signed, trusted, dest)
    marker = dest / "files/handler.py"
    marker.write_text("# not extracted again\n")

    assert unpack(signed, trusted, dest) == first
    assert marker.read_text() == "# not extracted again\n"


def test_unpacking_into_a_folder_that_holds_another_bundle_is_an_error(
    tmp_path: Path, key: SigningKey, trusted: TrustedKeys, spec_of: Callable[[str], FunctionSpec]
) -> None:
    dest = tmp_path / "d"
    unpack(build_bundle(spec_of("motion")).sign(key), trusted, dest)
    other = build_bundle(spec_of("plugin")).sign(key)
    with pytest.raises(BundleError, match="exists and does not hold bundle"):
        unpack(other, trusted, dest)
    assert read_function_json(dest).name == "motion"


def test_an_empty_destination_folder_is_filled(
    tmp_path: Path, key: SigningKey, trusted: TrustedKeys, spec_of: Callable[[str], FunctionSpec]
) -> None:
    (tmp_path / "d").mkdir()
    assert (
        unpack(build_bundle(spec_of("motion")).sign(key), trusted, tmp_path / "d").name == "motion"
    )


# -- verification ----------------------------------------------------------------------------


def test_a_flipped_byte_is_a_digest_mismatch(
    tmp_path: Path, key: SigningKey, trusted: TrustedKeys, spec_of: Callable[[str], FunctionSpec]
) -> None:
    signed = build_bundle(spec_of("motion")).sign(key)
    data = bytearray(signed.data)
    data[len(data) // 2] ^= 0x01
    flipped = bytes(data)
    message = (
        f"bundle digest mismatch: expected {signed.digest}, got "
        f"{hashlib.sha256(flipped).hexdigest()} (tampered or truncated)"
    )
    with pytest.raises(BundleRejected) as caught:
        unpack(dataclasses.replace(signed, data=flipped), trusted, tmp_path / "d")
    assert str(caught.value) == message
    with pytest.raises(BundleRejected, match="digest mismatch"):
        verify_bundle(signed.data[:-1], signed.digest, signed.signature, key.key_id, trusted)
    assert not (tmp_path / "d").exists()


def test_a_bundle_signed_by_an_untrusted_key_is_refused(
    tmp_path: Path, trusted: TrustedKeys, spec_of: Callable[[str], FunctionSpec]
) -> None:
    stranger = SigningKey.generate()
    signed = build_bundle(spec_of("motion")).sign(stranger)
    with pytest.raises(BundleRejected, match=f"signed by key {stranger.key_id}, which this node"):
        unpack(signed, trusted, tmp_path / "d")
    assert not (tmp_path / "d").exists()


def test_a_valid_signature_of_another_digest_is_refused(
    tmp_path: Path, key: SigningKey, trusted: TrustedKeys, spec_of: Callable[[str], FunctionSpec]
) -> None:
    signed = build_bundle(spec_of("motion")).sign(key)
    other = build_bundle(spec_of("plugin")).sign(key)
    swapped = dataclasses.replace(signed, signature=other.signature)
    with pytest.raises(BundleRejected, match="signature does not match the bundle"):
        unpack(swapped, trusted, tmp_path / "d")
    assert not (tmp_path / "d").exists()


def test_the_signature_is_checked_before_the_archive_is_read(
    tmp_path: Path, key: SigningKey, trusted: TrustedKeys
) -> None:
    garbage = b"this is not a gzip'd tar"
    digest = hashlib.sha256(garbage).hexdigest()
    with pytest.raises(BundleRejected, match="signature does not match"):
        unpack_bundle(garbage, digest, key.sign_digest("0" * 64), key.key_id, trusted, tmp_path)
    with pytest.raises(BundleRejected, match="not a gzip'd tar archive"):
        unpack_bundle(garbage, digest, key.sign_digest(digest), key.key_id, trusted, tmp_path / "d")
    assert not (tmp_path / "d").exists()


# -- crafted archives, signed by a trusted key: only the archive checks can refuse them ----------

DOCUMENT: dict[str, Any] = {
    "format": 1,
    "name": "evil",
    "handler": {"kind": "file", "target": "handler.py", "attr": "handle"},
    "triggers": [],
    "pool": {
        "min": 1,
        "max": 1,
        "concurrency": 1,
        "queue_max": 8,
        "max_queue_wait_ms": 100,
        "idle_timeout_s": 1.0,
    },
    "timeout_s": 1.0,
    "memory_mb": 64,
    "env": {},
    "files": [],
}


def with_spill(**spill: object) -> bytes:
    """DOCUMENT with a spill object: the defaults, changed by ``spill``."""
    return json.dumps({**DOCUMENT, "spill": {**SpillSpec().to_dict(), **spill}}).encode()


def with_async(**policy: object) -> bytes:
    """DOCUMENT with an async object: the defaults, changed by ``policy``."""
    return json.dumps({**DOCUMENT, "async": {**AsyncSpec().to_dict(), **policy}}).encode()


def with_trigger(**trigger: object) -> bytes:
    """DOCUMENT with one trigger: POST /t, changed by ``trigger``."""
    return json.dumps(
        {**DOCUMENT, "triggers": [{"path": "/t", "methods": ["POST"], **trigger}]}
    ).encode()


def regular(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def special(name: str, kind: bytes, target: str = "") -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


def craft(*extra: tuple[tarfile.TarInfo, bytes | None], document: bytes | None = None) -> bytes:
    """A bundle with a valid function.json and handler, then ``extra`` members."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        body = document if document is not None else json.dumps(DOCUMENT).encode()
        for info, data in [
            regular("function.json", body),
            regular("files/handler.py", b"def handle(event):\n    return 1\n"),
            *extra,
        ]:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def test_function_json_carries_async(spec_of: Callable[[str], FunctionSpec]) -> None:
    document = function_json(build_bundle(spec_of("motion")))
    assert document["async"] == {"retries": 4, "backoff_s": [2.0], "max_age_s": 21600.0}
    assert document["triggers"] == [
        {"path": "/sensors/motion", "methods": ["POST", "PUT"], "async": True}
    ]


def unpack_crafted(data: bytes, key: SigningKey, trusted: TrustedKeys, dest: Path) -> FunctionSpec:
    digest = hashlib.sha256(data).hexdigest()
    return unpack_bundle(data, digest, key.sign_digest(digest), key.key_id, trusted, dest)


def test_a_crafted_archive_without_tricks_unpacks(
    tmp_path: Path, key: SigningKey, trusted: TrustedKeys
) -> None:
    """The control for the tests below: what ``craft`` makes is accepted as such."""
    data = craft(
        regular("files/sub/data.txt", b"data"),
        special("files/sub/link", tarfile.SYMTYPE, "../handler.py"),
        special("files/hard", tarfile.LNKTYPE, "files/sub/data.txt"),
        special("files/top", tarfile.SYMTYPE, "."),
    )
    spec = unpack_crafted(data, key, trusted, tmp_path / "d")
    root = spec.root
    assert (root / "sub/link").read_bytes() == (root / "handler.py").read_bytes()
    assert (root / "hard").read_bytes() == b"data"
    assert spec.name == "evil"
    assert spec.spill == SpillSpec()  # a function.json from before spill-over existed
    assert spec.async_policy == AsyncSpec()  # ... and from before async calls existed


def test_a_function_json_from_before_async_calls_unpacks_with_the_defaults(
    tmp_path: Path, key: SigningKey, trusted: TrustedKeys
) -> None:
    document = json.dumps({**DOCUMENT, "triggers": [{"path": "/t", "methods": ["GET"]}]})
    spec = unpack_crafted(craft(document=document.encode()), key, trusted, tmp_path / "d")
    assert spec.triggers == (HttpTrigger("/t", ("GET",), is_async=False),)
    assert spec.async_policy == AsyncSpec(2, (1.0, 10.0, 60.0), 21600.0)


MALICIOUS = {
    "dot-dot": ([regular("../evil")], "member '../evil' has a '..' component"),
    "dot-dot inside files": (
        [regular("files/../../evil")],
        "member 'files/../../evil' has a '..' component",
    ),
    "absolute path": ([regular("/abs/path")], "member '/abs/path' has an absolute path"),
    "symlink to /etc/passwd": (
        [special("files/passwd", tarfile.SYMTYPE, "/etc/passwd")],
        "symlink 'files/passwd' points outside files/ ('/etc/passwd')",
    ),
    "symlink to function.json": (
        [special("files/doc", tarfile.SYMTYPE, "../function.json")],
        "symlink 'files/doc' points outside files/ ('../function.json')",
    ),
    "symlink through a symlink": (
        [
            special("files/d/up", tarfile.SYMTYPE, ".."),
            special("files/escape", tarfile.SYMTYPE, "d/up/../function.json"),
        ],
        "symlink 'files/escape' points through 'files/d/up', which is not a folder",
    ),
    "file written through a symlink": (
        [special("files/out", tarfile.SYMTYPE, "."), regular("files/out/x")],
        "member 'files/out/x' lies under 'files/out', which is not a folder",
    ),
    "hard link to ../x": (
        [special("files/h", tarfile.LNKTYPE, "../x")],
        "hard link 'files/h' points outside files/ ('../x')",
    ),
    "hard link to /etc/passwd": (
        [special("files/h", tarfile.LNKTYPE, "/etc/passwd")],
        "hard link 'files/h' points outside files/ ('/etc/passwd')",
    ),
    "character device": (
        [special("files/tty", tarfile.CHRTYPE)],
        "member 'files/tty' is a character device",
    ),
    "block device": ([special("files/sda", tarfile.BLKTYPE)], "member 'files/sda' is a block"),
    "fifo": ([special("files/pipe", tarfile.FIFOTYPE)], "member 'files/pipe' is a fifo"),
    "outside files/": (
        [regular("etc/cron.d/job")],
        "member 'etc/cron.d/job' is outside function.json and files/",
    ),
    "a second copy of a member": (
        [regular("files/handler.py", b"import os\n")],
        "member 'files/handler.py' appears twice",
    ),
}


@pytest.mark.parametrize("case", MALICIOUS)
def test_a_malicious_archive_is_refused_and_nothing_is_written(
    case: str, tmp_path: Path, key: SigningKey, trusted: TrustedKeys
) -> None:
    extra, message = MALICIOUS[case]
    data = craft(*extra)
    before = snapshot(tmp_path)
    dest = tmp_path / "node/unpacked/d"

    with pytest.raises(BundleRejected) as caught:
        unpack_crafted(data, key, trusted, dest)

    assert message in str(caught.value)
    assert snapshot(tmp_path) == before
    assert not dest.exists()


def test_an_archive_with_too_many_members_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, key: SigningKey, trusted: TrustedKeys
) -> None:
    data = craft(*[regular(f"files/f{i:02}") for i in range(10)])
    monkeypatch.setattr(defaults, "MAX_BUNDLE_MEMBERS", 5)
    with pytest.raises(BundleRejected, match="member 'files/f03' is past the 5-member limit"):
        unpack_crafted(data, key, trusted, tmp_path / "d")
    assert snapshot(tmp_path) == set()


def test_an_archive_that_unpacks_too_large_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, key: SigningKey, trusted: TrustedKeys
) -> None:
    data = craft(regular("files/zeros", bytes(1_000_000)))
    assert len(data) < 10_000  # it compresses: a small bomb
    monkeypatch.setattr(defaults, "MAX_UNPACKED_BYTES", 100_000)
    with pytest.raises(BundleRejected, match="member 'files/zeros' takes the bundle past 100000"):
        unpack_crafted(data, key, trusted, tmp_path / "d")
    assert snapshot(tmp_path) == set()


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (b"{", "function.json is not valid JSON"),
        (json.dumps({**DOCUMENT, "format": 2}).encode(), "has format 2; this node reads format 1"),
        (
            json.dumps(
                {**DOCUMENT, "handler": {**DOCUMENT["handler"], "target": "../x.py"}}
            ).encode(),
            "handler '../x.py' is not a path inside files/",
        ),
        (
            json.dumps(
                {**DOCUMENT, "handler": {**DOCUMENT["handler"], "target": "gone.py"}}
            ).encode(),
            "names the handler 'files/gone.py', which is not a file in the bundle",
        ),
        (
            json.dumps({**DOCUMENT, "files": ["/etc/passwd"]}).encode(),
            "'/etc/passwd' is not a path",
        ),
        (json.dumps({"format": 1}).encode(), "function.json lacks the key 'handler'"),
        (
            with_spill(to=["peers", "edge"]),
            "function.json is invalid: spill.to: unknown tier 'edge'; expected peers or cloud",
        ),
        (with_spill(to=["cloud", "cloud"]), "spill.to: duplicate tier 'cloud'"),
        (with_spill(to="peers"), "spill.to: expected a list of tiers, got 'peers'"),
        (with_spill(max_local_wait_ms=-1), "spill.max_local_wait_ms: expected an integer ≥ 0"),
        (with_spill(max_local_wait_ms=0.5), "spill.max_local_wait_ms: expected an integer ≥ 0"),
        (with_spill(cloud_compatible="yes"), "spill.cloud_compatible: expected true or false"),
        (with_spill(colour="red"), "spill: unknown key 'colour'"),
        (json.dumps({**DOCUMENT, "spill": ["peers"]}).encode(), "spill: expected an object"),
        (
            with_async(retries=-1),
            "function.json is invalid: async.retries: expected an integer from 0 to 10, got -1",
        ),
        (with_async(retries=11), "async.retries: expected an integer from 0 to 10, got 11"),
        (with_async(retries="2"), "async.retries: expected an integer from 0 to 10, got '2'"),
        (with_async(backoff_s=[]), "async.backoff_s: expected a list of 1 to 10 numbers"),
        (with_async(backoff_s=5), "async.backoff_s: expected a list of 1 to 10 numbers"),
        (with_async(backoff_s=[1, 0]), "async.backoff_s[1]: expected a number > 0 and ≤ 604800"),
        (with_async(max_age_s=0), "async.max_age_s: expected a number > 0 and ≤ 604800 (7 days)"),
        (with_async(max_age_s=10**6), "async.max_age_s: expected a number > 0 and ≤ 604800"),
        (with_async(colour="red"), "async: unknown key 'colour'"),
        (json.dumps({**DOCUMENT, "async": [2]}).encode(), "async: expected an object"),
        (with_trigger(**{"async": "yes"}), "trigger /t: async: expected true or false, got 'yes'"),
    ],
)
def test_a_bad_function_json_is_refused(
    document: bytes, message: str, tmp_path: Path, key: SigningKey, trusted: TrustedKeys
) -> None:
    with pytest.raises(BundleRejected, match=re.escape(message)):
        unpack_crafted(craft(document=document), key, trusted, tmp_path / "d")
    assert snapshot(tmp_path) == set()


_PARTS = st.sampled_from(["a", "b", "..", ".", "files", "function.json"])
_NAMES = st.lists(st.sampled_from(["a", "b", "c"]), min_size=1, max_size=3).map(
    lambda parts: "files/" + "/".join(parts)
)
_LINKS = st.tuples(_NAMES, st.lists(_PARTS, min_size=1, max_size=4).map("/".join))
_MEMBERS = st.lists(
    st.one_of(
        _NAMES.map(lambda name: regular(name, b"payload")),
        _LINKS.map(lambda link: special(link[0], tarfile.SYMTYPE, link[1])),
    ),
    max_size=6,
)


@settings(max_examples=300, deadline=None)
@given(extra=_MEMBERS)
def test_whatever_is_accepted_stays_inside_files(
    extra: list[tuple[tarfile.TarInfo, bytes | None]],
) -> None:
    """Random files and links: the checks either refuse the archive before extracting, or
    every path that was unpacked resolves inside files/ and function.json is intact."""
    key = SigningKey.generate()
    with tempfile.TemporaryDirectory() as scratch:
        base = Path(scratch).resolve()
        dest = base / "d"
        try:
            spec = unpack_crafted(craft(*extra), key, TrustedKeys([key.public]), dest)
        except BundleRejected as exc:
            assert "while unpacking" not in str(exc)  # the checks, not the tar filter, refused
            assert snapshot(base) == set()
            return
        assert spec.name == "evil"
        assert json.loads((dest / "function.json").read_bytes()) == DOCUMENT
        assert snapshot(base) - {"d"} == {f"d/{p}" for p in snapshot(dest)}
        for path in (dest / "files").rglob("*"):
            assert Path(os.path.realpath(path)).is_relative_to(dest / "files")


# -- callables -------------------------------------------------------------------------------


def test_a_cloudpickled_closure_round_trip(
    tmp_path: Path, key: SigningKey, trusted: TrustedKeys
) -> None:
    factor = 3

    def scale(event: dict[str, int]) -> dict[str, int]:
        return {"scaled": event["x"] * factor}

    bundle = build_callable_bundle(
        scale,
        "scaler",
        pool={"max": 2},
        env={"UNIT": "cm"},
        triggers=["/scale", HttpTrigger("/scale/later", ("POST",), is_async=True)],
        spill={"to": ["cloud"], "cloud_compatible": True},
        async_policy={"retries": 1, "max_age_s": 60},
    )
    signed = bundle.sign(key)
    dest = tmp_path / "node" / signed.digest

    spec = unpack(signed, trusted, dest)

    root = dest.resolve() / "files"
    assert spec.handler == HandlerRef("pickle", str(root / "callable.pkl"), "scale")
    assert spec.root == root
    assert spec.triggers == (
        HttpTrigger("/scale", defaults.DEFAULT_TRIGGER_METHODS, is_async=False),
        HttpTrigger("/scale/later", ("POST",), is_async=True),
    )
    assert (spec.pool.min, spec.pool.max) == (defaults.POOL_MIN, 2)
    assert spec.pool.concurrency == defaults.POOL_CONCURRENCY
    assert (spec.timeout_s, spec.memory_mb) == (defaults.TIMEOUT_S, defaults.MEMORY_MB)
    assert spec.env == {"UNIT": "cm"}
    assert spec.files == ()
    assert spec.spill == SpillSpec(("cloud",), defaults.SPILL_MAX_LOCAL_WAIT_MS, True)
    assert spec.async_policy == AsyncSpec(1, defaults.ASYNC_BACKOFF_S, 60.0)
    with open(spec.handler.target, "rb") as pickled:
        assert cloudpickle.loads(pickled.read())({"x": 2}) == {"scaled": 6}


def test_a_cloudpickled_closure_runs_in_a_fresh_interpreter(
    tmp_path: Path, key: SigningKey, trusted: TrustedKeys
) -> None:
    """As on a node: another process, without the deployer's modules on its path."""
    greeting = "hello"
    bundle = build_callable_bundle(lambda event: f"{greeting} {event}", "greeter")
    spec = unpack(bundle.sign(key), trusted, tmp_path / "d")
    script = textwrap.dedent(
        f"""
        import cloudpickle
        with open({spec.handler.target!r}, "rb") as f:
            print(cloudpickle.load(f)("shop"))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-I", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout == "hello shop\n"


def test_a_callable_bundle_with_a_bad_signature_is_not_unpacked(
    tmp_path: Path, key: SigningKey, trusted: TrustedKeys
) -> None:
    bundle = build_callable_bundle(lambda event: event, "echo")
    forged = SigningKey.generate().sign_digest(bundle.digest)
    with pytest.raises(BundleRejected, match="signature does not match"):
        unpack_bundle(bundle.data, bundle.digest, forged, key.key_id, trusted, tmp_path / "d")
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(
    ("settings_", "message"),
    [
        ({"name": "Bad Name"}, "invalid function name 'Bad Name'"),
        ({"pool": {"maximum": 2}}, "unknown pool setting 'maximum'"),
        ({"pool": {"min": 3, "max": 2}}, "invalid pool"),
        ({"pool": {"max": "lots"}}, "invalid pool"),
        ({"timeout_s": 0}, "invalid timeout_s 0"),
        ({"memory_mb": 1}, "invalid memory_mb 1"),
        ({"env": {"1X": "y"}}, "invalid env entry '1X'"),
        ({"triggers": ["scale"]}, "invalid trigger"),
        (
            {"spill": {"tier": ["peers"]}},
            "unknown spill setting 'tier'; expected one of to, max_local_wait_ms, cloud_compatible",
        ),
        ({"spill": ["peers"]}, "invalid spill ['peers']: expected a SpillSpec or a mapping of to,"),
        (
            {"spill": {"to": ["edge"]}},
            "invalid spill.to: unknown tier 'edge'; expected peers or cloud",
        ),
        ({"spill": {"to": ["peers", "peers"]}}, "invalid spill.to: duplicate tier 'peers'"),
        ({"spill": {"to": "cloud"}}, "invalid spill.to: expected a list of tiers, got 'cloud'"),
        (
            {"spill": {"max_local_wait_ms": -1}},
            "invalid spill.max_local_wait_ms: expected an integer ≥ 0, got -1",
        ),
        (
            {"spill": {"cloud_compatible": 1}},
            "invalid spill.cloud_compatible: expected true or false, got 1",
        ),
        (
            {"async_policy": {"retry": 1}},
            "unknown async setting 'retry'; expected one of retries, backoff_s, max_age_s",
        ),
        (
            {"async_policy": [1]},
            "invalid async_policy [1]: expected an AsyncSpec or a mapping of retries,",
        ),
        (
            {"async_policy": {"retries": 11}},
            "invalid async.retries: expected an integer from 0 to 10, got 11",
        ),
        (
            {"async_policy": {"backoff_s": [1, -2]}},
            "invalid async.backoff_s[1]: expected a number > 0 and ≤ 604800 (7 days), got -2",
        ),
        (
            {"async_policy": {"max_age_s": 0}},
            "invalid async.max_age_s: expected a number > 0 and ≤ 604800 (7 days), got 0",
        ),
    ],
)
def test_callable_bundle_settings_are_checked(settings_: dict[str, object], message: str) -> None:
    arguments: dict[str, Any] = {"name": "fine", **settings_}
    with pytest.raises(BundleError, match=re.escape(message)):
        build_callable_bundle(lambda event: event, **arguments)


@pytest.mark.parametrize(
    ("spill", "expected"),
    [
        (None, SpillSpec()),
        ({}, SpillSpec()),
        ({"to": ["cloud", "peers"]}, SpillSpec(("peers", "cloud"))),
        ({"to": [], "max_local_wait_ms": 0}, SpillSpec((), 0)),
        (SpillSpec(("peers",), 30, True), SpillSpec(("peers",), 30, True)),
    ],
)
def test_a_callable_bundle_carries_its_spill(
    spill: SpillSpec | dict[str, Any] | None, expected: SpillSpec
) -> None:
    bundle = build_callable_bundle(lambda event: event, "echo", spill=spill)
    assert function_json(bundle)["spill"] == expected.to_dict()


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (None, AsyncSpec()),
        ({}, AsyncSpec()),
        ({"retries": 0}, AsyncSpec(0)),
        ({"backoff_s": [3, 30]}, AsyncSpec(backoff_s=(3.0, 30.0))),
        (AsyncSpec(7, (1.5,), 600), AsyncSpec(7, (1.5,), 600)),
    ],
)
def test_a_callable_bundle_carries_its_async_policy(
    policy: AsyncSpec | dict[str, Any] | None, expected: AsyncSpec
) -> None:
    bundle = build_callable_bundle(lambda event: event, "echo", async_policy=policy)
    assert function_json(bundle)["async"] == expected.to_dict()


def test_deploy_callable_ships_its_spill(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, key: SigningKey, trusted: TrustedKeys
) -> None:
    """Against a stand-in gateway: the uploaded bundle unpacks with the spill asked for."""
    uploaded: dict[str, bytes] = {}
    running: dict[str, dict[str, str]] = {}  # function → {"digest": ...}, as a node reports

    def gateway(request: httpx.Request) -> httpx.Response:
        if request.method == "HEAD":
            return httpx.Response(404)
        if request.method == "PUT":
            uploaded[request.url.path.rsplit("/", 1)[-1]] = request.read()
            return httpx.Response(201)
        if request.method == "POST":
            body = json.loads(request.content)
            running[body["name"]] = {"digest": body["digest"]}
            return httpx.Response(200, json={"name": body["name"], "version": 1})
        return httpx.Response(200, json={"nodes": [{"name": "n1", "functions": running}]})

    real_client = httpx.Client
    transport = httpx.MockTransport(gateway)
    monkeypatch.setattr(
        httpx, "Client", lambda **options: real_client(transport=transport, **options)
    )

    entry = deploy_callable(
        lambda event: event,
        name="cam",
        token="admin",
        signing_key=key,
        wait_s=5.0,
        spill={"to": [], "max_local_wait_ms": 5},
        async_policy={"retries": 0},
    )

    assert entry == {"name": "cam", "version": 1}
    [(digest, data)] = uploaded.items()
    signature = key.sign_digest(digest)
    spec = unpack_bundle(data, digest, signature, key.key_id, trusted, tmp_path / "d")
    assert spec.spill == SpillSpec(to=(), max_local_wait_ms=5, cloud_compatible=False)
    assert spec.spill.pinned
    assert spec.async_policy == AsyncSpec(retries=0)


def test_gzip_stream_of_a_bundle_is_plain(spec_of: Callable[[str], FunctionSpec]) -> None:
    """Any gzip reader reads it: the archive is an ordinary .tar.gz."""
    raw = gzip.decompress(build_bundle(spec_of("motion")).data)
    assert len(raw) % tarfile.RECORDSIZE == 0
