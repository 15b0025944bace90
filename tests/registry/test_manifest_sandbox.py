"""The manifest's ``sandbox`` block: defaults, key-by-key merging, checks with key path and
line, and specs from bundles built before sandboxes existed."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from registry.errors import ManifestError
from registry.manifest import parse_manifest
from registry.sandboxspec import SandboxSpec
from registry.specs import FunctionSpec


def parse(tmp_path: Path, text: str) -> dict[str, FunctionSpec]:
    (tmp_path / "h.py").write_text("def handle(event):\n    return 1\n")
    return parse_manifest(textwrap.dedent(text), "functions.yaml", tmp_path).functions


def test_sandbox_defaults_and_merges_key_by_key(tmp_path: Path) -> None:
    functions = parse(
        tmp_path,
        """\
        version: 1
        defaults:
          sandbox: {tmp_mb: 16, pids: 64}
        functions:
          plain:
            handler: h.py:handle
          compute:
            handler: h.py:handle
            sandbox: {network: none, cpu: 0.5}
        """,
    )
    assert functions["plain"].sandbox == SandboxSpec("host", 16, 1.0, 64)
    assert functions["compute"].sandbox == SandboxSpec("none", 16, 0.5, 64)


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ("{network: bridge}", 'sandbox.network: expected host or none, got "bridge" (line 5)'),
        ("{tmp_mb: 0}", "sandbox.tmp_mb: expected an integer from 1 to 65536, got 0 (line 5)"),
        ("{tmp_mb: true}", "sandbox.tmp_mb: expected an integer from 1 to 65536, got true"),
        ("{cpu: 0}", "sandbox.cpu: expected a number of cores from 0.01 to 1024"),
        ("{cpu: .inf}", "sandbox.cpu: expected a number of cores from 0.01 to 1024"),
        ("{pids: 2}", "sandbox.pids: expected an integer from 8 to 65536, got 2"),
        ("{uid: 0}", 'sandbox.uid: unknown key "uid"'),
        ("none", "sandbox: expected a mapping"),
    ],
)
def test_bad_sandbox_values_name_the_key_and_line(tmp_path: Path, block: str, message: str) -> None:
    text = f"version: 1\nfunctions:\n  f:\n    handler: h.py:handle\n    sandbox: {block}\n"
    with pytest.raises(ManifestError) as info:
        parse(tmp_path, text)
    assert message in str(info.value)
    assert str(info.value).startswith("functions.yaml: functions.f.sandbox")


def test_a_bad_default_is_reported_at_the_defaults_block(tmp_path: Path) -> None:
    text = "version: 1\ndefaults:\n  sandbox: {network: lan}\nfunctions:\n  f:\n"
    text += "    handler: h.py:handle\n    sandbox: {network: host}\n"
    with pytest.raises(ManifestError, match=r"defaults\.sandbox\.network: expected host or none"):
        parse(tmp_path, text)


def test_specs_round_trip_and_old_bundles_get_the_defaults(tmp_path: Path) -> None:
    text = "version: 1\nfunctions:\n  f:\n    handler: h.py:handle\n"
    text += "    sandbox: {network: none, tmp_mb: 8, cpu: 2, pids: 16}\n"
    spec = parse(tmp_path, text)["f"]
    document = spec.to_dict()
    assert document["sandbox"] == {"network": "none", "tmp_mb": 8, "cpu": 2.0, "pids": 16}
    assert FunctionSpec.from_dict(document) == spec
    del document["sandbox"]  # a bundle built before sandboxes
    assert FunctionSpec.from_dict(document).sandbox == SandboxSpec()


@pytest.mark.parametrize(
    "document",
    [{"network": "x", "tmp_mb": 1, "cpu": 1, "pids": 8}, {"network": "host"}, []],
)
def test_a_bundle_with_a_bad_sandbox_is_refused(document: object) -> None:
    with pytest.raises((ValueError, TypeError), match="sandbox"):
        SandboxSpec.from_dict(document)
