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
from registry.errors import BundleError, BundleRejected, MeshAuthError, MeshError
from registry.store import BundleMeta, BundleStore

FETCH_TIMEOUT_S = 30.0  # per read: a holder that goes silent is dropped
FETCH_TOTAL_S = 120.0  # per download: a holder that trickles is dropped too

Authenticate = Callable[[str, str, str], dict[str, str]]  # method, path, to node → headers


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
        the node it came from. Raises :class:`MeshError` listing why each source failed
        (worth retrying), :class:`MeshAuthError` when every holder refused this node's mesh
        key, and :class:`BundleRejected` when the bytes fail verification (not worth it:
        every holder has the same bytes)."""
        order = list(sources.items())
        random.shuffle(order)
        problems = []
        refused = 0
        for node, url in order:
            try:
                async with asyncio.timeout(FETCH_TOTAL_S):
                    data = await self._download(node, url, digest)
                await asyncio.to_thread(self.store.put, data, digest, meta.signature, meta.key_id)
                return node
            except MeshAuthError as exc:
                refused += 1
                problems.append(f"{node}: {exc}")
            except (BundleRejected, BundleError):
                raise
            except MeshError as exc:
                problems.append(f"{node}: {exc}")
            except Exception as exc:  # a holder's failure is its own, whatever it is
                problems.append(f"{node}: {type(exc).__name__}: {exc}")
        if not problems:
            raise MeshError(f"no live node holds bundle {digest[:12]}")
        summary = f"could not fetch bundle {digest[:12]}: " + "; ".join(problems)
        raise MeshAuthError(summary) if refused == len(problems) else MeshError(summary)

    async def _download(self, node: str, url: str, digest: str) -> bytes:
        path = f"/system/bundles/{digest}"
        hasher = hashlib.sha256()
        chunks = []
        size = 0
        headers = self.authenticate("GET", path, node)
        async with self.client.stream("GET", url.rstrip("/") + path, headers=headers) as reply:
            if reply.status_code in (401, 403):
                raise MeshAuthError(
                    f"refused this node's mesh key ({reply.status_code}): "
                    "are EDGEFAAS_MESH_KEY the same on both nodes?"
                )
            if reply.status_code != 200:
                raise MeshError(f"answered {reply.status_code}")
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
