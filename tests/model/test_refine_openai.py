"""The optional OpenAI-compatible backend, against a local fake server (never a real service)."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from model.refine import Refiner
from model.refine.refiner import RefinerSettings

GOOD = {
    "findings": [{"label": "pleural effusion", "status": "present", "side": "left", "zones": [], "severity": "small"}]
}


class _Fake(BaseHTTPRequestHandler):
    mode = "good"
    seen: list = []

    def do_POST(self):  # noqa: N802 (http.server API)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        mode = type(self).mode
        if mode == "http500":
            self.send_response(500)
            self.end_headers()
            return
        if mode == "slow":
            time.sleep(1.5)
        content = {
            "good": json.dumps(GOOD),
            "slow": json.dumps(GOOD),
            "not_json": "Sure! The findings are: effusion.",
            "bad_schema": json.dumps({"findings": [{"label": "Broken Heart", "status": "present"}]}),
        }[mode]
        payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (the time-out case)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Fake)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()


def _refiner(url, **kw):
    return Refiner(
        RefinerSettings(backend="openai", base_url=url, model="fake-model", api_key="sk-test", timeout_s=0.5, **kw)
    )


def test_valid_answer_is_used(server):
    _Fake.mode, _Fake.seen = "good", []
    result = _refiner(server)("There may be a little fluid on the left.")
    assert result.backend == "openai" and result.fallback_reason is None
    assert result.condition == "small left pleural effusion"
    call = _Fake.seen[0]
    assert call["path"] == "/v1/chat/completions" and call["auth"] == "Bearer sk-test"
    assert call["body"]["model"] == "fake-model" and call["body"]["temperature"] == 0


@pytest.mark.parametrize(
    "mode, reason",
    [("not_json", "not chat JSON"), ("bad_schema", "schema"), ("http500", "HTTP 500"), ("slow", "timed out")],
)
def test_failures_fall_back_to_rules_and_say_so(server, mode, reason):
    _Fake.mode = mode
    result = _refiner(server)("Small right pneumothorax.")
    assert result.backend == "rules"
    assert result.fallback_reason and reason in result.fallback_reason
    assert result.condition == "small right pneumothorax"


def test_unreachable_endpoint_falls_back():
    result = _refiner("http://127.0.0.1:9/v1")("Mild cardiomegaly.")
    assert result.backend == "rules" and "unreachable" in result.fallback_reason


def test_openai_backend_needs_url_and_model(monkeypatch):
    monkeypatch.setenv("WHATIF_REFINER_BACKEND", "openai")
    with pytest.raises(ValueError, match="WHATIF_REFINER_BASE_URL"):
        Refiner()
    with pytest.raises(ValueError, match="unknown refiner backend"):
        Refiner(RefinerSettings(backend="gpt"))
