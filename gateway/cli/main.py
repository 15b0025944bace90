"""``edgefaas``: the command line. The only code that exits the process.

Options come from :mod:`gateway.settings` (each also read from ``EDGEFAAS_<NAME>``).
Exit codes: 0 success, 1 a request, call or deploy failed, 2 bad usage, settings or
manifest, 3 the node could not start.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from gateway.cli import client
from gateway.errors import GatewayError, UsageError
from gateway.settings import Settings, declared, markdown_table, resolve, unknown_variables
from registry.errors import MeshError, RedisServerError, RegistryError
from registry.manifest import load_manifest

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_STARTUP = 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgefaas", description="Serverless functions on edge nodes."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub = {
        name: commands.add_parser(name, help=text)
        for name, text in (
            ("up", "start a node (serving a manifest, and/or what its mesh desires)"),
            ("invoke", "call a function and print its answer"),
            ("ls", "list the functions of a node and their pools"),
            ("scale", "set a function's pool bounds on a node"),
            ("deploy", "build, sign and upload bundles; make them the mesh's desired versions"),
            ("rm", "remove a function from the mesh"),
            ("rollback", "deploy an earlier version of a function again"),
            ("nodes", "list the live nodes of the mesh"),
            ("dead-letters", "list async calls that exhausted their retries; --redrive them"),
            ("keys", "manage bundle signing keys"),
            ("mesh", "run a local mesh of nodes"),
            ("settings", "print the settings table (markdown)"),
        )
    }
    sub["invoke"].add_argument("name")
    sub["invoke"].add_argument("--data", "-d", help="body: TEXT, @FILE, or - for stdin")
    sub["invoke"].add_argument("--method", "-X", default="POST")
    sub["invoke"].add_argument("--header", "-H", action="append", default=[], metavar="NAME:VALUE")
    sub["dead-letters"].add_argument("name", nargs="?", help="one function (default: all)")
    sub["dead-letters"].add_argument(
        "--redrive", action="store_true", help="put NAME's dead letters back in its queue"
    )
    for name in ("ls", "nodes", "dead-letters"):
        sub[name].add_argument("--json", action="store_true", help="print JSON, not a table")
    sub["scale"].add_argument("name")
    sub["scale"].add_argument("--replicas", type=int)
    sub["scale"].add_argument("--min", type=int, dest="min_workers")
    sub["scale"].add_argument("--max", type=int, dest="max_workers")
    sub["deploy"].add_argument(
        "manifest_file", nargs="?", default="functions.yaml", metavar="MANIFEST"
    )
    sub["deploy"].add_argument(
        "--timeout-s", type=float, default=60.0, help="how long to wait for every node to switch"
    )
    sub["rm"].add_argument("name")
    sub["rollback"].add_argument("name")
    sub["rollback"].add_argument("--to", type=int, dest="to_version", metavar="VERSION")
    keys = sub["keys"].add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    generate = keys.add_parser("generate", help="write a new Ed25519 key pair")
    generate.add_argument("--out", type=Path, default=Path("."), help="folder for the files")
    generate.add_argument("--name", default="edgefaas-signing", help="file name, no suffix")
    mesh = sub["mesh"].add_subparsers(dest="mesh_command", required=True, metavar="ACTION")
    mesh_up = mesh.add_parser("up", help="start N nodes sharing one embedded Redis")
    mesh_up.add_argument("--nodes", type=int, default=3)
    mesh_up.add_argument("--cloud", action="store_true", help="add a node with the cloud role")
    mesh_up.add_argument("--host", default="127.0.0.1")
    mesh_up.add_argument("--base-port", type=int, default=8080)
    mesh_up.add_argument("--dir", type=Path, default=Path(".edgefaas-mesh"), dest="mesh_dir")
    mesh_up.add_argument(
        "--manifest",
        type=Path,
        dest="mesh_manifest",
        help="published by the first node (default ./functions.yaml)",
    )
    for info in declared():
        if info.flag is None:
            continue
        for command in info.commands:
            _add_setting(sub[command], info.name, info.flag, info.type, info.doc, info.env)
    return parser


def _add_setting(
    parser: argparse.ArgumentParser, name: str, flag: str, kind: type, doc: str, env: str
) -> None:
    help_text = f"{doc} [{env}]"
    if kind is bool:
        parser.add_argument(
            flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text
        )
    else:
        parser.add_argument(flag, dest=name, type=kind, default=None, help=help_text)


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        settings = resolve(vars(args), os.environ)
        sys.exit(_run(args, settings))
    except (client.ClientError, MeshError) as exc:
        print(f"edgefaas: {exc}", file=sys.stderr)
        sys.exit(EXIT_FAILED)
    except RedisServerError as exc:
        print(f"edgefaas: {exc}", file=sys.stderr)
        sys.exit(EXIT_STARTUP)
    except RegistryError as exc:
        print(f"edgefaas: {exc}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except GatewayError as exc:
        print(f"edgefaas: {exc}", file=sys.stderr)
        sys.exit(EXIT_STARTUP if exc.code == "startup_failed" else EXIT_USAGE)


def _run(args: argparse.Namespace, settings: Settings) -> int:
    command: str = args.command
    return _COMMANDS[command](args, settings)


def _invoke(args: argparse.Namespace, settings: Settings) -> int:
    response = client.invoke(settings, args.name, args.data, args.method, args.header)
    sys.stdout.buffer.write(response.content)
    sys.stdout.flush()
    return 0


def _ls(args: argparse.Namespace, settings: Settings) -> int:
    functions = client.list_functions(settings)
    if args.json:
        print(client.dumps(functions))
        return 0
    print(client.format_table(functions))
    warning = client.node_info(settings).get("sandbox", {}).get("warning")
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _nodes(args: argparse.Namespace, settings: Settings) -> int:
    mesh = client.nodes(settings)
    print(client.dumps(mesh) if args.json else client.format_nodes(mesh))
    return 0


def _dead_letters(args: argparse.Namespace, settings: Settings) -> int:
    if args.redrive:
        if not args.name:
            raise UsageError("dead-letters --redrive: name the function whose calls to redrive")
        print(client.dumps(client.redrive(settings, args.name)))
        return 0
    letters = client.dead_letters(settings, args.name)
    print(client.dumps(letters) if args.json else client.format_dead_letters(letters))
    return 0


def _scale(args: argparse.Namespace, settings: Settings) -> int:
    print(client.dumps(client.scale(settings, args.name, _scale_body(args))))
    return 0


def _rm(args: argparse.Namespace, settings: Settings) -> int:
    print(client.dumps(client.remove(settings, args.name)))
    return 0


def _rollback(args: argparse.Namespace, settings: Settings) -> int:
    print(client.dumps(client.rollback(settings, args.name, args.to_version)))
    return 0


def _settings(args: argparse.Namespace, settings: Settings) -> int:
    print(markdown_table())
    return 0


def _scale_body(args: argparse.Namespace) -> dict[str, int]:
    if args.replicas is not None:
        if args.min_workers is not None or args.max_workers is not None:
            raise UsageError("scale: give --replicas, or --min and --max, not both")
        return {"replicas": args.replicas}
    if args.min_workers is None or args.max_workers is None:
        raise UsageError("scale: give --replicas N, or both --min A and --max B")
    return {"min": args.min_workers, "max": args.max_workers}


def _deploy(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.cli.deploy import run_deploy

    key = settings.signing_key or settings.resolved_data_dir() / "signing.key"
    if not key.exists():
        raise UsageError(
            f"deploy: no signing key at {key}; pass --signing-key (create one "
            "with 'edgefaas keys generate')"
        )
    return run_deploy(
        Path(args.manifest_file),
        settings.gateway,
        client.admin_token(settings),
        key,
        args.timeout_s,
    )


def _keys(args: argparse.Namespace, settings: Settings) -> int:
    from registry.signing import SigningKey, generate_key_pair

    private, public = generate_key_pair(args.out, args.name)
    print(f"private key: {private} (keep it secret; deploy with --signing-key {private})")
    print(f"public key:  {public} (give it to nodes with --trusted-keys)")
    print(f"key id:      {SigningKey.load(private).key_id}")
    return 0


def _mesh(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.cli.localmesh import run_local_mesh

    if args.nodes < 1:
        raise UsageError("mesh up: --nodes must be at least 1")
    manifest = args.mesh_manifest
    if manifest is None and Path("functions.yaml").is_file():
        manifest = Path("functions.yaml").resolve()
    _configure_logging("info")
    return run_local_mesh(
        args.nodes, args.cloud, args.host, args.base_port, args.mesh_dir.resolve(), manifest
    )


def _up(args: argparse.Namespace, settings: Settings) -> int:
    from gateway import server  # imports uvicorn and uvloop only for this command
    from registry.redis_server import mask_password

    _configure_logging(settings.log_level)
    path = settings.resolved_manifest()
    manifest = load_manifest(path) if path is not None else None
    log = logging.getLogger("edgefaas.gateway")
    for name in unknown_variables(os.environ):
        log.warning("ignoring unknown setting %s", name)
    count = len(manifest.functions) if manifest else 0
    mesh = mask_password(settings.redis_url) if settings.redis_url else "an embedded Redis"
    log.info(
        "node %s (%s): publishing %d function(s) from %s to %s; serving on http://%s:%d",
        settings.node_name(),
        settings.role,
        count,
        path or "no manifest",
        mesh,
        settings.host,
        settings.port,
    )
    server.run(settings, manifest)
    return 0


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise


_COMMANDS: dict[str, Callable[[argparse.Namespace, Settings], int]] = {
    "up": _up,
    "invoke": _invoke,
    "ls": _ls,
    "nodes": _nodes,
    "dead-letters": _dead_letters,
    "scale": _scale,
    "deploy": _deploy,
    "rm": _rm,
    "rollback": _rollback,
    "keys": _keys,
    "mesh": _mesh,
    "settings": _settings,
}


if __name__ == "__main__":
    main()
