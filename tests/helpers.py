"""Helpers for tests that need a real program (redis-server, chromium): present in CI, which installs them."""

import contextlib
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


@contextlib.contextmanager
def serving(start, data_dir):
    """`start(port, data_dir)` (start_redis, start_orthanc) on a free port: the port, and the server
    terminated afterwards."""
    port = free_port()
    proc = start(port, data_dir)
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


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


def start_orthanc(port: int, data_dir, servers: dict | None = None) -> subprocess.Popen:
    """An Orthanc PACS on 127.0.0.1:`port` with its DICOMweb plugin at /dicom-web, storage under
    `data_dir`, no DICOM port and no authentication, answering HTTP; the caller terminates it.
    `servers`: the DICOMweb servers it may send to (its `DicomWeb.Servers` configuration)."""
    import json
    import urllib.request

    binary = require_binary("Orthanc")
    plugin = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")  # Debian's orthanc-dicomweb
    if not plugin.exists():
        if os.environ.get("CI"):
            pytest.fail("Orthanc's DICOMweb plugin is not installed; .ci/run installs orthanc-dicomweb")
        pytest.skip("Orthanc's DICOMweb plugin (orthanc-dicomweb) not installed here (CI installs it)")
    storage = Path(data_dir) / "orthanc"
    storage.mkdir(parents=True, exist_ok=True)
    config = {
        "Name": "whatif-test",
        "HttpPort": port,
        "DicomServerEnabled": False,
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [str(plugin)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Servers": servers or {}},
    }
    path = storage / "orthanc.json"
    path.write_text(json.dumps(config))
    proc = subprocess.Popen([binary, str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/dicom-web/studies", timeout=1):
                return proc
        except OSError:
            if proc.poll() is not None:
                break
            time.sleep(0.05)
    proc.terminate()
    raise AssertionError("Orthanc did not start")
