"""Warm worker pools: zygotes, workers, the wire protocol, the node's supervisor and the
functions' sandboxes (:mod:`runtime.sandbox`). Imports nothing from :mod:`gateway`.

Function code imports only what it needs from here::

    from runtime import Event, Context, HTTPError
"""

from runtime.errors import HTTPError
from runtime.event import Context, Event

__all__ = ["Context", "Event", "HTTPError"]
