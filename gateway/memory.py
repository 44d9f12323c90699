"""glibc malloc for the gateway: `pin_malloc_thresholds()` (process-wide, at start) and
`malloc_trim()` (after dropping big buffers).

glibc serves an allocation of at least ``M_MMAP_THRESHOLD`` (128 KiB by default) with a mapping
of its own, which ``free`` hands back to the system; but each time such a block is freed it
raises the threshold to that block's size (up to 32 MB), and the trim threshold with it. After
onnxruntime's session set-up and the first utterances have freed blocks of a few MB, blocks of
that size come from the malloc heaps instead, where freeing them leaves holes the process
keeps. Pinning the thresholds stops that: blocks of 1 MiB and more always get a mapping of their
own, and free space at a heap's top beyond 128 KiB goes back to the system. Measured with every
model loaded and the uplink on (bench/startup.py, 2026-12-04, load 6-8): ~2.5-3 MB less
resident, the same at a 128 KiB or 1 MiB mmap threshold; the audio pipeline's CPU per second of
audio (bench/inference.py's audio cost, 3 runs each, alternating) rose from 7.9 to 8.9 ms with
128 KiB (its frame buffers then cost an mmap and page faults each) and 8.20 -> 8.34 ms (noise)
with 1 MiB, hence 1 MiB. No result changes: only where big buffers live.

An operator's own choice wins: with any ``MALLOC_*_`` variable or ``GLIBC_TUNABLES`` in the
environment nothing is set. A C library without ``mallopt`` (musl) is left as it is.
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1024 * 1024
TRIM_THRESHOLD = 128 * 1024  # glibc's default


def pin_malloc_thresholds(environ: dict[str, str] | None = None) -> bool:
    """Pin glibc's mmap and trim thresholds (see the module docstring); True if set."""
    env = os.environ if environ is None else environ
    if "GLIBC_TUNABLES" in env or any(k.startswith("MALLOC_") for k in env):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = (
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
        and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    )
    if not ok:
        log.warning("mallopt refused the malloc thresholds; running with the C library's own")
    return ok


def malloc_trim() -> None:
    """Hand freed heap pages back to the system (glibc's ``malloc_trim(0)``; a no-op without
    it): buffers freed in the middle of a heap stay resident after ``free`` alone."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
