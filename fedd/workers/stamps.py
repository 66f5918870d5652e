"""When a path was last written through any worker of the host (fedd.workers): a small table of
write times in a shared memory-mapped file of the run directory, so a worker's cached "not found"
for a path another worker just wrote is not answered.

`stamp(path, now)` (a worker redirected a write, a delete or a move of `path`) stores `now` in the
path's slot (CRC-32 of the path's UTF-8 modulo SLOTS); `since(path)` reads it. A cached "not found" whose
lookup started before its slot's time is dropped and the path located again: at once, without a
poll, for the price of one 8-byte read per cached "not found" answered. Two paths sharing a slot
only cost a needless lookup. A slot is an aligned 8-byte double: its store and load are single
machine operations, so a reader sees the old time or the new one.
"""

from __future__ import annotations

import mmap
import os
import struct
import zlib
from pathlib import Path

SLOTS = 16384  # 128 KiB
STAMPS_FILE = "write-stamps.bin"
_SLOT = struct.Struct("d")


class WriteStamps:
    def __init__(self, path: Path) -> None:
        size = SLOTS * _SLOT.size
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)  # zeros; every worker may do it, the size is the same
            self._map = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(fd)
        self._slots = memoryview(self._map).cast("d")  # ~0.2 us a look, a third less than struct

    def stamp(self, path: str, now: float) -> None:
        self._slots[zlib.crc32(path.encode("utf-8", "surrogatepass")) % SLOTS] = now

    def since(self, path: str) -> float:
        value: float = self._slots[zlib.crc32(path.encode("utf-8", "surrogatepass")) % SLOTS]
        return value

    def close(self) -> None:
        self._slots.release()
        self._map.close()
