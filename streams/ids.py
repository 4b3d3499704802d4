"""Fast random UUID4 strings (the SDK makes two per logged event)."""
from __future__ import annotations

import os

_VERSION_CLEAR = ~(0xF000 << 64) & ((1 << 128) - 1)
_VARIANT_CLEAR = ~(0xC000 << 48) & ((1 << 128) - 1)
_SET = (0x4000 << 64) | (0x8000 << 48)


class UuidSource:
    """UUID4 strings from os.urandom read in blocks. Not shared across threads without a lock
    (each SDK client has its own)."""

    def __init__(self, block: int = 4096):
        self._block = block
        self._pool = b""
        self._pos = 0

    def __call__(self) -> str:
        pos = self._pos
        if pos + 16 > len(self._pool):
            self._pool, pos = os.urandom(16 * self._block), 0
        self._pos = pos + 16
        n = (int.from_bytes(self._pool[pos:pos + 16], "big") & _VERSION_CLEAR & _VARIANT_CLEAR) | _SET
        h = "%032x" % n
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
