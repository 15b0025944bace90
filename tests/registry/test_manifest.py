from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from registry import defaults
from registry.errors import ManifestError
from registry.manifest import load_manifest, parse_manifest
from registry.specs import (
    AsyncSpec,
    FunctionSpec,
    HandlerRef,
    HttpTrigger,
    Manifest,
    PoolSpec,
    SpillSpec,
)

HANDLERS = ("functions/echo/handler.py", "functions/motion/handler.py")
FULL = """\
version: 1
defaults:
  timeout_s: 20
  pool: {max: 3, queue_max: 64}
  spill: {max_local_wait_ms: 50}
  async: {retries: 5, max_age_s: 3600}
  env: {LOG_LEVEL: info, REGION: eu}
functions:
  motion:
    handler: functions/motion/handler.py:detect
    triggers:
      - http: {path: /sensors/motion, methods: [post, PUT], async: true}
      - http: {path: /motion, async: false}
    pool: {min: 0, concurrency: 4, idle_timeout_s: 2.5}
    memory_mb: 256
    spill: {to: [cloud, peers], cloud_compatible: true}
    async: {backoff_s: [0.5, 2]}
    env: {REGION: us, DEBUG: true, RETRIES: 3, RATIO: 0.5}
    files: [functions/motion/ads.json]
  echo:
    handler: functions/echo/handler.py:handle
  plugins:
    handler: vendor.plugins.hello:main
"""

Parse = Callable[[str], Manifest]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A manifest folder holding the handler files and data file FULL refers to."""
    for handler in HANDLERS:
        (tmp_path / handler).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / handler).write_text("def handle(event):\n    return event\n")
    (tmp_path / "functions/motion/ads.json").write_text("{}")
    return tmp_path


@pytest.fixture
def parse(folder: Path) -> Parse:
    def parse(text: str) -> Manifest:
        return parse_manifest(textwrap.dedent(text), "functions.yaml", folder)

    return parse


def error_of(parse: Parse, text: str) -> ManifestError:
    with pytest.raises(ManifestError) as info:
        parse(text)
    return info.value


def with_function(body: str, name: str = "echo", head: str = "") -> str:
    """A manifest whose one function has a valid handler plus ``body`` (YAML lines); ``head``
    goes between ``version`` and ``functions``. Without a head, ``body`` starts on line 5."""
    indented = textwrap.indent(textwrap.dedent(body), "    ")
    handler = "    handler: functions/echo/handler.py:handle\n"
    return f"version: 1\n{head}functions:\n  {name}:\n{handler}{indented}"


# -- valid manifests --------------------------------------------------------------------------


def test_full_manifest_becomes_specs_with_defaults_applied(folder: Path, parse: Parse) -> None:
    manifest = parse(FULL)

    assert manifest.path == folder / "functions.yaml"
    assert list(manifest.functions) == ["motion", "echo", "plugins"]
    assert manifest.functions["motion"] == FunctionSpec(
        name="motion",
        handler=HandlerRef("file", str(folder / "functions/motion/handler.py"), "detect"),
        root=folder / "functions/motion",
        triggers=(
            HttpTrigger("/sensors/motion", ("POST", "PUT"), is_async=True),
            HttpTrigger("/motion", ("POST",), is_async=False),
        ),
        pool=PoolSpec(
            min=0, max=3, concurrency=4, queue_max=64, max_queue_wait_ms=2000, idle_timeout_s=2.5
        ),
        timeout_s=20.0,
        memory_mb=256,
        env={"LOG_LEVEL": "info", "REGION": "us", "DEBUG": "true", "RETRIES": "3", "RATIO": "0.5"},
        files=(folder / "functions/motion/ads.json",),
        spill=SpillSpec(to=("peers", "cloud"), max_local_wait_ms=50, cloud_compatible=True),
        async_policy=AsyncSpec(retries=5, backoff_s=(0.5, 2.0), max_age_s=3600.0),
    )
    assert manifest.functions["echo"] == FunctionSpec(
        name="echo",
        handler=HandlerRef("file", str(folder / "functions/echo/handler.py"), "handle"),
        root=folder / "functions/echo",
        triggers=(),
        pool=PoolSpec(
            min=1, max=3, concurrency=1, queue_max=64, max_queue_wait_ms=2000, idle_timeout_s=30.0
        ),
        timeout_s=20.0,
        memory_mb=512,
        env={"LOG_LEVEL": "info", "REGION": "eu"},
        spill=SpillSpec(to=("peers", "cloud"), max_local_wait_ms=50, cloud_compatible=False),
        async_policy=AsyncSpec(retries=5, backoff_s=(1.0, 10.0, 60.0), max_age_s=3600.0),
    )


def test_module_handler_is_rooted_at_the_manifest_folder(folder: Path, parse: Parse) -> None:
    spec = parse(FULL).functions["plugins"]
    assert spec.handler == HandlerRef("module", "vendor.plugins.hello", "main")
    assert str(spec.handler) == "vendor.plugins.hello:main"
    assert spec.root == folder


def test_builtin_defaults_apply_without_a_defaults_block(parse: Parse) -> None:
    spec = parse(with_function("")).functions["echo"]
    assert spec.pool == PoolSpec(
        min=defaults.POOL_MIN,
        max=defaults.POOL_MAX,
        concurrency=defaults.POOL_CONCURRENCY,
        queue_max=defaults.POOL_QUEUE_MAX,
        max_queue_wait_ms=defaults.POOL_MAX_QUEUE_WAIT_MS,
        idle_timeout_s=defaults.POOL_IDLE_TIMEOUT_S,
    )
    assert (spec.timeout_s, spec.memory_mb, spec.env, spec.files) == (10.0, 512, {}, ())
    assert spec.spill == SpillSpec(
        to=defaults.SPILL_TO,
        max_local_wait_ms=defaults.SPILL_MAX_LOCAL_WAIT_MS,
        cloud_compatible=defaults.SPILL_CLOUD_COMPATIBLE,
    )
    assert spec.spill == SpillSpec(("peers", "cloud"), 100, False)
    assert spec.async_policy == AsyncSpec(
        retries=defaults.ASYNC_RETRIES,
        backoff_s=defaults.ASYNC_BACKOFF_S,
        max_age_s=defaults.ASYNC_MAX_AGE_S,
    )
    assert spec.async_policy == AsyncSpec(2, (1.0, 10.0, 60.0), 21600.0)


def test_async_merges_key_by_key_over_the_defaults_block(parse: Parse) -> None:
    text = """\
        version: 1
        defaults:
          async: {retries: 0, backoff_s: [5]}
        functions:
          motion:
            handler: functions/motion/handler.py:handle
            async: {max_age_s: 60}
          echo:
            handler: functions/echo/handler.py:handle
            async:
              retries: 10
              backoff_s: [1, 2, 4, 8]
          plain:
            handler: functions/echo/handler.py:handle
    """
    functions = parse(text).functions
    assert functions["motion"].async_policy == AsyncSpec(0, (5.0,), 60.0)
    assert functions["echo"].async_policy == AsyncSpec(10, (1.0, 2.0, 4.0, 8.0), 21600.0)
    assert functions["plain"].async_policy == AsyncSpec(0, (5.0,), 21600.0)


def test_a_trigger_is_not_async_unless_it_says_so(parse: Parse) -> None:
    body = "triggers:\n  - http: {path: /a}\n  - http: {path: /b, methods: [GET], async: true}\n"
    spec = parse(with_function(body)).functions["echo"]
    assert spec.triggers == (
        HttpTrigger("/a", ("POST",), is_async=False),
        HttpTrigger("/b", ("GET",), is_async=True),
    )


def test_a_function_can_pin_itself_to_its_node(parse: Parse) -> None:
    spec = parse(with_function("spill: {to: [], max_local_wait_ms: 0}")).functions["echo"]
    assert spec.spill == SpillSpec(to=(), max_local_wait_ms=0, cloud_compatible=False)
    assert spec.spill.pinned


def test_spill_merges_key_by_key_over_the_defaults_block(parse: Parse) -> None:
    text = """\
        version: 1
        defaults:
          spill: {to: [peers], cloud_compatible: true}
        functions:
          motion:
            handler: functions/motion/handler.py:handle
            spill: {max_local_wait_ms: 250}
          echo:
            handler: functions/echo/handler.py:handle
            spill:
              to: [cloud]
          plain:
            handler: functions/echo/handler.py:handle
    """
    functions = parse(text).functions
    assert functions["motion"].spill == SpillSpec(("peers",), 250, True)
    assert functions["echo"].spill == SpillSpec(("cloud",), 100, True)
    assert functions["plain"].spill == SpillSpec(("peers",), 100, True)


def test_spill_tiers_are_kept_in_tier_order(parse: Parse) -> None:
    spec = parse(with_function("spill: {to: [cloud, peers]}")).functions["echo"]
    assert spec.spill.to == ("peers", "cloud")


def test_trigger_routes_map_paths_to_their_functions(parse: Parse) -> None:
    routes = parse(FULL).trigger_routes()
    assert {path: spec.name for path, (spec, _) in routes.items()} == {
        "/sensors/motion": "motion",
        "/motion": "motion",
    }


def test_function_spec_survives_to_dict_and_from_dict(parse: Parse) -> None:
    for spec in parse(FULL).functions.values():
        wire = json.loads(json.dumps(spec.to_dict()))
        assert FunctionSpec.from_dict(wire) == spec


def test_load_manifest_reads_the_file(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (folder / "functions.yaml").write_text(FULL)
    monkeypatch.chdir(folder.parent)
    manifest = load_manifest(Path(folder.name) / "functions.yaml")
    assert manifest.path == folder / "functions.yaml"
    assert manifest.functions["echo"].root == folder / "functions/echo"


def test_absolute_paths_inside_the_folder_are_allowed(folder: Path, parse: Parse) -> None:
    ads = folder / "functions/motion/ads.json"
    spec = parse(with_function(f"files: [{ads}, functions]")).functions["echo"]
    assert spec.files == (ads, folder / "functions")


def test_number_env_values_and_timeouts_accept_ints_and_floats(parse: Parse) -> None:
    spec = parse(
        with_function("""\
            timeout_s: 900
            env: {OFF: false, BIG: 1.5e+3, NAME: "007"}
            pool: {idle_timeout_s: 0}
        """)
    ).functions["echo"]
    assert spec.timeout_s == 900.0
    assert spec.env == {"OFF": "false", "BIG": "1500.0", "NAME": "007"}
    assert spec.pool.idle_timeout_s == 0.0


# -- errors: the message format ---------------------------------------------------------------


def test_the_example_message_word_for_word(parse: Parse) -> None:
    text = with_function("pool:\n  min: 1\n  max: lots\n", name="motion")
    error = error_of(parse, text)
    assert str(error) == (
        'functions.yaml: functions.motion.pool.max: expected an integer ≥ min (1), got "lots"'
        " (line 7)"
    )
    assert error.to_dict() == {
        "code": "invalid_manifest",
        "message": str(error),
        "source": "functions.yaml",
        "key_path": "functions.motion.pool.max",
        "line": 7,
    }


def test_a_spill_message_word_for_word(parse: Parse) -> None:
    text = with_function("spill:\n  max_local_wait_ms: 50\n  to: [peers, edge]\n", name="cam")
    error = error_of(parse, text)
    assert str(error) == (
        'functions.yaml: functions.cam.spill.to[1]: expected one of peers, cloud, got "edge"'
        " (line 7)"
    )


def test_an_async_message_word_for_word(parse: Parse) -> None:
    text = with_function("memory_mb: 256\ntimeout_s: 5\nasync:\n  retries: -1\n", name="motion")
    assert str(error_of(parse, text)) == (
        "functions.yaml: functions.motion.async.retries: expected an integer from 0 to 10,"
        " got -1 (line 8)"
    )


def test_a_backoff_in_a_block_list_reports_its_own_line(parse: Parse) -> None:
    error = error_of(parse, with_function("async:\n  backoff_s:\n    - 1\n    - 0\n"))
    assert str(error) == (
        "functions.yaml: functions.echo.async.backoff_s[1]: expected a number > 0 and ≤ 604800"
        " (7 days), got 0 (line 8)"
    )


def test_an_async_trigger_flag_must_be_a_boolean(parse: Parse) -> None:
    body = "triggers:\n  - http: {path: /a}\n  - http:\n      path: /b\n      async: yes please\n"
    assert str(error_of(parse, with_function(body))) == (
        "functions.yaml: functions.echo.triggers[1].http.async: expected true or false,"
        ' got "yes please" (line 9)'
    )


def test_a_spill_tier_in_a_block_list_reports_its_own_line(parse: Parse) -> None:
    error = error_of(parse, with_function("spill:\n  to:\n    - cloud\n    - cloud\n"))
    assert str(error) == (
        'functions.yaml: functions.echo.spill.to[1]: duplicate tier "cloud" (line 8)'
    )


def test_load_manifest_names_the_file_as_given(folder: Path) -> None:
    path = folder / "functions.yaml"
    path.write_text("version: 1\nfunctions: []\n")
    with pytest.raises(ManifestError) as info:
        load_manifest(str(path))
    assert str(info.value) == (f"{path}: functions: expected a mapping, got a list (line 2)")


@pytest.mark.parametrize("name", ["missing.yaml", "."])
def test_unreadable_file(folder: Path, name: str) -> None:
    path = folder / name
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert info.value.source == str(path)
    assert str(info.value).startswith(f"{path}: cannot read the manifest: ")


# -- errors: the document ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key_path", "problem", "line"),
    [
        ("", "", "the manifest is empty", None),
        ("# only a comment\n", "", "the manifest is empty", None),
        ("- 1\n", "", "expected a mapping with version and functions, got a list", 1),
        ("functions: {}\n", "version", "required key is missing", 1),
        ("version: 2\nfunctions: {}\n", "version", "unsupported schema version 2", 1),
        ('version: "1"\n', "version", 'expected the integer 1, got "1"', 1),
        ("version: true\n", "version", "expected the integer 1, got true", 1),
        ("version: 1\n", "functions", "required key is missing", 1),
        ("version: 1\nfunctions: {}\n", "functions", "expected at least one function", 2),
        ("version: 1\nfunctions:\n", "functions", "expected a mapping, got null", 2),
        ("version: 1\nfunctions:\n  Echo: {}\n", "functions.Echo", 'function name "Echo"', 3),
        ("version: 1\nfunctions:\n  echo: x\n", "functions.echo", 'mapping, got "x"', 3),
        ("version: 1\nfunctions:\n  echo: {}\n", "functions.echo.handler", "missing", 3),
    ],
)
def test_document_errors(
    parse: Parse, text: str, key_path: str, problem: str, line: int | None
) -> None:
    error = error_of(parse, text)
    assert error.key_path == key_path
    assert problem in error.problem
    assert error.line == line


def test_yaml_syntax_error_reports_the_line(parse: Parse) -> None:
    error = error_of(parse, "version: 1\nfunctions:\n  echo: [a, b\n  other: 1\n")
    assert error.key_path == ""
    assert error.problem.startswith("invalid YAML: ")
    assert "expected ',' or ']'" in error.problem
    assert error.line == 4


def test_duplicate_yaml_keys_are_errors(parse: Parse) -> None:
    text = with_function("pool: {min: 1}\npool: {max: 2}\n")
    error = error_of(parse, text)
    assert error.key_path == "functions.echo.pool"
    assert error.problem == 'duplicate key "pool", first given on line 5'
    assert error.line == 6


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("version: !!binary aGk=\n", "unsupported YAML tag !!binary"),
        ("version: !!int nine\n", "unsupported YAML tag !!int"),
        ("version: !custom 1\n", "unsupported YAML tag !custom"),
        ("version: 2024-13-45\n", 'invalid value "2024-13-45"'),
        ("base: &b {version: 1}\n<<: *b\n", 'merge keys ("<<") are not supported'),
        ("version: &v [*v]\n", "an alias refers to a value that contains it"),
        ("? [a]\n: 1\n", "expected a plain key"),
        ("a: 1\n---\nb: 2\n", "but found another document"),
    ],
)
def test_yaml_features_outside_the_schema_are_refused(
    parse: Parse, text: str, problem: str
) -> None:
    assert problem in error_of(parse, text).problem


def test_alias_bombs_stop_at_a_size_limit(parse: Parse) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 12)]
    error = error_of(parse, "\n".join(lines) + "\n")
    assert "too many values" in error.problem


def test_deep_nesting_is_an_error_not_a_crash(parse: Parse) -> None:
    assert "nested too deeply" in error_of(parse, "[" * 5000).problem


# -- errors: unknown keys ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key_path", "problem"),
    [
        ("verison: 1\n", "verison", 'unknown key "verison"; did you mean "version"?'),
        (with_function("poool: {}"), "functions.echo.poool", 'did you mean "pool"?'),
        (with_function("pool: {mx: 2}"), "functions.echo.pool.mx", 'did you mean "max"?'),
        (
            with_function("triggers: [{htp: {path: /a}}]"),
            "functions.echo.triggers[0].htp",
            'unknown key "htp"; did you mean "http"?',
        ),
        (
            with_function("triggers: [{http: {path: /a, method: [GET]}}]"),
            "functions.echo.triggers[0].http.method",
            'did you mean "methods"?',
        ),
        (
            with_function("colour: red"),
            "functions.echo.colour",
            'unknown key "colour"; expected one of handler, triggers, pool,',
        ),
        (with_function("spil: {}"), "functions.echo.spil", 'did you mean "spill"?'),
        (with_function("spill: {too: []}"), "functions.echo.spill.too", 'did you mean "to"?'),
        (
            with_function("spill: {colour: red}"),
            "functions.echo.spill.colour",
            'unknown key "colour"; expected one of to, max_local_wait_ms, cloud_compatible',
        ),
        (
            "version: 1\ndefaults: {spill: {max_local_wait: 3}}\n",
            "defaults.spill.max_local_wait",
            'did you mean "max_local_wait_ms"?',
        ),
        (with_function("asynch: {}"), "functions.echo.asynch", 'did you mean "async"?'),
        (
            with_function("async: {retry: 1}"),
            "functions.echo.async.retry",
            'did you mean "retries"?',
        ),
        (
            with_function("async: {colour: red}"),
            "functions.echo.async.colour",
            'unknown key "colour"; expected one of retries, backoff_s, max_age_s',
        ),
        (
            "version: 1\ndefaults: {async: {max_age: 3}}\n",
            "defaults.async.max_age",
            'did you mean "max_age_s"?',
        ),
        (
            with_function("triggers: [{http: {path: /a, asynch: true}}]"),
            "functions.echo.triggers[0].http.asynch",
            'did you mean "async"?',
        ),
        (
            "version: 1\ndefaults: {timeout: 3}\n",
            "defaults.timeout",
            'did you mean "timeout_s"?',
        ),
        (
            "version: 1\ndefaults: {handler: a:b}\n",
            "defaults.handler",
            "handler can only be set per function",
        ),
    ],
)
def test_unknown_keys(parse: Parse, text: str, key_path: str, problem: str) -> None:
    error = error_of(parse, text)
    assert error.key_path == key_path
    assert problem in error.problem


def test_unknown_key_reports_its_own_line(parse: Parse) -> None:
    error = error_of(parse, with_function("timeout_s: 3\npool:\n  min: 1\n  mx: 2\n"))
    assert (error.key_path, error.line) == ("functions.echo.pool.mx", 8)


# -- errors: settings -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "key_path", "problem"),
    [
        ("timeout_s: 0", "timeout_s", "expected a number > 0 and ≤ 900, got 0"),
        ("timeout_s: 901", "timeout_s", "expected a number > 0 and ≤ 900, got 901"),
        ("timeout_s: .nan", "timeout_s", "expected a number > 0 and ≤ 900"),
        ("timeout_s: true", "timeout_s", "got true"),
        ('timeout_s: "10"', "timeout_s", 'got "10"'),
        ("memory_mb: 16", "memory_mb", "expected an integer ≥ 32, got 16"),
        ("memory_mb: 64.5", "memory_mb", "expected an integer ≥ 32, got 64.5"),
        ("pool: []", "pool", "expected a mapping, got a list"),
        ("pool: {min: -1}", "pool.min", "expected an integer ≥ 0 and ≤ max (4), got -1"),
        ("pool: {min: true, max: 2}", "pool.min", "expected an integer ≥ 0, got true"),
        ("pool: {max: 0}", "pool.max", "expected an integer ≥ min (1), got 0"),
        ("pool: {min: 0, max: 0}", "pool.max", "expected an integer ≥ 1, got 0"),
        ("pool: {min: 3, max: 2}", "pool.max", "expected an integer ≥ min (3), got 2"),
        ("pool: {concurrency: 0}", "pool.concurrency", "expected an integer from 1 to 1000"),
        ("pool: {concurrency: 1001}", "pool.concurrency", "from 1 to 1000, got 1001"),
        ("pool: {queue_max: -1}", "pool.queue_max", "expected an integer ≥ 0, got -1"),
        ("pool: {max_queue_wait_ms: 1.5}", "pool.max_queue_wait_ms", "got 1.5"),
        ("pool: {idle_timeout_s: -1}", "pool.idle_timeout_s", "expected a number ≥ 0, got -1"),
        ("pool: {idle_timeout_s: .inf}", "pool.idle_timeout_s", "expected a number ≥ 0"),
        ("spill: []", "spill", "expected a mapping, got a list"),
        ("spill: false", "spill", "expected a mapping, got false"),
        (
            "spill: {to: peers}",
            "spill.to",
            'expected a list of peers, cloud (or [] to pin the function to its node), got "peers"',
        ),
        ("spill: {to: null}", "spill.to", "expected a list of peers, cloud"),
        ("spill: {to: [edge]}", "spill.to[0]", 'expected one of peers, cloud, got "edge"'),
        ("spill: {to: [Peers]}", "spill.to[0]", 'expected one of peers, cloud, got "Peers"'),
        ("spill: {to: [[peers]]}", "spill.to[0]", "expected one of peers, cloud, got a list"),
        ("spill: {to: [peers, 1]}", "spill.to[1]", "expected one of peers, cloud, got 1"),
        ("spill: {to: [peers, peers]}", "spill.to[1]", 'duplicate tier "peers"'),
        ("spill: {max_local_wait_ms: -1}", "spill.max_local_wait_ms", "an integer ≥ 0, got -1"),
        ("spill: {max_local_wait_ms: 1.5}", "spill.max_local_wait_ms", "≥ 0, got 1.5"),
        ("spill: {max_local_wait_ms: true}", "spill.max_local_wait_ms", "≥ 0, got true"),
        ('spill: {max_local_wait_ms: "100"}', "spill.max_local_wait_ms", '≥ 0, got "100"'),
        ("spill: {cloud_compatible: 1}", "spill.cloud_compatible", "expected true or false, got 1"),
        ('spill: {cloud_compatible: "true"}', "spill.cloud_compatible", 'or false, got "true"'),
        ("spill: {cloud_compatible: null}", "spill.cloud_compatible", "or false, got null"),
        ("async: []", "async", "expected a mapping, got a list"),
        ("async: true", "async", "expected a mapping, got true"),
        ("async: {retries: -1}", "async.retries", "expected an integer from 0 to 10, got -1"),
        ("async: {retries: 11}", "async.retries", "expected an integer from 0 to 10, got 11"),
        ("async: {retries: 1.5}", "async.retries", "from 0 to 10, got 1.5"),
        ("async: {retries: true}", "async.retries", "from 0 to 10, got true"),
        ('async: {retries: "2"}', "async.retries", 'from 0 to 10, got "2"'),
        (
            "async: {backoff_s: 10}",
            "async.backoff_s",
            "expected a list of 1 to 10 numbers of seconds, one per retry, got 10",
        ),
        ("async: {backoff_s: []}", "async.backoff_s", "1 to 10 numbers of seconds, one per retry"),
        ("async: {backoff_s: [1,1,1,1,1,1,1,1,1,1,1]}", "async.backoff_s", "got a list"),
        ("async: {backoff_s: null}", "async.backoff_s", "one per retry, got null"),
        ("async: {backoff_s: [1, -1]}", "async.backoff_s[1]", "a number > 0 and ≤ 604800"),
        ("async: {backoff_s: [.nan]}", "async.backoff_s[0]", "a number > 0 and ≤ 604800"),
        ("async: {backoff_s: [1m]}", "async.backoff_s[0]", 'got "1m"'),
        ("async: {backoff_s: [[1]]}", "async.backoff_s[0]", "(7 days), got a list"),
        ("async: {max_age_s: 0}", "async.max_age_s", "a number > 0 and ≤ 604800 (7 days), got 0"),
        ("async: {max_age_s: 604801}", "async.max_age_s", "(7 days), got 604801"),
        ("async: {max_age_s: .inf}", "async.max_age_s", "a number > 0 and ≤ 604800"),
        ("async: {max_age_s: false}", "async.max_age_s", "(7 days), got false"),
        ("env: [A]", "env", "expected a mapping, got a list"),
        ("env: {A: null}", "env.A", "expected a string, number or boolean, got null"),
        ("env: {A: [1]}", "env.A", "expected a string, number or boolean, got a list"),
        ("env: {A: {b: 1}}", "env.A", "got a mapping"),
        ("env: {1A: x}", "env.1A", 'invalid variable name "1A"'),
        ("env: {A-B: x}", "env.A-B", 'invalid variable name "A-B"'),
        ("env: {EDGEFAAS_ROLE: x}", "env.EDGEFAAS_ROLE", "EDGEFAAS_* names are reserved"),
    ],
)
def test_setting_errors(parse: Parse, body: str, key_path: str, problem: str) -> None:
    error = error_of(parse, with_function(body))
    assert error.key_path == f"functions.echo.{key_path}"
    assert problem in error.problem
    assert error.line == 5


def test_bad_defaults_are_reported_even_when_every_function_overrides_them(
    parse: Parse,
) -> None:
    text = with_function("memory_mb: 64", head="defaults:\n  memory_mb: 8\n")
    error = error_of(parse, text)
    assert (error.key_path, error.line) == ("defaults.memory_mb", 3)


def test_bad_spill_defaults_are_reported_even_when_every_function_overrides_them(
    parse: Parse,
) -> None:
    head = "defaults:\n  spill:\n    to: [cloud, edge]\n"
    error = error_of(parse, with_function("spill: {to: []}", head=head))
    assert str(error) == (
        'functions.yaml: defaults.spill.to[1]: expected one of peers, cloud, got "edge" (line 4)'
    )


def test_bad_async_defaults_are_reported_even_when_every_function_overrides_them(
    parse: Parse,
) -> None:
    head = "defaults:\n  async:\n    max_age_s: 604801\n"
    error = error_of(parse, with_function("async: {max_age_s: 60}", head=head))
    assert str(error) == (
        "functions.yaml: defaults.async.max_age_s: expected a number > 0 and ≤ 604800 (7 days),"
        " got 604801 (line 4)"
    )


def test_min_above_a_default_max_is_blamed_on_the_function_min(parse: Parse) -> None:
    error = error_of(parse, with_function("pool: {min: 5}", head="defaults: {pool: {max: 2}}\n"))
    assert error.key_path == "functions.echo.pool.min"
    assert error.problem == "expected an integer ≥ 0 and ≤ max (2), got 5"


def test_max_below_a_default_min_is_blamed_on_the_function_max(parse: Parse) -> None:
    error = error_of(parse, with_function("pool: {max: 2}", head="defaults: {pool: {min: 3}}\n"))
    assert error.key_path == "functions.echo.pool.max"
    assert error.problem == "expected an integer ≥ min (3), got 2"


def test_defaults_in_conflict_with_builtins_are_blamed_on_defaults(parse: Parse) -> None:
    error = error_of(parse, with_function("", head="defaults: {pool: {min: 9}}\n"))
    assert error.key_path == "defaults.pool.min"
    assert error.problem == "expected an integer ≥ 0 and ≤ max (4), got 9"
    assert error.line == 2


# -- errors: handlers and files ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("handler", "problem"),
    [
        ("functions/echo/handler.py", 'expected "path/to/file.py:function" or "dotted.module'),
        ("functions/echo/handler:handle", 'got "functions/echo/handler:handle"'),
        ("functions/echo/handler.py:2fast", 'got "functions/echo/handler.py:2fast"'),
        ("vendor..hello:main", 'or "dotted.module:function", got "vendor..hello:main"'),
        ("vendor.class:main", "dotted.module:function"),
        (":main", 'got ":main"'),
        ('""', 'got ""'),
        ("12", "got 12"),
        ("functions/nothere.py:handle", 'handler file "functions/nothere.py" does not exist'),
        ("functions/echo.py:handle", "does not exist"),
        ("../outside.py:handle", 'handler file "../outside.py" is outside the manifest'),
        ("/etc/passwd.py:handle", 'handler file "/etc/passwd.py" is outside the manifest'),
    ],
)
def test_handler_errors(folder: Path, parse: Parse, handler: str, problem: str) -> None:
    (folder.parent / "outside.py").write_text("")
    text = f"version: 1\nfunctions:\n  echo:\n    handler: {handler}\n"
    error = error_of(parse, text)
    assert (error.key_path, error.line) == ("functions.echo.handler", 4)
    assert problem in error.problem


def test_handler_must_be_a_file(folder: Path, parse: Parse) -> None:
    (folder / "functions/dir.py").mkdir()
    text = "version: 1\nfunctions:\n  echo:\n    handler: functions/dir.py:handle\n"
    assert 'handler file "functions/dir.py" is not a file' in error_of(parse, text).problem


def test_symlink_leaving_the_folder_is_outside(folder: Path, parse: Parse) -> None:
    (folder.parent / "secret.json").write_text("{}")
    (folder / "link.json").symlink_to(folder.parent / "secret.json")
    error = error_of(parse, with_function("files: [link.json]"))
    assert error.key_path == "functions.echo.files[0]"
    assert 'file "link.json" is outside the manifest' in error.problem


@pytest.mark.parametrize(
    ("files", "key_path", "problem"),
    [
        ("functions/motion/ads.json", "files", 'expected a list of paths, got "functions'),
        ("[functions/motion/nope.json]", "files[0]", 'file "functions/motion/nope.json" does not'),
        ("[functions/../../x.json]", "files[0]", "is outside the manifest's folder"),
        ("[/tmp]", "files[0]", 'file "/tmp" is outside the manifest'),
        ("[functions/motion/ads.json, 3]", "files[1]", "expected a path, got 3"),
    ],
)
def test_file_errors(parse: Parse, files: str, key_path: str, problem: str) -> None:
    error = error_of(parse, with_function(f"files: {files}"))
    assert error.key_path == f"functions.echo.{key_path}"
    assert problem in error.problem


# -- errors: triggers -------------------------------------------------------------------------


def test_two_functions_cannot_claim_one_path(parse: Parse) -> None:
    text = """\
        version: 1
        functions:
          motion:
            handler: functions/motion/handler.py:handle
            triggers: [{http: {path: /sensors}}]
          weight:
            handler: functions/echo/handler.py:handle
            triggers:
              - http: {path: /other}
              - http:
                  path: /sensors
    """
    error = error_of(parse, text)
    assert str(error) == (
        "functions.yaml: functions.weight.triggers[1].http.path: "
        '"/sensors" is already the trigger path of function motion (line 11)'
    )


def test_one_function_cannot_claim_a_path_twice(parse: Parse) -> None:
    error = error_of(parse, with_function("triggers: [{http: {path: /a}}, {http: {path: /a}}]"))
    assert error.key_path == "functions.echo.triggers[1].http.path"
    assert error.problem == '"/a" is already the trigger path of function echo'


@pytest.mark.parametrize(
    ("path", "prefix"),
    [
        ("/function/echo", "/function/"),
        ("/function", "/function/"),
        ("/async-function/x", "/async-function/"),
        ("/system/info", "/system/"),
        ("/healthz", "/healthz"),
        ("/readyz/deep", "/readyz"),
        ("/metrics", "/metrics"),
        ("/openapi.json", "/openapi.json"),
    ],
)
def test_reserved_paths(parse: Parse, path: str, prefix: str) -> None:
    error = error_of(parse, with_function(f"triggers: [{{http: {{path: {path}}}}}]"))
    assert error.key_path == "functions.echo.triggers[0].http.path"
    assert error.problem == f'"{path}" is reserved by the gateway (it is under "{prefix}")'


def test_paths_that_only_start_like_a_reserved_one_are_free(parse: Parse) -> None:
    spec = parse(
        with_function("triggers: [{http: {path: /healthzone}}, {http: {path: /functions}}]")
    )
    assert [t.path for t in spec.functions["echo"].triggers] == ["/healthzone", "/functions"]


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("echo", 'must start with "/"'),
        ("/", 'must not be "/" alone'),
        ('"/a b"', "must not contain whitespace"),
        ('"/a\\tb"', "must not contain whitespace"),
        ('"/a?b=1"', 'must not contain "?" or "#"'),
        ('"/a#top"', 'must not contain "?" or "#"'),
        ("/a//b", 'must not contain "//"'),
        ("/a/", 'or end with "/"'),
        ("/a/./b", 'must not contain "." or ".." segments'),
        ("/a/..", 'must not contain "." or ".." segments'),
    ],
)
def test_bad_trigger_paths(parse: Parse, path: str, problem: str) -> None:
    error = error_of(parse, with_function(f"triggers: [{{http: {{path: {path}}}}}]"))
    assert error.key_path == "functions.echo.triggers[0].http.path"
    assert problem in error.problem


@pytest.mark.parametrize(
    ("triggers", "key_path", "problem"),
    [
        ("{http: {path: /a}}", "triggers", "expected a list of triggers, got a mapping"),
        ("[/a]", "triggers[0]", 'expected a mapping such as {http: {path: /echo}}, got "/a"'),
        ("[{}]", "triggers[0]", "expected one trigger kind (http)"),
        ("[{http: /a}]", "triggers[0].http", 'expected a mapping, got "/a"'),
        ("[{http: {methods: [GET]}}]", "triggers[0].http.path", "required key is missing"),
        ("[{http: {path: /a, methods: []}}]", "triggers[0].http.methods", "non-empty list"),
        ("[{http: {path: /a, methods: GET}}]", "triggers[0].http.methods", 'got "GET"'),
        (
            "[{http: {path: /a, methods: [GET, FETCH]}}]",
            "triggers[0].http.methods[1]",
            'expected one of GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS, got "FETCH"',
        ),
        (
            "[{http: {path: /a, methods: [get, GET]}}]",
            "triggers[0].http.methods[1]",
            'duplicate method "GET"',
        ),
    ],
)
def test_trigger_shape_errors(parse: Parse, triggers: str, key_path: str, problem: str) -> None:
    error = error_of(parse, with_function(f"triggers: {triggers}"))
    assert error.key_path == f"functions.echo.{key_path}"
    assert problem in error.problem
    assert error.line == 5


# -- anything YAML can say either parses or raises ManifestError ------------------------------

SCHEMA_WORDS = ["version", "functions", "defaults", "handler", "triggers", "http", "path"]
SCHEMA_WORDS += ["methods", "pool", "min", "max", "env", "files", "timeout_s", "memory_mb", "A"]
SCHEMA_WORDS += ["spill", "to", "max_local_wait_ms", "cloud_compatible"]
SCHEMA_WORDS += ["async", "retries", "backoff_s", "max_age_s"]
keys = st.sampled_from(SCHEMA_WORDS) | st.text(max_size=8)
scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
leaves = scalars | st.sampled_from(["h.py:handle", "mod:fn", "/echo", "GET", "h.py", 1])
documents = st.recursive(
    leaves,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=5),
    max_leaves=30,
)


def around(function: dict[str, object], defaults_block: dict[str, object]) -> object:
    """A manifest that is valid except where ``function`` and ``defaults_block`` say."""
    manifest = {"version": 1, "functions": {"echo": {"handler": "h.py:handle", **function}}}
    return {**manifest, "defaults": defaults_block} if defaults_block else manifest


plausible = {
    "triggers": st.lists(
        st.fixed_dictionaries(
            {
                "http": st.fixed_dictionaries(
                    {"path": st.just("/echo")},
                    optional={"methods": st.just(["get"]), "async": scalars},
                )
            }
        ),
        max_size=1,
    ),
    "pool": st.dictionaries(st.sampled_from(["min", "max", "concurrency"]), st.integers(0, 9)),
    "spill": st.fixed_dictionaries(
        {},
        optional={
            "to": st.lists(st.sampled_from(["peers", "cloud", "edge"]), max_size=3),
            "max_local_wait_ms": st.integers(-1, 500),
            "cloud_compatible": st.booleans() | scalars,
        },
    ),
    "async": st.fixed_dictionaries(
        {},
        optional={
            "retries": st.integers(-1, 11) | scalars,
            "backoff_s": st.lists(st.floats(-1, 1e6) | scalars, max_size=11) | scalars,
            "max_age_s": st.floats(-1, 1e6) | st.integers(-1, 10**6) | scalars,
        },
    ),
    "env": st.dictionaries(st.sampled_from(["A", "B_1"]), scalars),
    "timeout_s": st.floats(0, 1000),
    "memory_mb": st.integers(0, 1024),
    "files": st.just(["h.py"]),
}
settings_keys = st.sampled_from(sorted(plausible))
near_valid = st.builds(
    around,
    st.dictionaries(settings_keys, documents, max_size=2)
    | st.fixed_dictionaries({}, optional=plausible),
    st.dictionaries(settings_keys, documents, max_size=2) | st.just({}),
)


@settings(max_examples=300, deadline=None)
@given(data=documents | near_valid)
def test_any_yaml_document_parses_or_raises_manifest_error(
    tmp_path_factory: pytest.TempPathFactory, data: object
) -> None:
    folder = tmp_path_factory.getbasetemp() / "fuzz"
    folder.mkdir(exist_ok=True)
    (folder / "h.py").write_text("def handle(event):\n    return event\n")
    text = yaml.safe_dump(data)
    try:
        manifest = parse_manifest(text, "functions.yaml", folder)
    except ManifestError as error:
        assert str(error).startswith("functions.yaml: ")
    else:
        for spec in manifest.functions.values():
            assert FunctionSpec.from_dict(spec.to_dict()) == spec


@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet=st.sampled_from(list("ab1:-[]{}&*!|>'\",#? \n\t.%@")), max_size=60))
def test_any_text_parses_or_raises_manifest_error(
    tmp_path_factory: pytest.TempPathFactory, text: str
) -> None:
    try:
        parse_manifest(text, "functions.yaml", tmp_path_factory.getbasetemp())
    except ManifestError as error:
        assert error.source == "functions.yaml"
