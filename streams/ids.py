"""Fast random UUID4 strings (the SDK makes two per logged event)."""
from __future__ import annotations

import os

import numpy as np

# byte 6: version 4 in the high nibble; byte 8: variant 10xx in the high bits
_VERSION = bytes((b & 0x0F) | 0x40 for b in range(256))
_VARIANT = bytes((b & 0x3F) | 0x80 for b in range(256))
# (hex digit range, position in the 36-character form) of the five groups 8-4-4-4-12
_GROUPS = (((0, 8), 0), ((8, 12), 9), ((12, 16), 14), ((16, 20), 19), ((20, 32), 24))


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
        # hex digits as an (n, 32) character grid, dashes inserted column-wise, then cut into strings
        hexed = np.frombuffer(raw.hex().encode(), dtype="S1").reshape(self._block, 32)
        grid = np.full((self._block, 36), b"-", dtype="S1")
        for src, dst in _GROUPS:
            grid[:, dst:dst + src[1] - src[0]] = hexed[:, src[0]:src[1]]
        text = grid.tobytes().decode()
        self._pool = [text[i:i + 36] for i in range(0, 36 * self._block, 36)]

    def __call__(self) -> str:
        try:
            return self._pool.pop()
        except IndexError:
            self._refill()
            return self._pool.pop()
