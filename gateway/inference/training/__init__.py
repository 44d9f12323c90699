"""Offline training of homeedge's models (needs the ``train`` extra; never imported at run time)."""
