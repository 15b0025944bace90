"""Every node and client setting, declared once.

Each field of :class:`Settings` is one setting: its flag (``--max-body-bytes``), its
environment variable (``EDGEFAAS_MAX_BODY_BYTES``), type, default, the commands that take it
and a one-line description. The CLI's options, the environment lookup and the settings
table of docs/operations.md are all generated from these declarations.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import socket
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.errors import SettingsError
from gateway.jobs.callbacks import allow_list_problem
from runtime.protocol import MAX_FRAME_BYTES

UP = ("up",)
CLIENT = ("invoke", "ls", "scale", "nodes", "deploy", "rm", "rollback", "dead-letters")
ENV_PREFIX = "EDGEFAAS_"
MiB = 1024 * 1024
MAX_BODY_BYTES = MAX_FRAME_BYTES // 2  # a body must fit in one worker frame, with headroom
_URL = re.compile(r"(redis|rediss|unix|http|https)://\S+")
_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def setting(
    default: Any,
    doc: str,
    commands: tuple[str, ...],
    *,
    flag: bool = True,
    flag_name: str = "",
    secret: bool = False,
) -> Any:
    """Declare a setting: its default, one-line doc and the commands that take it. The flag
    is ``--name-with-dashes`` unless ``flag_name`` says otherwise; secrets have no flag."""
    metadata = {
        "doc": doc,
        "commands": commands,
        "flag": flag,
        "flag_name": flag_name,
        "secret": secret,
    }
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class Settings:
    manifest: Path | None = setting(
        None, "manifest to serve (default: ./functions.yaml when it exists)", UP
    )
    host: str = setting("127.0.0.1", "address the gateway listens on", UP)
    port: int = setting(8080, "port the gateway listens on", UP)
    node: str = setting("", "this node's name (default: the host name)", UP + CLIENT)
    data_dir: Path | None = setting(
        None,
        "node state: admin token, later bundles (default: ~/.local/share/edgefaas/NODE)",
        UP + CLIENT,
    )
    redis_url: str = setting(
        "",
        "Redis URL of the mesh to join (default: an embedded Redis server in DATA_DIR)",
        UP,
        flag_name="--redis",
    )
    role: str = setting("edge", "edge or cloud", UP)
    advertise: str = setting("", "URL peers reach this node at (default: http://HOST:PORT)", UP)
    cloud_url: str = setting(
        "",
        "gateway that takes calls when this node and its peers are saturated (default: the "
        "mesh's --role cloud node, if any)",
        UP,
        flag_name="--cloud",
    )
    cloud_timeout_s: float = setting(
        0.5, "connect timeout to the cloud; one failure opens its circuit breaker", UP
    )
    cloud_pool_factor: int = setting(
        4, "on a --role cloud node: every pool's max and queue_max times this", UP
    )
    key_prefix: str = setting("edgefaas", "prefix of the mesh's Redis keys", UP)
    signing_key: Path | None = setting(
        None,
        "Ed25519 key that signs bundles (default: DATA_DIR/signing.key, generated)",
        (*UP, "deploy"),
    )
    trusted_keys: str = setting(
        "",
        "comma-separated .pub files or folders of keys whose bundles this node runs "
        "(it always trusts its own signing key)",
        UP,
    )
    max_body_bytes: int = setting(6 * MiB, "largest request body accepted (413 above)", UP)
    records_quota: int = setting(
        100_000,
        "most call records kept waiting for the cloud node; older ones are dropped and counted",
        UP,
    )
    callback_allow: str = setting(
        "",
        "comma-separated host names, *.domain wildcards and CIDRs that X-Callback-Url may "
        "reach besides public addresses (e.g. 10.0.0.0/8,hooks.lan)",
        UP,
    )
    grace_s: float = setting(30.0, "on SIGTERM, how long in-flight calls may finish", UP)
    header_timeout_s: float = setting(
        10.0,
        "a connection that has not sent a request's headers this long after it opened (or the "
        "request began) gets 408 and is closed",
        UP,
    )
    keep_alive_s: float = setting(5.0, "an idle keep-alive connection is closed after this", UP)
    max_connections: int = setting(
        4096, "open connections at most; a new one beyond gets 503 and is closed", UP
    )
    login_failures: int = setting(
        10,
        "wrong admin tokens allowed per client address and minute; beyond, 429 (the right "
        "token still works)",
        UP,
    )
    sandbox: str = setting(
        "auto",
        "auto, strict or off: each function in a sandbox of its own (auto: when the node "
        "can, else a warning; strict: a function that cannot be sandboxed does not start)",
        UP,
    )
    sandbox_uid_base: int = setting(
        200_000, "first of the 100000 uids (and gids) the node gives its functions", UP
    )
    log_level: str = setting("info", "debug, info, warning or error", UP)
    call_log: bool = setting(True, "log one line per call", UP)
    gateway: str = setting("http://127.0.0.1:8080", "gateway the client commands talk to", CLIENT)
    admin_token: str = setting(
        "",
        "admin API token (default: generated and kept in DATA_DIR)",
        UP + CLIENT,
        flag=False,
        secret=True,
    )
    mesh_key: str = setting(
        "",
        "shared secret that authenticates nodes to each other (default: generated in "
        "DATA_DIR/mesh-key)",
        UP,
        flag=False,
        secret=True,
    )

    def node_name(self) -> str:
        return self.node or socket.gethostname().split(".")[0] or "node"

    def resolved_data_dir(self) -> Path:
        if self.data_dir is not None:
            return self.data_dir
        base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        return Path(base) / "edgefaas" / self.node_name()

    def resolved_manifest(self) -> Path | None:
        if self.manifest is not None:
            return self.manifest
        default = Path("functions.yaml")
        return default if default.is_file() else None

    def __repr__(self) -> str:
        shown = {
            f.name: (
                "***" if f.metadata["secret"] and getattr(self, f.name) else getattr(self, f.name)
            )
            for f in dataclasses.fields(self)
        }
        return f"Settings({shown})"


@dataclass(frozen=True)
class SettingInfo:
    name: str
    flag: str | None
    env: str
    type: type
    default: Any
    doc: str
    commands: tuple[str, ...]


def declared() -> list[SettingInfo]:
    """The settings table: one row per field of :class:`Settings`."""
    hints = typing.get_type_hints(Settings)
    rows = []
    for f in dataclasses.fields(Settings):
        kind = _base_type(hints[f.name])
        rows.append(
            SettingInfo(
                name=f.name,
                flag=_flag(f.name, f.metadata),
                env=ENV_PREFIX + f.name.upper(),
                type=kind,
                default=f.default,
                doc=f.metadata["doc"],
                commands=f.metadata["commands"],
            )
        )
    return rows


def _flag(name: str, metadata: Mapping[str, Any]) -> str | None:
    if not metadata["flag"]:
        return None
    return str(metadata["flag_name"]) or "--" + name.replace("_", "-")


def _base_type(hint: Any) -> type:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint  # type: ignore[no-any-return]


def parse_value(info: SettingInfo, text: str, source: str) -> Any:
    """Convert a flag or environment value; errors name the setting and its source."""
    try:
        if info.type is bool:
            return _parse_bool(text)
        value = info.type(text)
    except ValueError:
        raise SettingsError(f"{source}: expected {info.type.__name__}, got {text!r}") from None
    _check(info.name, value, source)
    return value


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def _check(name: str, value: Any, source: str) -> None:
    problem = _problem(name, value)
    if problem:
        raise SettingsError(f"{source}: {problem}, got {value!r}")


def _url_ok(value: str) -> bool:
    return not value or bool(_URL.fullmatch(value))


_URL_EXPECTED = "expected a URL such as redis://host:6379/0, unix:///path or http://host:port"
# setting → (test its value passes, what was expected)
_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "port": (lambda v: 0 <= v <= 65535, "expected a port 0–65535"),
    "max_body_bytes": (
        lambda v: 1 <= v <= MAX_BODY_BYTES,
        f"expected a number of bytes from 1 to {MAX_BODY_BYTES}",
    ),
    "grace_s": (lambda v: 0 <= v < float("inf"), "expected seconds ≥ 0"),
    "records_quota": (lambda v: 1 <= v <= 100_000_000, "expected a number from 1 to 100000000"),
    "log_level": (
        lambda v: v.lower() in ("debug", "info", "warning", "error"),
        "expected debug, info, warning or error",
    ),
    "role": (lambda v: v in ("edge", "cloud"), "expected edge or cloud"),
    "sandbox": (lambda v: v in ("auto", "strict", "off"), "expected auto, strict or off"),
    "header_timeout_s": (lambda v: 0.1 <= v <= 3600, "expected seconds from 0.1 to 3600"),
    "keep_alive_s": (lambda v: 0.1 <= v <= 3600, "expected seconds from 0.1 to 3600"),
    "max_connections": (lambda v: 16 <= v <= 1_000_000, "expected an integer from 16 to 1000000"),
    "login_failures": (lambda v: 1 <= v <= 1_000_000, "expected an integer from 1 to 1000000"),
    "sandbox_uid_base": (
        lambda v: 1000 <= v <= 2**31 - 100_000,
        "expected an integer from 1000 to 2147383648",
    ),
    "callback_allow": (
        lambda v: not allow_list_problem(v),
        "expected comma-separated host names, *.domain wildcards or CIDRs such as "
        "10.0.0.0/8 or fd00::/8",
    ),
    "redis_url": (_url_ok, _URL_EXPECTED),
    "advertise": (_url_ok, _URL_EXPECTED),
    "cloud_url": (
        lambda v: not v or bool(re.fullmatch(r"https?://\S+", v)),
        "expected an http:// or https:// URL",
    ),
    "cloud_timeout_s": (lambda v: 0 < v <= 60, "expected seconds > 0 and ≤ 60"),
    "cloud_pool_factor": (lambda v: 1 <= v <= 100, "expected an integer from 1 to 100"),
    "gateway": (_url_ok, _URL_EXPECTED),
    "node": (
        lambda v: bool(_NODE_NAME.fullmatch(v)),
        "expected 1–63 letters, digits, '.', '_' or '-'",
    ),
    "key_prefix": (
        lambda v: bool(_NODE_NAME.fullmatch(v)),
        "expected 1–63 letters, digits, '.', '_' or '-'",
    ),
}


def _problem(name: str, value: Any) -> str:
    check = _CHECKS.get(name)
    return "" if check is None or check[0](value) else check[1]


def resolve(flags: Mapping[str, Any], environ: Mapping[str, str]) -> Settings:
    """Build settings from parsed flags (None when not given), then the environment,
    then the declared defaults."""
    values: dict[str, Any] = {}
    for info in declared():
        given = flags.get(info.name)
        if given is not None:
            _check(info.name, given, info.flag or info.name)
            values[info.name] = given
        elif environ.get(info.env, ""):  # an empty variable counts as unset
            values[info.name] = parse_value(info, environ[info.env], info.env)
    return Settings(**values)


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """``EDGEFAAS_*`` variables that name no setting (likely typos), with a suggestion."""
    known = {info.env for info in declared()}
    found = []
    for name in sorted(environ):
        if name.startswith(ENV_PREFIX) and name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            found.append(f"{name} (did you mean {close[0]}?)" if close else name)
    return found


def markdown_table() -> str:
    """The settings table of docs/operations.md."""
    lines = [
        "| flag | environment | default | commands | meaning |",
        "| --- | --- | --- | --- | --- |",
    ]
    for info in declared():
        flag = f"`{info.flag}`" if info.flag else "—"
        default = "—" if info.default in (None, "") else f"`{info.default}`"
        lines.append(
            f"| {flag} | `{info.env}` | {default} | {', '.join(info.commands)} | {info.doc} |"
        )
    return "\n".join(lines)
