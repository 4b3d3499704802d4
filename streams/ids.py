"""Fast random UUID4 strings (the SDK makes two per logged event)."""
from __future__ import annotations

import os

# byte 6: version 4 in the high nibble; byte 8: variant 10xx in the high bits
_VERSION = bytes((b & 0x0F) | 0x40 for b in range(256))
_VARIANT = bytes((b & 0x3F) | 0x80 for b in range(256))


class UuidSource:
    """UUID4 strings made from os.urandom a block at a time (version and variant bits set with
    bytes.translate, one hex conversion per block), handed out one per call. Not shared across
    threads without a lock (each SDK client has its own)."""

    def __init__(self, block: int = 4096):
        self._block = block
        self._pool: list[str] = []

    def _refill(self) -> None:
        raw = bytearray(os.urandom(16 * self._block))
        raw[6::16] = raw[6::16].translate(_VERSION)
        raw[8::16] = raw[8::16].translate(_VARIANT)
        h = raw.hex()
        self._pool = [f"{h[i:i + 8]}-{h[i + 8:i + 12]}-{h[i + 12:i + 16]}-{h[i + 16:i + 20]}-{h[i + 20:i + 32]}"
                      for i in range(0, len(h), 32)]

    def __call__(self) -> str:
        try:
            return self._pool.pop()
        except IndexError:
            self._refill()
            return self._pool.pop()
