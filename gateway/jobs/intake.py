"""Accepting asynchronous calls into their queues: the ACCEPT step
(:data:`gateway.jobs.scripts.ACCEPT`) for every call that arrived in one turn of the event
loop, in one pipeline — one write and one read for all of them instead of one each (the
accept path is bound by the gateway's one core).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError

from gateway.jobs import layout, scripts
from gateway.jobs.layout import DEAD_TTL_S, RESULT_TTL_S

Pending = tuple[str, str, bytes, str, "asyncio.Future[Any]"]  # id, queue, fields, function


@dataclass(frozen=True)
class NewCall:
    """What ``/async-function`` accepted."""

    job_id: str
    function: str
    method: bytes
    path: bytes
    query: bytes
    headers: bytes
    body: bytes
    callback_url: str
    idempotency_key: str
    retries: int
    timeout_s: float
    lane: str = ""  # the queue's lane (see layout.lane); the function's shared one if empty


class Intake:
    """The accepts of one node's :class:`~gateway.jobs.store.JobStore`."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self._accept = redis.register_script(scripts.ACCEPT)
        self._accepts: list[Pending] = []
        self._sending: set[asyncio.Task[None]] = set()

    async def accept(self, call: NewCall) -> str | None:
        """Enqueue ``call``; None when it is new, else the status of the job that already
        has its id (the same call sent twice is one job), or 'conflict' when that job is
        another function's."""
        now = time.time()
        stamp = layout.rq_time(now).encode()
        moment = repr(now).encode()
        queue = layout.queue_name(self.prefix, call.lane or call.function)
        fields = _constant_fields(queue, call.function, call.retries, call.timeout_s) + pack(
            b"created_at", stamp,
            b"enqueued_at", stamp,
            b"ef_m", call.method,
            b"ef_p", call.path,
            b"ef_q", call.query,
            b"ef_h", call.headers,
            b"ef_b", call.body,
            b"ef_cb", call.callback_url.encode(),
            b"ef_idem", call.idempotency_key.encode(),
            b"ef_created", moment,
            b"ef_age_from", moment,
        )  # fmt: skip
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._accepts.append((call.job_id, queue, fields, call.function, future))
        if len(self._accepts) == 1:  # the first of this turn of the loop: send them soon
            asyncio.get_running_loop().call_soon(self._send_accepts)
        answer = await future
        if answer == 1:
            return None
        return answer.decode() if isinstance(answer, bytes) else str(answer)

    def _send_accepts(self) -> None:
        batch, self._accepts = self._accepts, []
        task = asyncio.get_running_loop().create_task(self._accept_batch(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _accept_batch(self, batch: list[Pending]) -> None:
        """Accepts that arrived in one turn of the event loop, in one pipeline: one write
        and one read for all of them instead of one each (the accept path is bound by the
        gateway's one core)."""
        answers: list[Any] = []
        try:
            answers = await self._pipelined_accepts(batch)
            again = [i for i, a in enumerate(answers) if isinstance(a, NoScriptError)]
            if again:  # Redis lost its scripts (or never had them) before these ran
                # Only those: another node's SCRIPT LOAD may have come between the commands
                # of this pipeline, and sending an accepted call again makes a "duplicate".
                try:
                    await self.redis.script_load(scripts.ACCEPT)
                    resent = await self._pipelined_accepts([batch[i] for i in again])
                except Exception as exc:  # (the others were accepted: they are told so)
                    resent = [exc] * len(again)
                for i, answer in zip(again, resent, strict=True):
                    answers[i] = answer
        except Exception as exc:  # Redis unreachable: every caller is told
            answers = [exc] * len(batch)
        finally:  # cancelled (the node is stopping): no caller waits for ever
            for i, (*_, future) in enumerate(batch):
                if future.done():
                    continue
                answer = answers[i] if i < len(answers) else RedisError("not sent")
                if isinstance(answer, Exception):
                    future.set_exception(answer)
                else:
                    future.set_result(answer)

    async def _pipelined_accepts(self, batch: list[Pending]) -> list[Any]:
        sha = self._accept.sha
        mesh = layout.queue_name(self.prefix, "")
        async with self.redis.pipeline(transaction=False) as pipe:
            for job_id, queue, fields, function, _ in batch:
                keys = (layout.job_key(job_id), layout.queue_key(queue), layout.QUEUES)
                pipe.evalsha(sha, 3, *keys, job_id, queue, fields, mesh, function)
            answers: list[Any] = await pipe.execute(raise_on_error=False)
        return answers


def pack(*values: bytes) -> bytes:
    """Values as one string the ACCEPT script splits (``LEN:BYTES`` each): one argument
    instead of dozens, which redis-py would encode one by one (most of an accept's cost)."""
    return b"".join([b"%d:%s" % (len(v), v) for v in values])


@lru_cache(maxsize=1024)
def _constant_fields(queue: str, function: str, retries: int, timeout_s: float) -> bytes:
    """The fields every job of a function starts with, packed once."""
    return pack(
        b"status", b"queued",
        b"origin", queue.encode(),
        b"data", layout.job_data(function),
        b"description", f"edgefaas call to {function}".encode(),
        b"timeout", b"%d" % max(1, int(timeout_s + 0.999)),
        b"result_ttl", b"%d" % RESULT_TTL_S,
        b"failure_ttl", b"%d" % DEAD_TTL_S,
        b"retries_left", b"%d" % retries,
        b"worker_name", b"",
        b"started_at", b"",
        b"ended_at", b"",
        b"ef_fn", function.encode(),
        b"ef_attempts", b"0",
    )  # fmt: skip
