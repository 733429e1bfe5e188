"""Authentication decided by the connection, not by settings; weak keys refused; local mode's
Host and Origin checks; security headers on every response; no redirect built from Host; the
guards' errors in one shape and in the OpenAPI. The app ends at a stub queue: no job runs."""

import base64
import hashlib
import re

import pytest
from fastapi.testclient import TestClient

from .conftest import KEY_A, UNLIMITED, stored, stub_app

PROBLEM = "application/problem+json"
LOCAL = {"single_machine": True, "auth_disabled": True, **UNLIMITED}
LOOPBACK = ("127.0.0.1", 50000)


def _png() -> bytes:
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _post(client, headers=None):
    return client.post(
        "/counterfactual",
        headers=headers or {},
        files={"image": ("x.png", _png(), "image/png")},
        data={"target": "mild edema"},
    )


def _kind(r) -> str:
    assert r.headers["content-type"] == PROBLEM, (r.status_code, r.text)
    return r.json()["type"].removeprefix("urn:whatif-cxr:problem:")


@pytest.fixture()
def local(tmp_path):
    """Local mode (no keys) as `whatif serve` runs it on 127.0.0.1:8000."""
    app = stub_app(tmp_path / "blobs", **LOCAL)
    with TestClient(app, base_url="http://127.0.0.1:8000", client=LOOPBACK) as client:
        yield client


@pytest.fixture()
def keyed(tmp_path):
    with TestClient(stub_app(tmp_path / "blobs", **UNLIMITED), raise_server_exceptions=False) as client:
        yield client


# --- authentication decided by the connection ----------------------------------------------------


def test_local_mode_answers_a_loopback_connection_without_a_key(local):
    assert local.get("/healthz").status_code == 200
    assert _post(local).status_code == 202


@pytest.mark.parametrize(
    "server,client",
    [
        (("192.0.2.10", 8000), LOOPBACK),  # uvicorn --host 0.0.0.0, reached on the machine's address
        (("127.0.0.1", 8000), ("192.0.2.77", 40000)),  # a peer that is not this machine
        (("0.0.0.0", 8000), LOOPBACK),  # not an address a connection arrives on
    ],
)
def test_local_mode_refuses_a_connection_that_is_not_loopback(tmp_path, server, client):
    """The settings say local mode; the connection says otherwise, and wins. (TestClient takes the
    server address from its base URL.)"""
    app = stub_app(tmp_path / "blobs", **LOCAL)
    host, port = server
    with TestClient(app, base_url=f"http://{host}:{port}", client=client) as c:
        for r in (
            c.get("/healthz", headers={"Host": "127.0.0.1:8000"}),
            _post(c, {"Host": "127.0.0.1:8000"}),
            c.get("/jobs/abcdefghijklmnopqrstuv", headers={"Host": "127.0.0.1:8000"}),
        ):
            assert r.status_code == 403 and _kind(r) == "not-loopback", r.text
    assert app.state.celery.sent == []


def test_local_mode_refuses_a_unix_socket():
    """uvicorn --uds: the server "address" is a path, the client none; nothing to show it is local."""
    import asyncio

    from api.middleware.local_only import LocalOnly

    reached = []

    async def inner(scope, receive, send):
        reached.append(scope)

    sent = []

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "method": "GET",
        "path": "/healthz",
        "headers": [(b"host", b"localhost")],
        "server": ("/run/whatif.sock", None),
        "client": None,
    }
    asyncio.run(LocalOnly(inner, enabled=True)(scope, None, send))
    assert not reached and sent[0]["status"] == 403


def test_the_settings_still_refuse_local_mode_off_loopback_or_outside_single_machine():
    from pydantic import ValidationError

    from api.core.config import Settings

    with pytest.raises(ValidationError, match="only allowed in single-machine mode"):
        Settings(auth_disabled=True, single_machine=True, bind_host="0.0.0.0")
    with pytest.raises(ValidationError, match="only allowed in single-machine mode"):
        Settings(auth_disabled=True)


@pytest.mark.parametrize(
    "key,reason",
    [
        (" " * 16, "space"),
        (" " * 40, "space"),
        ("a" * 32, "entropy"),
        ("k" * 24, "entropy"),
        ("changeme" * 4, "entropy"),  # repeats: measured on one period
        ("changeme-changeme", "entropy"),
        ("short-but-r4nd0m", "entropy"),
        ("abc", "fewer than 16"),
        ("tWtkTrW8naNjQu1he SWRp4k9OHzWCwXn", "space"),
        ("tWtkTrW8naNjQu1heSWRp4k9OHzWCwXé", "non-ASCII"),
    ],
)
def test_weak_keys_are_refused_at_start_up(key, reason):
    from pydantic import ValidationError

    from api.core.config import Settings

    with pytest.raises(ValidationError, match=reason) as exc:
        Settings(api_keys=[KEY_A, key])
    message = str(exc.value)
    assert "key 2 of 2" in message and KEY_A not in message and (not key.strip() or key not in message)


def test_random_keys_pass():
    import secrets
    import uuid

    from api.core.config import Settings

    keys = [secrets.token_hex(16) for _ in range(200)] + [secrets.token_urlsafe(32), str(uuid.uuid4())]
    assert len(Settings(api_keys=keys).api_keys) == 202


# --- local mode: Host and Origin ------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost:8000", "LOCALHOST", "[::1]:8000", "127.0.0.1"])
def test_local_mode_takes_a_loopback_host(local, host):
    assert local.get("/healthz", headers={"Host": host}).status_code == 200


@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:8000", "127.0.0.1.evil.example", "localhost.:8000", "localhost:x", "[::1]x"]
)
def test_local_mode_refuses_a_foreign_host(local, host):
    """A DNS-rebinding page reaches 127.0.0.1 under its own name: it may read nothing."""
    for r in (
        local.get("/jobs/abcdefghijklmnopqrstuv", headers={"Host": host}),
        local.get("/", headers={"Host": host}),
        _post(local, {"Host": host}),
    ):
        assert r.status_code == 421 and _kind(r) == "host-not-local", r.text


def test_local_mode_refuses_a_request_without_host(tmp_path):
    import asyncio

    app = stub_app(tmp_path / "blobs", **LOCAL)
    sent = []

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.0",
        "method": "GET",
        "scheme": "http",
        "path": "/healthz",
        "raw_path": b"/healthz",
        "root_path": "",
        "query_string": b"",
        "headers": [],
        "client": LOOPBACK,
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 400


@pytest.mark.parametrize(
    "headers",
    [
        {"Origin": "http://evil.example"},
        {"Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"},
        {"Origin": "null"},  # a sandboxed frame or a file:// page
        {"Origin": "http://localhost:3000"},  # another local server's page: same site, not same origin
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
    ],
)
def test_local_mode_refuses_a_cross_site_post(local, headers):
    r = _post(local, headers)
    assert r.status_code == 403 and _kind(r) == "cross-site", r.text
    assert local.app.state.celery.sent == [] and not stored(local.app.state.store.root, index=True)
    r = local.delete("/jobs/abcdefghijklmnopqrstuv", headers=headers)
    assert r.status_code == 403 and _kind(r) == "cross-site"


@pytest.mark.parametrize(
    "headers",
    [
        {},  # curl: no Origin, no Sec-Fetch-Site
        {"Origin": "http://127.0.0.1:8000", "Sec-Fetch-Site": "same-origin"},  # the form itself
        {"Sec-Fetch-Site": "none"},  # typed by the user
    ],
)
def test_local_mode_takes_its_own_pages_post(local, headers):
    assert _post(local, headers).status_code == 202


def test_a_keyed_service_needs_no_origin_check(keyed):
    """With keys, a cross-site page cannot send X-API-Key without a CORS preflight, which fails."""
    r = _post(keyed, {"X-API-Key": KEY_A, "Origin": "http://evil.example", "Host": "api.example"})
    assert r.status_code == 202, r.text


# --- security headers ----------------------------------------------------------------------------


def _secure(r, path):
    h = r.headers
    assert h["x-content-type-options"] == "nosniff", path
    assert h["referrer-policy"] == "no-referrer", path
    assert h["cache-control"] == "no-store", path
    assert h["x-frame-options"] == "DENY", path
    csp = dict(d.strip().split(" ", 1) for d in h["content-security-policy"].split(";"))
    assert csp["frame-ancestors"] == "'none'" and csp["default-src"] == "'none'", path
    for directive in ("script-src", "style-src"):
        sources = csp[directive].split()
        assert sources[0] == "'self'" and all(s.startswith("'sha256-") for s in sources[1:]), csp[directive]
    assert "unsafe" not in h["content-security-policy"] and "http" not in h["content-security-policy"]


def test_security_headers_on_every_response(keyed, tmp_path):
    a = {"X-API-Key": KEY_A}
    created = _post(keyed, a)
    job = created.json()["id"]
    responses = {
        "/": keyed.get("/"),
        "/healthz": keyed.get("/healthz"),
        "/openapi.json": keyed.get("/openapi.json"),
        "POST /counterfactual (202)": created,
        "/jobs/{id}": keyed.get(f"/jobs/{job}", headers=a),
        "/jobs/{id}/result.png (404, not ready)": keyed.get(f"/jobs/{job}/result.png", headers=a),
        "401": keyed.get(f"/jobs/{job}"),
        "422": keyed.post("/counterfactual", headers=a, data={"target": "mild edema"}),
        "unknown route": keyed.get("/nowhere", headers=a),
    }
    with TestClient(stub_app(tmp_path / "small", max_request_bytes=1000)) as small:
        responses["413"] = _post(small, a)
    with TestClient(stub_app(tmp_path / "local", **LOCAL), base_url="http://127.0.0.1:8000", client=LOOPBACK) as c:
        responses["421"] = c.get("/healthz", headers={"Host": "evil.example"})
    for path, r in responses.items():
        _secure(r, path)
    assert responses["413"].status_code == 413 and responses["421"].status_code == 421


def test_security_headers_on_a_result_file(keyed):
    a = {"X-API-Key": KEY_A}
    job = _post(keyed, a).json()["id"]
    keyed.app.state.store.put(job, "result.png", b"\x89PNG fake")
    r = keyed.get(f"/jobs/{job}/result.png", headers=a)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    _secure(r, "result.png")


def test_an_unexpected_error_is_a_problem_with_the_headers(keyed, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("something internal: /secret/path")

    monkeypatch.setattr(keyed.app.state.store, "get_meta", boom)
    r = keyed.get("/jobs/abcdefghijklmnopqrstuv", headers={"X-API-Key": KEY_A})
    assert r.status_code == 500 and _kind(r) == "internal" and "secret" not in r.text
    _secure(r, "500")


def test_the_csp_allows_exactly_the_forms_own_inline_script_and_style(keyed):
    r = keyed.get("/")
    csp = r.headers["content-security-policy"]
    for tag, directive in (("script", "script-src"), ("style", "style-src")):
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", r.text, flags=re.DOTALL)
        assert blocks, tag
        for block in blocks:
            digest = base64.b64encode(hashlib.sha256(block.encode()).digest()).decode()
            assert f"'sha256-{digest}'" in csp.split(f"{directive} ")[1].split(";")[0]
    assert "<script src=" not in r.text and "cdn" not in r.text.lower()


# --- no redirect from the Host header; no third-party docs ----------------------------------------


def test_no_location_is_built_from_the_host_header(keyed):
    for path in ("/healthz/", "/jobs/abcdefghijklmnopqrstuv/", "/counterfactual/"):
        r = keyed.get(path, headers={"Host": "evil.example", "X-API-Key": KEY_A}, follow_redirects=False)
        assert r.status_code == 404 and "location" not in r.headers, (path, r.status_code, r.headers)
    created = _post(keyed, {"X-API-Key": KEY_A, "Host": "evil.example"})
    assert created.headers["location"] == f"/jobs/{created.json()['id']}"  # relative


def test_docs_are_not_served_but_the_schema_is(keyed):
    a = {"X-API-Key": KEY_A}
    assert keyed.get("/docs", headers=a).status_code == 404
    assert keyed.get("/redoc", headers=a).status_code == 404
    assert keyed.get("/openapi.json").status_code == 200


# --- the new errors in the OpenAPI ---------------------------------------------------------------


def test_every_new_status_is_in_the_openapi_of_the_routes_that_answer_it(keyed):
    paths = keyed.get("/openapi.json").json()["paths"]

    def documented(path, method):
        return {
            int(code): r
            for code, r in paths[path][method]["responses"].items()
            if code.isdigit() and PROBLEM in r.get("content", {})
        }

    post = documented("/counterfactual", "post")
    assert {400, 403, 413, 421, 429, 500, 507} <= set(post)
    for kind in ("rate-limited", "queue-full", "auth-rate-limited"):
        assert f"urn:whatif-cxr:problem:{kind}" in post[429]["description"]
    assert "Retry-After" in post[429]["headers"]
    assert "cross-site" in post[403]["description"] and "not-loopback" in post[403]["description"]
    schema = post[429]["content"][PROBLEM]["schema"]
    assert set(schema["required"]) == {"type", "title", "status", "detail"}
    assert {429, 421, 403} <= set(documented("/jobs/{job_id}", "get"))
    assert "cross-site" in documented("/jobs/{job_id}", "delete")[403]["description"]
    assert {400, 403, 413, 421, 500} <= set(documented("/healthz", "get"))
    assert 429 not in documented("/healthz", "get")  # public: no key, no failed authentication
