"""Where asynchronous calls live in Redis: RQ's own keys, so that ``rq info`` and
rq-dashboard show edgefaas's queues, jobs and workers as they show any RQ deployment.

==============================  =========================================================
key                             holds
==============================  =========================================================
``rq:queues``                   set of queue keys (RQ's list of queues)
``rq:queue:Q``                  list of job ids waiting, oldest first (Q = ``PREFIX.LANE``)
``rq:job:ID``                   the job: RQ's fields and the call's (``ef_*``, below)
``rq:wip:Q``                    RQ's StartedJobRegistry: ``ID:TOKEN`` → far-future score
``rq:scheduled:Q``              jobs waiting for a retry: ID → when (epoch seconds)
``rq:finished:Q``               finished jobs: ID → when their result expires
``rq:failed:Q``                 dead letters: ID → when they expire
``rq:canceled:Q``               canceled jobs: ID → when they expire
``rq:worker:W``                 an RQ worker record per (node, function) consumer
``rq:workers``, ``rq:workers:Q``  sets of worker keys
``PREFIX:lease:ID``             the run's token while a node runs it (expires in seconds)
==============================  =========================================================

A queue is named ``PREFIX.LANE`` (the mesh's key prefix and a lane), so two meshes sharing
one Redis keep their queues apart and ``rq info`` names both parts. A function has a lane
``NAME`` that every node running it drains (calls that may go to peers) and a lane
``NAME@NODE`` per node (calls that must stay on the node that accepted them, or go only to
the cloud): see :func:`lane`.
"""

from __future__ import annotations

import pickle
import re
import time
import zlib
from datetime import UTC, datetime
from functools import lru_cache

RQ = "rq"
QUEUES = f"{RQ}:queues"
JOB_PREFIX = f"{RQ}:job:"
WORKER_PREFIX = f"{RQ}:worker:"
WORKERS = f"{RQ}:workers"

RESULT_TTL_S = 24 * 3600  # a finished call's result is kept this long (RQ's result_ttl)
DEAD_TTL_S = 7 * 24 * 3600  # a dead letter (and a canceled call) is kept this long

# RQ reads a started job's registry score as the time its run expires and "cleans up" older
# entries whenever someone counts the registry (rq info does). Runs here are watched by
# leases instead, so the score is far ahead: RQ's own clean-up never touches them.
WIP_SCORE_AHEAD_S = 30 * 24 * 3600

# Fields of the call in the job hash, besides RQ's.
CALL_FIELDS = (
    "ef_fn",  # function name
    "ef_m",  # method
    "ef_p",  # path the handler sees
    "ef_q",  # query string
    "ef_h",  # header block, as the runtime's protocol carries it
    "ef_b",  # body
    "ef_cb",  # callback URL, or ""
    "ef_idem",  # idempotency key
    "ef_age_from",  # when max_age_s counts from (acceptance, or the last redrive)
)


# A lane: a function's name (the manifest's rule), maybe with a node's (the --node rule).
LANE = re.compile(r"[a-z][a-z0-9_-]{0,62}(@[A-Za-z0-9][A-Za-z0-9._-]{0,62})?")


def lane(function: str, node: str = "") -> str:
    """The lane of ``function``'s calls: shared by every node (no ``node``), or ``node``'s
    own. Function names have no ``@``, so :func:`lane_function` splits it back."""
    return f"{function}@{node}" if node else function


def lane_function(name: str) -> str:
    return name.partition("@")[0]


def queue_name(prefix: str, lane: str) -> str:
    return f"{prefix}.{lane}"


def queue_key(queue: str) -> str:
    return f"{RQ}:queue:{queue}"


def job_key(job_id: str) -> str:
    return JOB_PREFIX + job_id


def registry_key(kind: str, queue: str) -> str:
    """``kind``: wip, scheduled, finished, failed or canceled."""
    return f"{RQ}:{kind}:{queue}"


def lease_prefix(prefix: str) -> str:
    return f"{prefix}:lease:"


def workers_of(queue: str) -> str:
    return f"{RQ}:workers:{queue}"


def rq_time(at: float | None = None) -> str:
    """A time as RQ writes it (``utcformat``: ``2026-11-27T11:21:33.123456Z``)."""
    at = time.time() if at is None else at
    second = int(at)
    micro = round((at - second) * 1e6)
    if micro == 1_000_000:
        second, micro = second + 1, 0
    return f"{_utc_second(second)}.{micro:06d}Z"


@lru_cache(maxsize=4)
def _utc_second(second: int) -> str:
    return datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")


@lru_cache(maxsize=256)
def job_data(function: str) -> bytes:
    """RQ's ``data`` field: the zlib-compressed pickle of (func_name, instance, args,
    kwargs). Only plain strings are pickled here, and nothing here ever unpickles it: the
    call itself travels in the ``ef_*`` fields."""
    call: tuple[str, None, tuple[str], dict[str, str]] = ("edgefaas.call", None, (function,), {})
    return zlib.compress(pickle.dumps(call, protocol=pickle.HIGHEST_PROTOCOL))


def shown_status(status: str) -> str:
    """A job's RQ status as edgefaas shows it: a retry waiting is *failed*, a dead letter
    (RQ's *failed*) is *dead*."""
    return {"scheduled": "failed", "failed": "dead"}.get(status, status)
