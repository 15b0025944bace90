"""Redis for the test suite: one server per session, one key prefix per test.

A pytest plugin, loaded from ``tests/conftest.py``:

- ``redis_url`` (session): ``$REDIS_URL`` when set (CI points it at a real Redis, e.g.
  ``redis://127.0.0.1:6379/15``), else an embedded ``redis-server`` on a Unix socket in a
  session temp dir, stopped at the end of the session.
- ``redis_prefix``: a key prefix of the test's own (``edgefaas-test-1a2b3c4d``); every key
  named ``PREFIX:…`` is deleted after the test, so tests sharing one Redis leave nothing
  behind and never see each other's keys. Give it to nodes as ``--key-prefix``.
- ``redis_client``: a synchronous client (bytes in, bytes out), closed after the test.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator

import pytest
import redis

from registry.redis_server import EmbeddedRedis, check_redis_url

UNLINK_BATCH = 500


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("REDIS_URL", "")
    if url:
        check_redis_url(url)
        yield url
        return
    with EmbeddedRedis(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=False)
    yield client
    client.close()


@pytest.fixture
def redis_prefix(redis_client: redis.Redis) -> Iterator[str]:
    prefix = f"edgefaas-test-{uuid.uuid4().hex[:8]}"
    yield prefix
    delete_prefix(redis_client, prefix)


def delete_prefix(client: redis.Redis, prefix: str) -> int:
    """Delete every key named ``PREFIX:…`` (SCAN, then UNLINK in batches); return how many
    were deleted."""
    pattern = re.sub(r"([*?\[\]\\])", r"\\\1", prefix) + ":*"
    keys = list(client.scan_iter(match=pattern, count=UNLINK_BATCH))
    deleted = 0
    for start in range(0, len(keys), UNLINK_BATCH):
        deleted += client.unlink(*keys[start : start + UNLINK_BATCH])
    return deleted
