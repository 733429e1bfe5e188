"""The access log never holds a query string (`api/access_log.py`): a token or a name planted in
`?...` of a request reaches no log line, under `uvicorn --factory api.main:create_app` (the
deployed command, access log on) and under `whatif serve`."""

import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from api.access_log import ACCESS_LOGGER, DropQueryStrings, install
from tests.helpers import free_port

from .conftest import KEY_A

PLANTED = "Jane-Doe-19450101-MRN4471"
ROOT = Path(__file__).resolve().parents[2]


def test_the_filter_cuts_the_query_from_uvicorns_request_line():
    record = logging.LogRecord(
        ACCESS_LOGGER,
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", f"/jobs/abc?name={PLANTED}&x=1", "1.1", 404),
        None,
    )
    assert DropQueryStrings().filter(record) and record.getMessage() == '127.0.0.1:5000 - "GET /jobs/abc HTTP/1.1" 404'
    formatted = logging.LogRecord(ACCESS_LOGGER, logging.INFO, __file__, 1, f'"GET /x?t={PLANTED} HTTP/1.1"', (), None)
    DropQueryStrings().filter(formatted)
    assert formatted.getMessage() == '"GET /x HTTP/1.1"'
    install()
    install()  # once, however often the app is made
    assert sum(isinstance(f, DropQueryStrings) for f in logging.getLogger(ACCESS_LOGGER).filters) == 1


def _get(url: str, headers: dict | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _serve(args, env, port, tmp_path):
    """Start the server, send requests with the planted query, stop it: -> everything it logged."""
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, cwd=ROOT, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 120
            while True:
                try:
                    _get(f"{base}/healthz")
                    break
                except OSError:
                    assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                    time.sleep(0.2)
            assert _get(f"{base}/healthz?patient={PLANTED}") == 200
            key = {"X-API-Key": KEY_A}
            assert _get(f"{base}/jobs/abcdefghijklmnopqrstuv?token={PLANTED}&q=%20{PLANTED}", key) == 404
            assert _get(f"{base}/nowhere?{PLANTED}") in (401, 404)
        finally:
            proc.terminate()
            proc.wait(30)
    return log.read_text()


def test_the_deployed_uvicorn_command_logs_request_lines_without_query_strings(tmp_path):
    port = free_port()
    env = {
        "WHATIF_API_KEYS": f'["{KEY_A}"]',
        "WHATIF_BLOB_DIR": str(tmp_path / "blobs"),
        "WHATIF_BROKER_URL": "redis://127.0.0.1:1/0",  # nothing there: the routes asked need no broker
    }
    args = [sys.executable, "-m", "uvicorn", "--factory", "api.main:create_app", "--host", "127.0.0.1"]
    logged = _serve([*args, "--port", str(port)], env, port, tmp_path)
    assert '"GET /healthz HTTP/1.1" 200' in logged, logged  # the access log is on, the path in it
    assert '"GET /jobs/abcdefghijklmnopqrstuv HTTP/1.1" 404' in logged, logged
    assert PLANTED not in logged and "token=" not in logged and "?" not in logged, logged


def test_whatif_serve_logs_no_query_string(tmp_path):
    port = free_port()
    env = {"WHATIF_CACHE_DIR": str(tmp_path / "cache")}
    logged = _serve([sys.executable, "-m", "whatif", "serve", "--port", str(port)], env, port, tmp_path)
    assert "serving on" in logged and PLANTED not in logged, logged
