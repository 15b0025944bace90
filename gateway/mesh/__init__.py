"""The node's place in the mesh: it joins, follows the desired state, and sends calls on.

- :mod:`~gateway.mesh.agent` — :class:`MeshAgent`: Redis, heartbeats, the bundle store, keys;
- :mod:`~gateway.mesh.reconciler` — makes the node's pools match the desired state;
- :mod:`~gateway.mesh.peers` — the live members as this node sees them, and their load;
- :mod:`~gateway.mesh.router` — where a call runs: here, a peer, the cloud, or nowhere;
- :mod:`~gateway.mesh.forward` — sending a call to another gateway; :mod:`~gateway.mesh.breaker`;
- :mod:`~gateway.mesh.api` — the HTTP routes: bundles, deploy, rollback, nodes.

May import :mod:`registry`, :mod:`runtime`, and the front door's errors, metrics and auth
(only ``api`` reaches the node, through :mod:`gateway.endpoints` and
:mod:`gateway.contract`). Never records, jobs or the CLI. Used by
:class:`gateway.node.Node`, the call path (:mod:`gateway.invoke`), records (who the cloud
node is) and the CLI (``mesh up`` makes keys as the agent does).
"""
