"""Gzip bombs: small bodies that inflate to a lot (the bomb test, bench/cloud_http.py)."""

from __future__ import annotations

import struct
import time
import zlib


def gzip_bomb(inflated_mib: int) -> bytes:
    """A valid gzip stream of `inflated_mib` MiB of zeros, about 1 KB per MiB (each MiB is
    compressed after a full flush, which resets the compressor, so one compressed MiB repeats)."""
    block = bytes(1 << 20)
    deflater = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    first = deflater.compress(block) + deflater.flush(zlib.Z_FULL_FLUSH)
    again = deflater.compress(block) + deflater.flush(zlib.Z_FULL_FLUSH)
    end = deflater.flush()[:-8]  # the final block, without the trailer of two MiB
    crc = 0
    for _ in range(inflated_mib):
        crc = zlib.crc32(block, crc)
    trailer = struct.pack("<II", crc, (inflated_mib << 20) & 0xFFFFFFFF)
    return first + again * (inflated_mib - 1) + end + trailer


def inflate_cpu_s(bomb: bytes) -> float:
    """This process's CPU time to inflate `bomb` (output dropped as it comes)."""
    started = time.process_time()
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    pending = bomb
    while not inflater.eof:
        piece = inflater.decompress(pending, 1 << 20)
        pending = inflater.unconsumed_tail
        if not piece and not pending:
            break
    assert inflater.eof
    return time.process_time() - started
