"""The real `edgefaas` command line against real nodes: invoke, ls, scale, and up's own
failures (bad manifest, busy port) and its environment-variable settings."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import httpx
import pytest

from tests.conftest import (
    ADMIN_TOKEN,
    REPO,
    NodeProcess,
    cli_command,
    free_port,
    group_members,
    wait_for,
    wait_until_up,
    write_manifest,
)

pytestmark = pytest.mark.slow

StartNode = Callable[..., NodeProcess]

MANIFEST = """\
  echo:
    handler: tests.fixtures.handlers:echo
  whoami:
    handler: tests.fixtures.handlers:whoami
  boom:
    handler: tests.fixtures.handlers:raise_error
"""


def clean_environ() -> dict[str, str]:
    """The test's environment without any EDGEFAAS_* setting of the machine running it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFAAS_")}
    env["PYTHONPATH"] = str(REPO)
    return env


def edgefaas(
    *args: str,
    env: dict[str, str] | None = None,
    stdin: bytes | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run the CLI to completion (bounded); the admin token comes from the environment."""
    full_env = {**clean_environ(), "EDGEFAAS_ADMIN_TOKEN": ADMIN_TOKEN, **(env or {})}
    return subprocess.run(
        [*cli_command(), *args],
        input=stdin if stdin is not None else b"",
        capture_output=True,
        env=full_env,
        cwd=cwd or REPO,
        timeout=60,
        start_new_session=True,
        check=False,
    )


def edgefaas_all(
    *runs: Callable[[], subprocess.CompletedProcess[bytes]],
) -> list[subprocess.CompletedProcess[bytes]]:
    """Run independent CLI commands (``partial(edgefaas, ...)``) side by side."""
    with ThreadPoolExecutor(len(runs)) as executor:
        futures = [executor.submit(run) for run in runs]
        return [future.result() for future in futures]


def text(stream: bytes) -> str:
    return stream.decode("utf-8", "replace")


def pool(node: NodeProcess, name: str) -> dict[str, object]:
    response = httpx.get(
        f"{node.url}/system/functions/{name}", headers=node.admin_headers(), timeout=10
    )
    result: dict[str, object] = response.json()
    return result


@pytest.fixture
def node(start_node: StartNode, tmp_path: Path) -> NodeProcess:
    return start_node(write_manifest(tmp_path, MANIFEST))


def test_invoke_sends_data_inline_from_a_file_and_from_stdin(
    node: NodeProcess, tmp_path: Path
) -> None:
    body_file = tmp_path / "body.bin"
    body_file.write_bytes(b"from a file\n\x00\x01")

    inline, from_file, from_stdin, with_header = edgefaas_all(
        partial(edgefaas, "invoke", "echo", "--data", "hi", "--gateway", node.url),
        partial(edgefaas, "invoke", "echo", "--data", f"@{body_file}", "--gateway", node.url),
        partial(
            edgefaas,
            "invoke",
            "echo",
            "-d",
            "-",
            env={"EDGEFAAS_GATEWAY": node.url},
            stdin=b"piped in",
        ),
        partial(
            edgefaas,
            "invoke",
            "whoami",
            "-X",
            "PUT",
            "-H",
            "X-Call-Id: cli-call-1",
            "--gateway",
            node.url,
        ),
    )

    assert (inline.returncode, inline.stdout) == (0, b"hi"), text(inline.stderr)
    assert (from_file.returncode, from_file.stdout) == (0, b"from a file\n\x00\x01")
    assert (from_stdin.returncode, from_stdin.stdout) == (0, b"piped in")
    assert with_header.returncode == 0, text(with_header.stderr)
    seen = json.loads(with_header.stdout)
    assert (seen["method"], seen["call_id"]) == ("PUT", "cli-call-1")


def test_invoke_failures_exit_1_with_the_message_on_stderr(
    node: NodeProcess, tmp_path: Path
) -> None:
    missing = f"@{tmp_path / 'missing.txt'}"
    failing, unknown, missing_file, unreachable = edgefaas_all(
        partial(edgefaas, "invoke", "boom", "--gateway", node.url),
        partial(edgefaas, "invoke", "nope", "--gateway", node.url),
        partial(edgefaas, "invoke", "echo", "--data", missing, "--gateway", node.url),
        partial(edgefaas, "invoke", "echo", "--gateway", f"http://127.0.0.1:{free_port()}"),
    )

    assert failing.returncode == 1
    assert failing.stdout == b""
    assert "500" in text(failing.stderr)
    assert "ZeroDivisionError" in text(failing.stderr)
    assert unknown.returncode == 1
    assert "404" in text(unknown.stderr)
    assert "no function named 'nope'" in text(unknown.stderr)
    assert missing_file.returncode == 1
    assert "missing.txt" in text(missing_file.stderr)
    assert unreachable.returncode == 1
    assert "cannot reach the gateway" in text(unreachable.stderr)
    for result in (failing, unknown, missing_file, unreachable):
        assert "Traceback" not in text(result.stderr)


def test_ls_prints_a_table_or_json(node: NodeProcess) -> None:
    elsewhere = str(node.data_dir / "elsewhere")
    table, as_json, no_token = edgefaas_all(
        partial(edgefaas, "ls", "--gateway", node.url),
        partial(edgefaas, "ls", "--json", "--gateway", node.url),
        partial(
            edgefaas,
            "ls",
            "--gateway",
            node.url,
            "--data-dir",
            elsewhere,
            env={"EDGEFAAS_ADMIN_TOKEN": ""},
        ),
    )

    assert table.returncode == 0, text(table.stderr)
    lines = text(table.stdout).splitlines()
    assert lines[0].split()[:3] == ["NAME", "STATE", "READY"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == {"echo", "whoami", "boom"}
    assert all(row[1] == "running" for row in rows.values())

    assert as_json.returncode == 0, text(as_json.stderr)
    functions = json.loads(as_json.stdout)
    assert sorted(f["name"] for f in functions) == ["boom", "echo", "whoami"]
    assert all(f["replicas"] == 1 for f in functions)

    assert no_token.returncode == 1
    assert "no admin token" in text(no_token.stderr)


def test_scale_sets_the_pool(node: NodeProcess) -> None:
    replicas, bounds = edgefaas_all(
        partial(edgefaas, "scale", "echo", "--replicas", "2", "--gateway", node.url),
        partial(edgefaas, "scale", "whoami", "--min", "0", "--max", "3", "--gateway", node.url),
    )
    assert replicas.returncode == 0, text(replicas.stderr)
    assert json.loads(replicas.stdout)["min"] == 2
    wait_for(lambda: pool(node, "echo")["availableReplicas"] == 2, what="2 echo workers")
    assert bounds.returncode == 0, text(bounds.stderr)
    state = pool(node, "whoami")
    assert (state["min"], state["max"]) == (0, 3)

    refused = edgefaas("scale", "echo", "--min", "3", "--max", "1", "--gateway", node.url)
    assert refused.returncode == 1
    assert "422" in text(refused.stderr)  # fits the schema, not max ≥ min
    assert "max" in text(refused.stderr)
    assert (pool(node, "echo")["min"], pool(node, "echo")["max"]) == (2, 2)


def test_scale_with_bad_arguments_exits_non_zero_with_a_message() -> None:
    gateway = f"http://127.0.0.1:{free_port()}"  # never reached: the CLI refuses first
    no_bounds, both, half, not_a_number = edgefaas_all(
        partial(edgefaas, "scale", "echo", "--gateway", gateway),
        partial(edgefaas, "scale", "echo", "--replicas", "2", "--min", "1", "--gateway", gateway),
        partial(edgefaas, "scale", "echo", "--min", "1", "--gateway", gateway),
        partial(edgefaas, "scale", "echo", "--replicas", "two", "--gateway", gateway),
    )

    for result, words in (
        (no_bounds, "--replicas"),
        (both, "not both"),
        (half, "--max"),
        (not_a_number, "invalid int value: 'two'"),
    ):
        assert result.returncode != 0
        assert words in text(result.stderr)
        assert "Traceback" not in text(result.stderr)
        assert "cannot reach" not in text(result.stderr)
    assert not_a_number.returncode == 2


def test_scale_without_bounds_is_a_usage_error() -> None:
    result = edgefaas("scale", "echo", "--gateway", f"http://127.0.0.1:{free_port()}")
    assert result.returncode == 2


def test_up_with_a_bad_manifest_exits_2_naming_the_key_path(tmp_path: Path) -> None:
    manifest = write_manifest(
        tmp_path, "  echo:\n    handler: tests.fixtures.handlers:echo\n    pool: {min: 1, mx: 2}\n"
    )
    result = edgefaas(
        "up",
        "--manifest",
        str(manifest),
        "--port",
        str(free_port()),
        "--data-dir",
        str(tmp_path / "data"),
    )
    assert result.returncode == 2
    stderr = text(result.stderr)
    assert "functions.echo.pool.mx" in stderr
    assert 'did you mean "max"' in stderr
    assert "(line 5)" in stderr
    assert "Traceback" not in stderr


def test_up_on_a_busy_port_exits_non_zero_with_a_message(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, "  echo:\n    handler: tests.fixtures.handlers:echo\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = subprocess.Popen(
            [
                *cli_command(),
                "up",
                "--manifest",
                str(manifest),
                "--port",
                str(port),
                "--data-dir",
                str(tmp_path / "data"),
            ],
            env={**clean_environ(), "EDGEFAAS_ADMIN_TOKEN": ADMIN_TOKEN},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=tmp_path,
            start_new_session=True,
        )
        try:
            _, stderr = process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, 9)
                process.wait(10)
    assert process.returncode not in (0, None)
    assert f"127.0.0.1:{port}" in text(stderr)
    assert "could not start" in text(stderr)
    assert group_members(process.pid) == []  # the pools it had started are gone too


def test_up_reads_its_settings_from_the_environment(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, "  echo:\n    handler: tests.fixtures.handlers:echo\n")
    port = free_port()
    data_dir = tmp_path / "data"
    log_path = tmp_path / "node.log"
    settings = {
        "EDGEFAAS_MANIFEST": str(manifest),
        "EDGEFAAS_HOST": "127.0.0.1",
        "EDGEFAAS_PORT": str(port),
        "EDGEFAAS_NODE": "from-env",
        "EDGEFAAS_DATA_DIR": str(data_dir),
        "EDGEFAAS_MAX_BODY_BYTES": "100",
        "EDGEFAAS_CALL_LOG": "false",
        "EDGEFAAS_LOG_LEVEL": "warning",
    }
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [*cli_command(), "up"],
            env={**clean_environ(), **settings},  # and no EDGEFAAS_ADMIN_TOKEN
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
            start_new_session=True,
        )
    node = NodeProcess(process, f"http://127.0.0.1:{port}", data_dir, log_path, token="")
    try:
        wait_until_up(node)
        node.token = (data_dir / "admin-token").read_text().strip()  # generated at first start
        with node.client() as client:
            small = client.post("/function/echo", content=b"x" * 100)
            large = client.post("/function/echo", content=b"x" * 101)
            info = client.get("/system/info", headers=node.admin_headers())
        # the client commands find the gateway and the local token through the environment
        listed = edgefaas(
            "ls",
            "--json",
            env={
                "EDGEFAAS_GATEWAY": node.url,
                "EDGEFAAS_DATA_DIR": str(data_dir),
                "EDGEFAAS_ADMIN_TOKEN": "",
            },
        )
    finally:
        node.kill_group()

    assert small.status_code == 200
    assert large.status_code == 413
    assert info.json()["node"] == "from-env"
    assert info.json()["manifest"] == str(manifest.resolve())
    assert listed.returncode == 0, text(listed.stderr)
    assert [f["name"] for f in json.loads(listed.stdout)] == ["echo"]
    log = node.log()
    assert " INFO " not in log  # EDGEFAAS_LOG_LEVEL=warning
    assert "POST echo 200" not in log


def test_bad_setting_in_the_environment_is_refused_by_name(tmp_path: Path) -> None:
    result = edgefaas("up", env={"EDGEFAAS_PORT": "eighty"}, cwd=tmp_path)
    assert result.returncode == 2
    assert "EDGEFAAS_PORT" in text(result.stderr)
    assert "'eighty'" in text(result.stderr)
