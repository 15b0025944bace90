"""``edgefaas``: the command line. The only code that exits the process.

Options come from :mod:`gateway.settings` (each also read from ``EDGEFAAS_<NAME>``).
Exit codes: 0 success, 1 a request or call failed, 2 bad usage, settings or manifest,
3 the node could not start.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from gateway import client
from gateway.errors import GatewayError, UsageError
from gateway.settings import Settings, declared, markdown_table, resolve, unknown_variables
from registry.errors import RegistryError
from registry.manifest import load_manifest

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_STARTUP = 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgefaas", description="Serverless functions on edge nodes."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    up = commands.add_parser("up", help="start a node serving a manifest")
    invoke = commands.add_parser("invoke", help="call a function and print its answer")
    invoke.add_argument("name")
    invoke.add_argument("--data", "-d", help="body: TEXT, @FILE, or - for stdin")
    invoke.add_argument("--method", "-X", default="POST")
    invoke.add_argument("--header", "-H", action="append", default=[], metavar="NAME:VALUE")
    ls = commands.add_parser("ls", help="list the functions of a node and their pools")
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    scale = commands.add_parser("scale", help="set a function's pool bounds")
    scale.add_argument("name")
    scale.add_argument("--replicas", type=int)
    scale.add_argument("--min", type=int, dest="min_workers")
    scale.add_argument("--max", type=int, dest="max_workers")
    commands.add_parser("settings", help="print the settings table (markdown)")
    by_command = {"up": up, "invoke": invoke, "ls": ls, "scale": scale}
    for info in declared():
        if info.flag is None:
            continue
        for command in info.commands:
            _add_setting(by_command[command], info.name, info.flag, info.type, info.doc, info.env)
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
    except RegistryError as exc:
        print(f"edgefaas: {exc}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except client.ClientError as exc:
        print(f"edgefaas: {exc}", file=sys.stderr)
        sys.exit(EXIT_FAILED)
    except GatewayError as exc:
        print(f"edgefaas: {exc}", file=sys.stderr)
        sys.exit(EXIT_STARTUP if exc.code == "startup_failed" else EXIT_USAGE)


def _run(args: argparse.Namespace, settings: Settings) -> int:
    if args.command == "up":
        return _up(settings)
    if args.command == "invoke":
        response = client.invoke(settings, args.name, args.data, args.method, args.header)
        sys.stdout.buffer.write(response.content)
        sys.stdout.flush()
        return 0
    if args.command == "ls":
        functions = client.list_functions(settings)
        print(client.dumps(functions) if args.json else client.format_table(functions))
        return 0
    if args.command == "scale":
        print(client.dumps(client.scale(settings, args.name, _scale_body(args))))
        return 0
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


def _up(settings: Settings) -> int:
    from gateway import server  # imports uvicorn and uvloop only for this command

    _configure_logging(settings.log_level)
    path = settings.resolved_manifest()
    manifest = load_manifest(path) if path is not None else None
    log = logging.getLogger("edgefaas.gateway")
    for name in unknown_variables(os.environ):
        log.warning("ignoring unknown setting %s", name)
    count = len(manifest.functions) if manifest else 0
    where = f"{path}" if path else "no manifest"
    log.info(
        "node %s: %d function(s) from %s on http://%s:%d",
        settings.node_name(),
        count,
        where,
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
