"""Functions a decode process runs in tests/api/test_decode_isolation.py: module-level, so that they
cross to a child process by name."""

from __future__ import annotations

import os
import re
import time


def hold_the_gil(seconds: float) -> float:
    """A catastrophic regular expression: `re` matches without releasing the GIL, as OpenJPEG decodes."""
    t = time.perf_counter()
    n = 20
    while time.perf_counter() - t < seconds:
        re.match(r"(a+)+$", "a" * n + "b")
        n += 1
    return time.perf_counter() - t


def crash() -> None:
    os._exit(11)  # as a codec that segfaults: the process is gone, no exception


def pid() -> int:
    return os.getpid()
