"""Where the phantom caches what it derives from shipped data, and how it writes safely."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np


def cache_dir() -> Path:
    """`$WHATIF_CACHE_DIR`, default `~/.cache/whatif-cxr`."""
    return Path(os.environ.get("WHATIF_CACHE_DIR", Path.home() / ".cache" / "whatif-cxr"))


def save_npz_atomic(path: Path, **arrays) -> None:
    """Compressed `.npz` (no pickle) written to a temporary file and renamed into place, so that
    generation workers racing to build the same cache never read a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    with os.fdopen(fd, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    os.replace(tmp, path)
