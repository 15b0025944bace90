"""Fetching a bundle from the peers that hold it.

Holders are tried in random order, so that a freshly deployed bundle is not fetched from the
one node it was uploaded to by everyone: the first nodes to finish become holders
themselves. The bytes are hashed while they stream in (a peer that sends too much or the
wrong bytes is dropped at once, and the next holder is tried); the signature is checked
before the bundle is stored.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Callable

import httpx

from registry.defaults import MAX_BUNDLE_BYTES
from registry.errors import MeshError
from registry.store import BundleMeta, BundleStore

FETCH_TIMEOUT_S = 30.0

Authenticate = Callable[[str, str], dict[str, str]]


class Fetcher:
    """Downloads bundles into a store with a shared HTTP client."""

    def __init__(self, store: BundleStore, authenticate: Authenticate) -> None:
        self.store = store
        self.authenticate = authenticate
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(FETCH_TIMEOUT_S, connect=2.0))

    async def close(self) -> None:
        await self.client.aclose()

    async def fetch(self, digest: str, meta: BundleMeta, sources: dict[str, str]) -> str:
        """Fetch ``digest`` from one of ``sources`` (node name → URL); return the name of
        the node it came from. Raises :class:`MeshError` listing why each source failed."""
        order = list(sources.items())
        random.shuffle(order)
        problems = []
        for node, url in order:
            try:
                data = await self._download(url, digest)
                await asyncio.to_thread(self.store.put, data, digest, meta.signature, meta.key_id)
                return node
            except (httpx.HTTPError, MeshError) as exc:
                problems.append(f"{node}: {exc}")
            # BundleRejected passes through: the bytes are the digest's, their signature is
            # what the node refuses — another holder would send the same bytes.
        if not problems:
            raise MeshError(f"no live node holds bundle {digest[:12]}")
        raise MeshError(f"could not fetch bundle {digest[:12]}: " + "; ".join(problems))

    async def _download(self, url: str, digest: str) -> bytes:
        path = f"/system/bundles/{digest}"
        hasher = hashlib.sha256()
        chunks = []
        size = 0
        headers = self.authenticate("GET", path)
        async with self.client.stream("GET", url.rstrip("/") + path, headers=headers) as reply:
            if reply.status_code != 200:
                await reply.aread()
                raise MeshError(f"answered {reply.status_code}: {reply.text[:200]}")
            async for chunk in reply.aiter_bytes():
                size += len(chunk)
                if size > MAX_BUNDLE_BYTES:
                    raise MeshError(f"sent more than the {MAX_BUNDLE_BYTES}-byte bundle limit")
                hasher.update(chunk)
                chunks.append(chunk)
        if hasher.hexdigest() != digest:
            raise MeshError(
                f"sent bytes whose sha256 is {hasher.hexdigest()[:12]}, not {digest[:12]}"
            )
        return b"".join(chunks)
