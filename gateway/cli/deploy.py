"""``edgefaas deploy``: build and sign a bundle per function, upload the new ones, make them
the mesh's desired versions, then follow the rollout node by node.

Progress goes to stderr (bars on a terminal, plain lines otherwise); the result table to
stdout. The deploy fails (exit 1) when a node reports that a new version did not start, or
when some node has not switched when the timeout runs out — and says which and why.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TextIO

from registry.bundle import SignedBundle, build_bundle
from registry.client import MeshClient, Progress, Rollout, ship, wait_for_rollout
from registry.errors import MeshError
from registry.manifest import load_manifest
from registry.signing import SigningKey
from registry.specs import FunctionSpec

BAR_WIDTH = 28


class Terminal:
    """Progress lines on stderr: redrawn in place on a terminal, appended otherwise."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.live = stream.isatty()
        self._last = ""

    def bar(self, label: str, done: int, total: int) -> Progress:
        def update(sent: int, size: int) -> None:
            fraction = sent / size if size else 1.0
            filled = int(fraction * BAR_WIDTH)
            line = (
                f"{label:<28} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] "
                f"{fraction * 100:5.1f}% {_size(size)}"
            )
            self.line(line, final=sent >= size)

        update(done, total)
        return update

    def line(self, text: str, final: bool = True) -> None:
        if self.live:
            self.stream.write("\r\033[K" + text + ("\n" if final else ""))
        elif final and text != self._last:
            self.stream.write(text + "\n")
        self._last = text
        self.stream.flush()


def _size(count: int) -> str:
    if count < 1024:
        return f"{count} B"
    amount = float(count)
    for unit in ("KB", "MB", "GB"):
        amount /= 1024
        if amount < 1024 or unit == "GB":
            break
    return f"{amount:.1f} {unit}"


def run_deploy(
    manifest_path: Path,
    gateway: str,
    token: str,
    key_path: Path,
    timeout_s: float,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    """The whole deploy; returns the exit code."""
    terminal = Terminal(err)
    key = SigningKey.load(key_path)
    manifest = load_manifest(manifest_path)
    bundles = _build(manifest.functions.values(), key, terminal)
    started = time.monotonic()
    with MeshClient(gateway, token) as client:
        for name, bundle in bundles.items():
            uploaded = ship(client, bundle, terminal.bar(f"upload {name}", 0, len(bundle.data)))
            if not uploaded:
                terminal.line(f"upload {name:<21} skipped: the gateway holds {bundle.digest[:12]}")
            entry = client.deploy(name, bundle.digest)
            terminal.line(f"deploy {name:<21} version {entry['version']} ({bundle.digest[:12]})")
        targets = {name: bundle.digest for name, bundle in bundles.items()}
        rollout = wait_for_rollout(client, targets, timeout_s, _table_printer(terminal))
    elapsed = time.monotonic() - started
    out.write(format_rollout(rollout) + "\n")
    if rollout.failures:
        for where, why in rollout.failures.items():
            err.write(f"edgefaas: {where}: {why}\n")
        return 1
    if not rollout.done:
        lagging = sorted(
            f"{node} ({', '.join(n for n, s in states.items() if s != 'running')})"
            for node, states in rollout.nodes.items()
            if any(s != "running" for s in states.values())
        )
        err.write(
            f"edgefaas: after {timeout_s:g} s these nodes have not switched: "
            f"{'; '.join(lagging) or 'no live node answered'}\n"
        )
        for where, why in rollout.waiting.items():
            err.write(f"edgefaas: {where}: {why}\n")
        return 1
    err.write(f"every live node runs the new versions ({elapsed:.2f} s)\n")
    return 0


def _build(
    specs: Iterable[FunctionSpec], key: SigningKey, terminal: Terminal
) -> dict[str, SignedBundle]:
    bundles = {}
    for spec in specs:
        bundle = build_bundle(spec).sign(key)
        bundles[spec.name] = bundle
        terminal.line(
            f"build  {spec.name:<21} {_size(len(bundle.data)):>9}  sha256 "
            f"{bundle.digest[:12]}  signed by {bundle.key_id}"
        )
    if not bundles:
        raise MeshError("the manifest declares no functions")
    return bundles


def _table_printer(terminal: Terminal) -> Callable[[Rollout], None]:
    def show(rollout: Rollout) -> None:
        running = sum(s == "running" for st in rollout.nodes.values() for s in st.values())
        total = sum(len(st) for st in rollout.nodes.values())
        terminal.line(
            f"rollout: {running}/{total} node·function pairs switched",
            final=rollout.done or bool(rollout.failures),
        )

    return show


def format_rollout(rollout: Rollout) -> str:
    """NODE, then one column per function: running / failed / pending."""
    names = sorted(rollout.targets)
    rows = [["NODE", *names]]
    for node in sorted(rollout.nodes):
        rows.append([node, *(rollout.nodes[node].get(n, "-") for n in names)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )
