"""Shared test settings: everything runs on the CPU with small images and fixed seeds."""

import os

# The lung-mask and label caches are built once per machine; tests share the user's cache.
os.environ.setdefault("MPLBACKEND", "Agg")
