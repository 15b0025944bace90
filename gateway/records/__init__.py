"""Call records: a line per call that the node answered, kept until the cloud has it.

- :mod:`~gateway.records.buffer` — the call path's in-memory buffer and the record format;
- :mod:`~gateway.records.stream` — an edge node's Redis stream of records (quota-bounded);
- :mod:`~gateway.records.shipper` — sends the stream to the cloud node, signed;
- :mod:`~gateway.records.store` — the cloud node's SQLite store;
- :mod:`~gateway.records.recorder` — composes them for one node, with metrics and status;
- :mod:`~gateway.records.api` — the HTTP routes (receive a batch, list, status).

May import :mod:`registry`, the front door's errors and :mod:`gateway.mesh.peers` (who the
cloud node is); ``api`` also :mod:`gateway.endpoints` and :mod:`gateway.contract`. Never
jobs or the CLI. Used by :class:`gateway.node.Node`, the call path and asynchronous calls
(they write records), and the app (routes).
"""
