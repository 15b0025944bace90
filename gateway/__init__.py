"""The node's front door and its wings.

The front door (this folder's modules) is what one node runs for HTTP: the ASGI app
(:mod:`~gateway.app`), the call path (:mod:`~gateway.invoke`), the HTTP contract — every
route declared once, checking its requests and writing ``/openapi.json``
(:mod:`~gateway.contract`, :mod:`~gateway.openapi`, :mod:`~gateway.api_pages`) — the admin
API and probes (:mod:`~gateway.admin`), the token and failed logins (:mod:`~gateway.auth`),
errors and their one mapping to responses (:mod:`~gateway.errors`), the guard every route
passes (:mod:`~gateway.endpoints`), connection limits (:mod:`~gateway.connections`), metrics,
the call log, settings, the server runner, and :class:`~gateway.node.Node`, which composes
the parts. The wings:

- :mod:`gateway.mesh` — the node's place in the mesh: agent, reconciler, peers, routing,
  forwarding, circuit breakers, and the mesh's HTTP routes;
- :mod:`gateway.records` — call records: buffered, streamed to Redis, shipped to and stored
  on the cloud node;
- :mod:`gateway.jobs` — asynchronous calls on RQ and their callbacks;
- :mod:`gateway.cli` — the client side (``edgefaas``), which runs on the user's machine.

Parts receive what they use and never import the node (or the app) back; only HTTP route
modules reach the node, through :func:`gateway.endpoints.node_of`. No node module imports
:mod:`gateway.cli`. ``tests/test_imports.py`` checks both.
"""
