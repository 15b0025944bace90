"""Defaults for every per-function setting of ``functions.yaml`` (units in the names)."""

from __future__ import annotations

SCHEMA_VERSION = 1

TIMEOUT_S = 10.0
MAX_TIMEOUT_S = 900.0
MEMORY_MB = 512
MIN_MEMORY_MB = 32

POOL_MIN = 1
POOL_MAX = 4
POOL_CONCURRENCY = 1
POOL_QUEUE_MAX = 128
POOL_MAX_QUEUE_WAIT_MS = 2000
POOL_IDLE_TIMEOUT_S = 30.0

# Spill-over: where a call goes when this node cannot take it soon enough.
SPILL_TIERS = ("peers", "cloud")  # every tier there is, in the order a call tries them
SPILL_TO = ("peers", "cloud")
SPILL_MAX_LOCAL_WAIT_MS = 100
SPILL_CLOUD_COMPATIBLE = False  # may go to a foreign (non-edgefaas) cloud gateway

# Async calls (answered 202, run from a queue): Lambda's defaults.
ASYNC_RETRIES = 2  # runs after the first one fails
ASYNC_MAX_RETRIES = 10
ASYNC_BACKOFF_S = (1.0, 10.0, 60.0)  # wait before retry 1, 2, 3...; the last repeats
ASYNC_MAX_AGE_S = 21600.0  # 6 h from acceptance; older calls become dead letters
ASYNC_MAX_AGE_LIMIT_S = 7 * 24 * 3600  # the longest max_age_s (and backoff) allowed

# Sandboxes: what a function's lean container allows it (registry.sandboxspec).
SANDBOX_NETWORK = "host"  # or "none": a network namespace with only loopback
SANDBOX_TMP_MB = 64  # its private /tmp
SANDBOX_MAX_TMP_MB = 65536
SANDBOX_CPU = 1.0  # cores, for all its workers together
SANDBOX_MAX_CPU = 1024.0
SANDBOX_PIDS = 128  # processes and threads of its zygote, workers and their children
SANDBOX_MIN_PIDS = 8
SANDBOX_MAX_PIDS = 65536

HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
DEFAULT_TRIGGER_METHODS = ("POST",)

# Paths the gateway serves itself; a trigger may not claim them or anything below them.
RESERVED_PATH_PREFIXES = (
    "/function/",
    "/async-function/",
    "/system/",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
)

# Bundles: what a node accepts before it unpacks anything (the packed limit is also what a
# gateway or peer accepts over HTTP).
MAX_BUNDLE_BYTES = 256 * 1024 * 1024  # packed (gzip'd tar) size
MAX_UNPACKED_BYTES = 1024 * 1024 * 1024  # sum of the archive members' sizes
MAX_BUNDLE_MEMBERS = 20_000
BATCH_MAX_SIZE_LIMIT = 256  # the largest batch.max_size
BATCH_MAX_WAIT_MS = 5  # batch.max_wait_ms when not given
BATCH_MAX_WAIT_LIMIT_MS = 1000  # the largest batch.max_wait_ms
