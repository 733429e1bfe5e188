"""Helpers for tests that need a real program (redis-server, chromium): present in CI, which installs them."""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest


def require_binary(name: str) -> str:
    """The program's path; in CI a missing program fails the test (CI installs it), elsewhere skips."""
    venv_bin = Path(sys.executable).parent / name  # console scripts of the test extras (hadolint)
    path = shutil.which(name) or (str(venv_bin) if venv_bin.exists() else None)
    if path:
        return path
    if os.environ.get("CI"):
        pytest.fail(f"{name} is not installed; .ci/run installs it")
    pytest.skip(f"{name} not installed here (CI installs it)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(port: int, data_dir) -> subprocess.Popen:
    """A redis-server on 127.0.0.1:`port` without persistence (no RDB, no AOF), answering PING;
    the caller terminates it."""
    import redis

    args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(data_dir)]
    proc = subprocess.Popen(
        [require_binary("redis-server"), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    client = redis.Redis(port=port)
    for _ in range(200):
        try:
            client.ping()
            return proc
        except redis.ConnectionError:
            time.sleep(0.05)
    proc.terminate()
    raise AssertionError("redis-server did not start")
