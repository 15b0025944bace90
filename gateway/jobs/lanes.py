"""Which queue an async call goes to, and which queues each node drains: the call's lane
(:func:`~gateway.jobs.layout.lane`) follows the function's ``spill.to``.

- A function that may go to peers (``spill.to`` lists ``peers``): the function's shared
  lane, drained by every edge node running it, so a busy node's backlog is drained by its
  peers (and by the cloud node when ``spill.to`` lists ``cloud`` too).
- Any other function: the lane of the node that accepted the call. A pinned function's
  calls (``spill.to: []``) run only there; a ``[cloud]`` function's there or on the cloud
  node, never on a peer.
- The cloud node keeps the calls it accepts itself (its own lane).

A node also drains the lanes of its functions that hold calls from an earlier version of
their ``spill`` (the shared lane, its own), so a redeploy strands nothing there; a node's
own lane of a pinned function waits for that node while it is away.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from gateway.jobs.layout import lane, lane_function


def accept_lane(function: str, spill_to: Sequence[str], node: str, cloud: bool) -> str:
    """The lane of a call of ``function`` accepted by ``node``."""
    if not cloud and "peers" in spill_to:
        return lane(function)
    return lane(function, node)


def drained_lanes(
    function: str, spill_to: Sequence[str], node: str, cloud: bool, known: Collection[str]
) -> list[str]:
    """The lanes ``node`` drains for ``function``: the one it waits on first, then the
    others (of those, only the ones in ``known``, the lanes that exist).

    An edge node: where its own accepts go, then the shared lane and its own. The cloud
    node: the shared lane of a function that may go to the cloud, and its own lane (where
    its accepts go), then — for a function that may go to the cloud but not to peers —
    every edge node's lane of it."""
    own, shared = lane(function, node), lane(function)
    accepted = accept_lane(function, spill_to, node, cloud)
    if not cloud:
        first, more = accepted, [shared, own]
    elif "cloud" not in spill_to:
        first, more = own, []
    else:
        first, more = shared, [own]
        if "peers" not in spill_to:
            more += sorted(x for x in known if lane_function(x) == function)
    chosen = (x for x in more if x != first and (x == accepted or x in known))
    return [first, *dict.fromkeys(chosen)]
