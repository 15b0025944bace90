"""Asynchronous calls on RQ: accepted with 202, kept in Redis as RQ jobs, run by the warm
workers of any node that runs the function, retried, dead-lettered, never lost.

- :mod:`gateway.jobs.layout` — RQ's key names and the job hash's fields;
- :mod:`gateway.jobs.scripts` — the Lua scripts that move a job between states atomically;
- :mod:`gateway.jobs.store` — :class:`JobStore`, the async Python face of those scripts;
- :mod:`gateway.jobs.consumer` — one function's consumer on one node;
- :mod:`gateway.jobs.service` — the node's consumers, leases, reaper and RQ worker records;
- :mod:`gateway.jobs.accept` — ``/async-function/{name}`` and async triggers;
- :mod:`gateway.jobs.routes` — the admin routes (call status, cancel, dead letters);
- :mod:`gateway.jobs.callbacks` — ``X-Callback-Url``: the allow-list and the delivery.

May import :mod:`runtime`, :mod:`registry`, the front door's errors, metrics and call path
(:mod:`gateway.invoke`: async calls pass the same checks) and the records buffer; only
``routes`` reaches the node (through :mod:`gateway.endpoints` and :mod:`gateway.contract`).
Used by :class:`gateway.node.Node`, the app, and settings (the ``--callback-allow`` check).
"""
