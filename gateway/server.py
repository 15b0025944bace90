"""Run a node: uvicorn (uvloop + httptools) serving the gateway app, with edgefaas' signal
rules — the first SIGTERM or SIGINT drains in-flight calls for up to ``grace_s`` and exits;
a second one forces. Either way every zygote and worker is gone when :func:`serve` returns.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
from collections.abc import Generator
from types import FrameType

import uvicorn
import uvloop

from gateway.app import create_app
from gateway.connections import uvicorn_options
from gateway.errors import GatewayError, StartupFailed
from gateway.node import Node
from gateway.settings import Settings
from registry.errors import RegistryError
from registry.specs import Manifest

log = logging.getLogger("edgefaas.gateway")
HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class NodeServer(uvicorn.Server):
    """uvicorn's server with our signal handling: any second signal forces the exit, and
    signals are not re-raised after shutdown (the CLI picks the exit code). It tells the
    node when its port is open."""

    def __init__(self, config: uvicorn.Config, node: Node) -> None:
        super().__init__(config)
        self.node = node

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            await self.node.now_serving()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit:
            self.force_exit = True
        else:
            self.should_exit = True


async def serve(settings: Settings, manifest: Manifest | None) -> None:
    """Serve until signalled. Raises :class:`StartupFailed` if the node cannot start or
    the port cannot be bound."""
    node = Node(settings, manifest)
    config = uvicorn.Config(
        create_app(node),
        host=settings.host,
        port=settings.port,
        lifespan="on",
        access_log=False,
        log_config=None,
        server_header=False,
        proxy_headers=False,  # the node reads no client addresses; this saves a layer per call
        timeout_graceful_shutdown=int(settings.grace_s + 0.999),
        **uvicorn_options(
            settings.header_timeout_s, settings.keep_alive_s, settings.max_connections
        ),
    )
    server = NodeServer(config, node)
    try:
        # Started here rather than only in the lifespan, so that a node that cannot start
        # (a key file, a name in use, Redis) says why in one line, not a traceback.
        await node.start()
    except (RegistryError, GatewayError, OSError) as exc:
        await node.close(force=True)
        raise StartupFailed(f"node {node.name} could not start: {exc}") from exc
    try:
        await server.serve()
    except SystemExit as exc:  # uvicorn exits when it cannot bind or the lifespan fails
        raise StartupFailed(
            f"the gateway could not start on {settings.host}:{settings.port} (see the log above)"
        ) from exc
    finally:
        if server.force_exit:
            log.warning("forced exit: killing all workers")
        await node.close(force=True)


def run(settings: Settings, manifest: Manifest | None) -> None:
    uvloop.run(serve(settings, manifest))
