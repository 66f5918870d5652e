"""Which memcached server holds a key: consistent hashing on a ring with virtual nodes (pure).

`crc32(key) % n` moves almost every key when n changes (adding a fourth server to three moves
three quarters of them: a cold cache for every fedd process at once). On the ring each server
owns `VIRTUAL_NODES` points; a key belongs to the first point at or after its own hash, going round.
Adding a server moves only the keys its new points take over (about 1/(n+1) of them, all to the
new server); removing one moves only its own keys, spread over the others.

Points and keys are hashed with BLAKE2b to 64 bits (the same in every process and Python version,
unlike `hash()`), and a server's points from its configured address: every fedd process that
lists the same addresses, in any order, places every key on the same server.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Sequence

VIRTUAL_NODES = 160  # points per server: 3 servers then hold 1/3 of the keys each, within about 5 per cent
_HASH_BYTES = 8  # a 64-bit ring: point collisions between servers are negligible (and ordered anyway)


def ring_hash(data: bytes) -> int:
    """A position on the ring, in [0, 2**64)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=_HASH_BYTES).digest(), "big")


class HashRing:
    """`node(key)`: the index in `nodes` of the server that holds `key`."""

    def __init__(self, nodes: Sequence[str], virtual_nodes: int = VIRTUAL_NODES) -> None:
        if not nodes:
            raise ValueError("a hash ring needs at least one node")
        if len(set(nodes)) != len(nodes):
            raise ValueError("the nodes of a hash ring must be distinct")
        # (position, node name) sorted: equal positions (never seen in practice) still order the same everywhere
        points = sorted((ring_hash(f"{name}#{i}".encode()), name) for name in nodes for i in range(virtual_nodes))
        index = {name: i for i, name in enumerate(nodes)}
        self._positions = [position for position, _ in points]
        self._owners = [index[name] for _, name in points]
        self._alone = len(nodes) == 1

    def node(self, key: bytes) -> int:
        if self._alone:
            return 0
        at = bisect.bisect_left(self._positions, ring_hash(key))
        return self._owners[at if at < len(self._owners) else 0]  # past the last point: round to the first
