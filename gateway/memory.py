"""glibc malloc for the gateway: `pin_malloc_thresholds()` (process-wide, at start) and
`malloc_trim()` (after dropping big buffers).

glibc serves an allocation of at least ``M_MMAP_THRESHOLD`` (128 KiB by default) with a mapping
of its own, which ``free`` hands back to the system; but each time such a block is freed it
raises the threshold to that block's size (up to 32 MB), and the trim threshold with it. After
onnxruntime's session set-up and the first utterances have freed blocks of a few MB, blocks of
that size come from the malloc heaps instead, where freeing them leaves holes the process
keeps. Pinning both thresholds at glibc's own defaults stops that: big transient buffers stay
in mappings of their own, and free space at a heap's top goes back to the system beyond 128
KiB. Measured with every model loaded and the uplink on (bench/startup.py): ~2.5 MB less
resident. No result changes: only where buffers of 128 KiB and more live (each then costs an
mmap and its page faults: audio windows, not the per-message path).

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
THRESHOLD = 128 * 1024  # glibc's default for both


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
    ok = mallopt(M_MMAP_THRESHOLD, THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, THRESHOLD) == 1
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
