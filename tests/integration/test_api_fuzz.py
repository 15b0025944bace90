"""The node's published API, fuzzed: schemathesis reads a real node's ``/openapi.json``
(embedded Redis, the example functions, the admin token) and runs every check it has in
every phase — examples, coverage, fuzzing, stateful — with a bounded example count and a
fixed seed. It must find nothing: no 5xx, no status, header, content type or body the
document does not declare, no schema-valid request refused, no invalid one accepted, no
route without its ``Allow``, no admin route open without the token.

Two settings of the run, and why:
- ``positive_data_acceptance`` also expects 422: a request can fit the schema and still break
  a rule the schema cannot say (``max`` ≥ ``min``; a bundle's digest that does not match its
  bytes) — the node answers 422 with the field named, not 2xx.
- the function paths call ``echo``, which takes any method and body, and their answers are
  not checked against a schema: a function's answer is its own (the document says "any
  content"), and echo answers with the type it was sent — binary bytes labelled YAML, say.
- the stateful phase follows the links the node's answers state (``Location`` of a 202: the
  call at ``/system/calls/ID``), not links guessed from names; and on the call paths the
  resource checks are off: ``DELETE /function/echo`` calls echo (it
  deletes nothing), and ``DELETE /async-function/ID`` names a call where ``POST`` names a
  function — a canceled call stays readable (status "canceled") at ``/system/calls/ID``.
- ``/readyz`` may answer 503: that is its answer while a pool is below its minimum (the fuzzer
  scales pools and removes functions), as a readiness probe's must be.
The node runs with ``--login-failures`` high enough for the fuzzer's many wrong tokens from
one address; the limit itself is tested in ``test_hardening.py``.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, NodeProcess
from tests.integration.test_node import StartNode, start_ready

pytestmark = pytest.mark.slow

MAX_EXAMPLES = 25
SEED = 20261208
CONFIG = f"""\
seed = {SEED}
max-failures = 50

[generation]
max-examples = {MAX_EXAMPLES}

[phases.stateful.inference]
algorithms = ["location-headers"]

[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "422", "429", "5xx"]

[[operations]]
include-path-regex = "^/(async-)?function/"

[operations.parameters]
"path.name" = "echo"

[operations.checks.response_schema_conformance]
enabled = false

[operations.checks.use_after_free]
enabled = false

[operations.checks.ensure_resource_availability]
enabled = false

[[operations]]
include-path = "/readyz"

[operations.checks.not_a_server_error]
expected-statuses = ["2xx", "3xx", "4xx", "503"]
"""


def test_schemathesis_finds_nothing_wrong_with_the_api(
    start_node: StartNode, tmp_path: Path
) -> None:
    node: NodeProcess = start_ready(
        start_node, REPO / "functions.yaml", "--login-failures", "1000000"
    )
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    st = Path(sys.executable).parent / "st"
    command = [
        str(st), "--config-file", str(config),
        "run", f"{node.url}/openapi.json",
        "--header", f"Authorization: Bearer {node.token}",
        "--checks", "all",
        "--phases", "examples,coverage,fuzzing,stateful",
        "--request-timeout", "30",
    ]  # fmt: skip
    result = subprocess.run(
        command, capture_output=True, text=True, cwd=tmp_path, timeout=300, check=False
    )
    report = result.stdout[-12000:] + result.stderr[-4000:]
    assert result.returncode == 0, report
    tested = re.search(r"Tested: (\d+)", result.stdout)
    assert tested is not None and int(tested.group(1)) >= 45, report  # every operation ran
