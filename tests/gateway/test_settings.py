from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from gateway import settings as settings_module
from gateway.errors import SettingsError
from gateway.settings import (
    CLIENT,
    UP,
    SettingInfo,
    Settings,
    declared,
    markdown_table,
    parse_value,
    resolve,
)

OPERATIONS_DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def info(name: str) -> SettingInfo:
    return next(row for row in declared() if row.name == name)


def test_defaults() -> None:
    settings = resolve({}, {})

    assert settings == Settings()
    assert (settings.host, settings.port, settings.max_body_bytes) == ("127.0.0.1", 8080, 6 << 20)
    assert (settings.grace_s, settings.log_level, settings.call_log) == (30.0, "info", True)
    assert (settings.manifest, settings.data_dir, settings.admin_token) == (None, None, "")


def test_flag_beats_environment_beats_default() -> None:
    env = {"EDGEFAAS_PORT": "9100", "EDGEFAAS_HOST": "0.0.0.0"}

    settings = resolve({"port": 9000, "host": None}, env)

    assert settings.port == 9000  # flag
    assert settings.host == "0.0.0.0"  # environment, the flag was not given
    assert settings.grace_s == 30.0  # default


def test_flag_given_means_the_environment_is_not_read() -> None:
    assert resolve({"port": 9000}, {"EDGEFAAS_PORT": "not a number"}).port == 9000


def test_other_parsed_arguments_are_ignored() -> None:
    assert resolve({"command": "up", "verbose": True}, {}) == Settings()


@pytest.mark.parametrize(
    ("env", "name", "value"),
    [
        ({"EDGEFAAS_PORT": "9100"}, "port", 9100),
        ({"EDGEFAAS_PORT": " 9100 "}, "port", 9100),
        ({"EDGEFAAS_GRACE_S": "2.5"}, "grace_s", 2.5),
        ({"EDGEFAAS_MAX_BODY_BYTES": "1024"}, "max_body_bytes", 1024),
        ({"EDGEFAAS_MANIFEST": "/srv/functions.yaml"}, "manifest", Path("/srv/functions.yaml")),
        ({"EDGEFAAS_DATA_DIR": "/var/lib/edgefaas"}, "data_dir", Path("/var/lib/edgefaas")),
        ({"EDGEFAAS_LOG_LEVEL": "debug"}, "log_level", "debug"),
        ({"EDGEFAAS_NODE": "edge-01"}, "node", "edge-01"),
        ({"EDGEFAAS_GATEWAY": "http://10.0.0.2:8080"}, "gateway", "http://10.0.0.2:8080"),
        ({"EDGEFAAS_ADMIN_TOKEN": "t0ken"}, "admin_token", "t0ken"),
        ({"EDGEFAAS_CALL_LOG": "off"}, "call_log", False),
    ],
)
def test_environment_values_are_converted(env: dict[str, str], name: str, value: object) -> None:
    resolved = getattr(resolve({}, env), name)

    assert resolved == value
    assert type(resolved) is type(value)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"EDGEFAAS_PORT": "x"}, "EDGEFAAS_PORT: expected int, got 'x'"),
        ({"EDGEFAAS_PORT": "80.5"}, "EDGEFAAS_PORT: expected int, got '80.5'"),
        ({"EDGEFAAS_PORT": "70000"}, "EDGEFAAS_PORT: expected a port 0–65535, got 70000"),
        ({"EDGEFAAS_PORT": "-1"}, "EDGEFAAS_PORT: expected a port 0–65535, got -1"),
        ({"EDGEFAAS_GRACE_S": "soon"}, "EDGEFAAS_GRACE_S: expected float, got 'soon'"),
        ({"EDGEFAAS_GRACE_S": "-1"}, "EDGEFAAS_GRACE_S: expected seconds ≥ 0, got -1.0"),
        (
            {"EDGEFAAS_MAX_BODY_BYTES": "6MiB"},
            "EDGEFAAS_MAX_BODY_BYTES: expected int, got '6MiB'",
        ),
        (
            {"EDGEFAAS_MAX_BODY_BYTES": "0"},
            "EDGEFAAS_MAX_BODY_BYTES: expected a number of bytes from 1 to 134217728, got 0",
        ),
        ({"EDGEFAAS_CALL_LOG": "maybe"}, "EDGEFAAS_CALL_LOG: expected bool, got 'maybe'"),
        (
            {"EDGEFAAS_LOG_LEVEL": "loud"},
            "EDGEFAAS_LOG_LEVEL: expected debug, info, warning or error, got 'loud'",
        ),
    ],
)
def test_bad_environment_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as info_:
        resolve({}, env)

    assert str(info_.value) == message


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"port": 70000}, "--port: expected a port 0–65535, got 70000"),
        ({"node": "bad name"}, "--node: expected 1–63 letters, digits, '.', '_' or '-', got"),
        ({"grace_s": -0.5}, "--grace-s: expected seconds ≥ 0, got -0.5"),
    ],
)
def test_bad_flag_values_name_the_flag(flags: dict[str, object], message: str) -> None:
    with pytest.raises(SettingsError) as info_:
        resolve(flags, {})

    assert str(info_.value).startswith(message)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1", True),
        ("true", True),
        ("True", True),
        ("YES", True),
        (" on ", True),
        ("0", False),
        ("false", False),
        ("No", False),
        ("OFF", False),
    ],
)
def test_bool_parsing(text: str, value: bool) -> None:
    assert parse_value(info("call_log"), text, "EDGEFAAS_CALL_LOG") is value


@pytest.mark.parametrize("text", ["", "2", "y", "enabled", "truee"])
def test_bad_bool(text: str) -> None:
    with pytest.raises(SettingsError, match="EDGEFAAS_CALL_LOG: expected bool"):
        parse_value(info("call_log"), text, "EDGEFAAS_CALL_LOG")


@pytest.mark.parametrize(
    "name", ["a", "edge-01", "node.local_1", "EDGE", "7pi", "a" * 63, "a-" + "b" * 61]
)
def test_valid_node_names(name: str) -> None:
    assert resolve({}, {"EDGEFAAS_NODE": name}).node == name
    assert resolve({"node": name}, {}).node_name() == name


@pytest.mark.parametrize(
    "name", ["-edge", ".edge", "_edge", "a" * 64, "edge 1", "edge/1", "édge", "edge:1", "a\nb"]
)
def test_invalid_node_names(name: str) -> None:
    message = "EDGEFAAS_NODE: expected 1–63 letters, digits, '.', '_' or '-'"
    with pytest.raises(SettingsError, match=re.escape(message)):
        resolve({}, {"EDGEFAAS_NODE": name})


def test_node_name_with_a_trailing_newline_is_invalid() -> None:
    with pytest.raises(SettingsError):
        resolve({}, {"EDGEFAAS_NODE": "edge\n"})


def test_grace_nan_is_invalid() -> None:
    with pytest.raises(SettingsError, match="EDGEFAAS_GRACE_S: expected seconds ≥ 0"):
        resolve({}, {"EDGEFAAS_GRACE_S": "nan"})


def test_node_name_defaults_to_the_short_host_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings_module.socket, "gethostname", lambda: "pi4.lan.example")

    assert Settings().node_name() == "pi4"
    assert Settings(node="edge-01").node_name() == "edge-01"


def test_data_dir_default_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))

    assert Settings(node="edge-01").resolved_data_dir() == tmp_path / "edgefaas" / "edge-01"
    assert Settings(data_dir=Path("/x")).resolved_data_dir() == Path("/x")


def test_declared_has_one_row_per_field_with_its_env_var_and_flag() -> None:
    rows = declared()
    fields = [f.name for f in dataclasses.fields(Settings)]

    assert [row.name for row in rows] == fields
    for row in rows:
        assert row.env == "EDGEFAAS_" + row.name.upper()
        assert row.doc
        assert row.commands
        assert set(row.commands) <= set(UP + CLIENT)
        if row.name in ("admin_token", "mesh_key"):  # secrets: environment only
            assert row.flag is None
        elif row.name in ("redis_url", "cloud_url"):  # EDGEFAAS_REDIS_URL, flag --redis
            assert row.flag == "--" + row.name.removesuffix("_url")
        else:
            assert row.flag == "--" + row.name.replace("_", "-")
    assert len({row.env for row in rows}) == len(rows)


def test_declared_rows() -> None:
    assert info("port") == SettingInfo(
        name="port",
        flag="--port",
        env="EDGEFAAS_PORT",
        type=int,
        default=8080,
        doc="port the gateway listens on",
        commands=("up",),
    )
    assert info("max_body_bytes").flag == "--max-body-bytes"
    assert info("manifest").type is Path
    assert info("call_log").type is bool
    assert info("admin_token").flag is None  # secrets never go on a command line
    assert info("admin_token").env == "EDGEFAAS_ADMIN_TOKEN"


def test_admin_token_is_hidden_from_repr() -> None:
    settings = Settings(admin_token="hunter2-0123456789", port=9000)

    assert "hunter2" not in repr(settings)
    assert "hunter2" not in str(settings)
    assert "hunter2" not in f"{settings!r}"
    assert "'admin_token': '***'" in repr(settings)
    assert "'port': 9000" in repr(settings)


def test_empty_admin_token_is_shown_as_empty() -> None:
    assert "'admin_token': ''" in repr(Settings())


def test_markdown_table_rows() -> None:
    lines = markdown_table().splitlines()

    assert lines[0] == "| flag | environment | default | commands | meaning |"
    assert lines[1] == "| --- | --- | --- | --- | --- |"
    assert len(lines) == 2 + len(declared())
    assert "| `--port` | `EDGEFAAS_PORT` | `8080` | up | port the gateway listens on |" in lines
    assert (
        "| — | `EDGEFAAS_ADMIN_TOKEN` | — | up, invoke, ls, scale, nodes, deploy, rm, rollback, "
        "dead-letters | "
        "admin API token (default: generated and kept in DATA_DIR) |"
    ) in lines


def test_operations_doc_holds_the_settings_table() -> None:
    assert markdown_table() in OPERATIONS_DOC.read_text()
