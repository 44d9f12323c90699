"""Offline training of homeedge's models (needs the ``train`` extra; never imported at run time)."""

from __future__ import annotations

import time


def progress(t0: float, message: str) -> None:
    """A training step's line on stdout, with the seconds since `t0` (``time.monotonic()``)."""
    print(f"{message} ({time.monotonic() - t0:.0f}s)", flush=True)
