"""The whole Redis key schema of a mesh, under one prefix (default ``edgefaas``).

=================================  ======================================================
key                                holds
=================================  ======================================================
``P:nodes``                        set of node names that have registered
``P:node:NAME``                    the node's record (JSON), expiring ``NODE_TTL_S`` after
                                   its last heartbeat
``P:desired``                      hash: function name → desired entry (JSON: digest,
                                   version, signature, key id, triggers, deployed_at)
``P:generation``                   counter, incremented on every change of ``P:desired``;
                                   nodes poll it to know when to reconcile
``P:version:NAME``                 counter: the function's last version number
``P:history:NAME``                 list of every entry the function has had, newest first
``P:holders:DIGEST``               set of node names that hold the bundle on disk
``P:fetchers:DIGEST``              list of the nodes that set out to fetch the bundle, in
                                   order (expires): later ones fetch from earlier ones
``P:records:NODE``                 stream of the node's call records not yet shipped to the
                                   cloud (one field ``r``: the record as JSON), capped
``P:records-shipped:NODE``         id of the last record of the stream the cloud took
=================================  ======================================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_PREFIX = "edgefaas"
_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}")


@dataclass(frozen=True)
class Keys:
    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not _PREFIX.fullmatch(self.prefix):
            raise ValueError(
                f"invalid key prefix {self.prefix!r}: expected 1–64 of A-Z a-z 0-9 . _ : -"
            )

    @property
    def nodes(self) -> str:
        return f"{self.prefix}:nodes"

    def node(self, name: str) -> str:
        return f"{self.prefix}:node:{name}"

    @property
    def desired(self) -> str:
        return f"{self.prefix}:desired"

    @property
    def generation(self) -> str:
        return f"{self.prefix}:generation"

    def version(self, function: str) -> str:
        return f"{self.prefix}:version:{function}"

    def history(self, function: str) -> str:
        return f"{self.prefix}:history:{function}"

    def holders(self, digest: str) -> str:
        return f"{self.prefix}:holders:{digest}"

    def fetchers(self, digest: str) -> str:
        return f"{self.prefix}:fetchers:{digest}"

    def records(self, node: str) -> str:
        return f"{self.prefix}:records:{node}"

    def records_shipped(self, node: str) -> str:
        return f"{self.prefix}:records-shipped:{node}"


def text(value: bytes | str) -> str:
    """A Redis reply as text (clients may or may not decode responses)."""
    return value.decode() if isinstance(value, bytes) else value
