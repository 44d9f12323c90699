"""`gateway.memory`: with the malloc thresholds pinned, a big block freed after an even bigger
one goes back to the system; an operator's own malloc settings are left alone."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.memory import pin_malloc_thresholds

ROOT = Path(__file__).resolve().parents[1]

# Frees a 4 MB block (which raises glibc's dynamic mmap threshold unless it is pinned), then
# prints how much resident memory freeing a 2 MB block handed back (MB).
PROBE = """
import ctypes, sys
from gateway.memory import pin_malloc_thresholds
if sys.argv[1] == "pin":
    assert pin_malloc_thresholds({})
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024

big = libc.malloc(4 << 20)
ctypes.memset(big, 1, 4 << 20)
libc.free(big)
block = libc.malloc(2 << 20)
ctypes.memset(block, 1, 2 << 20)
before = rss()
libc.free(block)
print(before - rss())
"""


def _handed_back(mode: str) -> float:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}  # no MALLOC_* from the caller
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    return float(out.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_pinned_thresholds_hand_a_freed_big_block_back() -> None:
    assert _handed_back("pin") >= 1.9
    assert _handed_back("default") < 0.5  # what the pinning changes: glibc keeps it


def test_an_operators_own_malloc_settings_win() -> None:
    assert not pin_malloc_thresholds({"MALLOC_ARENA_MAX": "2"})
    assert not pin_malloc_thresholds({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=65536"})
