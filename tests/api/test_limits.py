"""Limits before work: the body bounded as it arrives, rate limits, the queue cap, the blob quota,
inputs stored no larger than needed. The app ends at a stub queue: no job runs."""

import asyncio
import io
import json
import tempfile
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from .conftest import KEY_A, KEY_B, UNLIMITED, FakePipeline, fake_result, stored, stub_app

MiB = 2**20
PROBLEM = "application/problem+json"


def _png(size=64, dtype=np.uint8) -> bytes:
    rng = np.random.default_rng(0)
    top = 255 if dtype == np.uint8 else 65535
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, top, (size, size), endpoint=True).astype(dtype)).save(buf, format="PNG")
    return buf.getvalue()


def _post(client, key=KEY_A, data=None, name="x.png", ctype="image/png"):
    headers = {"X-API-Key": key} if key else {}
    return client.post(
        "/counterfactual",
        headers=headers,
        files={"image": (name, data or _png(), ctype)},
        data={"target": "mild edema"},
    )


def _is_problem(r, status, kind):
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    body = r.json()
    assert body["type"] == f"urn:whatif-cxr:problem:{kind}" and body["status"] == status
    assert body["title"] and body["detail"]
    return body


# --- the body, bounded while it arrives ---------------------------------------------------------

BOUNDARY = b"b0undary"
HEAD = (
    b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="target"\r\n\r\nmild edema\r\n'
    b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n'
    b"Content-Type: image/png\r\n\r\n"
)


def _request(app, headers, chunks):
    """One POST /counterfactual straight through the ASGI app, as a server would send it.
    -> (status, headers, body, bytes of body the app took)."""
    consumed, sent = 0, []
    it = iter(chunks)

    async def receive():
        nonlocal consumed
        chunk = next(it, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        consumed += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/counterfactual",
        "raw_path": b"/counterfactual",
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"x-api-key", KEY_A.encode()),
            (b"content-type", b"multipart/form-data; boundary=" + BOUNDARY),
            *headers,
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict((k.decode(), v.decode()) for k, v in start["headers"]), body, consumed


def test_a_streamed_body_past_the_limit_is_refused_while_it_arrives(tmp_path, monkeypatch):
    rolled_over = []

    class Watched(tempfile.SpooledTemporaryFile):
        def rollover(self):  # the multipart parser moving an upload from memory to disk
            rolled_over.append(True)
            super().rollover()

    monkeypatch.setattr("starlette.formparsers.SpooledTemporaryFile", Watched)
    app = stub_app(tmp_path / "blobs", max_request_bytes=MiB, **UNLIMITED)
    chunk = bytes(64 * 1024)  # uvicorn's read size
    offered = 64 * MiB
    # No Content-Length (chunked): only counting what arrives can stop it.
    status, headers, body, consumed = _request(app, [], [HEAD, *[chunk] * (offered // len(chunk))])
    assert status == 413, body
    assert headers["content-type"] == PROBLEM and json.loads(body)["type"].endswith(":body-too-large")
    assert headers["connection"] == "close"  # the rest is never read
    assert consumed <= MiB + len(chunk), f"{consumed / MiB:.1f} MiB read of a 1 MiB limit"
    assert not rolled_over, "the upload was spooled to disk"
    assert app.state.celery.sent == [] and not stored(tmp_path / "blobs", index=True)


def test_a_content_length_over_the_limit_is_refused_before_a_byte_is_read(tmp_path):
    app = stub_app(tmp_path / "blobs", max_request_bytes=MiB)
    status, headers, body, consumed = _request(app, [(b"content-length", b"300000000")], [HEAD, bytes(MiB)])
    assert status == 413 and consumed == 0, (status, consumed)
    assert "1,048,576 bytes" in json.loads(body)["detail"]


def test_a_body_within_the_limit_still_reaches_the_route(tmp_path):
    app = stub_app(tmp_path / "blobs", max_request_bytes=MiB, **UNLIMITED)
    tail = b"\r\n--" + BOUNDARY + b"--\r\n"
    status, _, body, _ = _request(app, [], [HEAD, _png(), tail])
    assert status == 202, body


def test_the_default_request_limit_holds_an_image_and_a_mask():
    from api.core.config import Settings

    s = Settings(api_keys=[KEY_A], max_upload_bytes=8 * MiB)
    assert s.max_request_bytes == 2 * 8 * MiB + MiB


# --- rate limits ---------------------------------------------------------------------------------


def test_failed_authentications_are_limited_per_client_address(tmp_path):
    app = stub_app(tmp_path / "blobs", auth_failures_per_minute=5)
    job = "/jobs/abcdefghijklmnopqrstuv"
    with TestClient(app, client=("198.51.100.7", 4000)) as attacker:
        codes = [attacker.get(job, headers={"X-API-Key": f"wrong-key-{i}"}).status_code for i in range(5)]
        assert codes == [401] * 5
        refused = attacker.get(job, headers={"X-API-Key": "wrong-key-5"})
        body = _is_problem(refused, 429, "auth-rate-limited")
        assert 1 <= int(refused.headers["retry-after"]) <= 12, refused.headers  # 5 a minute: one each 12 s
        assert "too many" in body["detail"]
        # A right key from that address is refused too: the limit must slow a search for keys.
        assert attacker.get(job, headers={"X-API-Key": KEY_A}).status_code == 429
        assert attacker.post("/counterfactual", headers={"X-API-Key": KEY_A}).status_code == 429
    with TestClient(app, client=("198.51.100.8", 4000)) as other:  # another address is not affected
        assert other.get(job, headers={"X-API-Key": KEY_A}).status_code == 404
    # Public routes need no key and are not limited.
    with TestClient(app, client=("198.51.100.7", 4000)) as attacker:
        assert attacker.get("/healthz").status_code == 200


def test_job_creation_is_limited_per_key_and_per_client_address(tmp_path):
    app = stub_app(tmp_path / "blobs", jobs_per_minute=3, jobs_per_minute_per_address=5)
    with TestClient(app, client=("198.51.100.7", 4000)) as client:
        assert [_post(client).status_code for _ in range(3)] == [202] * 3
        refused = _post(client)
        _is_problem(refused, 429, "rate-limited")
        assert 1 <= int(refused.headers["retry-after"]) <= 20  # 3 a minute: one each 20 s
        # Another key from the same address: its own 3, but the address has 2 left.
        assert [_post(client, KEY_B).status_code for _ in range(3)] == [202, 202, 429]
    with TestClient(app, client=("198.51.100.9", 4000)) as elsewhere:
        assert _post(elsewhere, KEY_B).status_code == 202  # the key had one left; the new address five
    assert len(app.state.celery.sent) == 6


def test_token_buckets_refill_with_time():
    from api.rate_limit import TokenBuckets

    now = [0.0]
    buckets = TokenBuckets(per_minute=6, clock=lambda: now[0])
    for _ in range(6):
        assert buckets.wait_s("k") == 0
        buckets.take("k")
    assert buckets.wait_s("k") == pytest.approx(10.0)
    now[0] = 10.0
    assert buckets.wait_s("k") == 0 and buckets.wait_s("other") == 0


def test_token_buckets_forget_the_least_recent_keys_past_their_bound():
    from api.rate_limit import TokenBuckets

    buckets = TokenBuckets(per_minute=1, max_keys=100)
    for i in range(1000):
        buckets.take(f"203.0.113.{i}")
    assert len(buckets._buckets) == 100 and buckets.wait_s("203.0.113.999") > 0


# --- the queue cap and the blob quota ------------------------------------------------------------


def test_unfinished_jobs_are_capped(tmp_path):
    app = stub_app(tmp_path / "blobs", max_unfinished_jobs=2, **UNLIMITED)
    with TestClient(app) as client:
        jobs = [_post(client).json()["id"] for _ in range(2)]
        full = _post(client, KEY_B)
        body = _is_problem(full, 429, "queue-full")
        assert "2 jobs are queued or running" in body["detail"] and int(full.headers["retry-after"]) > 0
        # A finished job (the worker marks failures finished too) no longer counts.
        app.state.store.update_meta(jobs[0], finished_at=time.time())
        assert _post(client).status_code == 202
        assert _post(client).status_code == 429
        assert client.delete(f"/jobs/{jobs[1]}", headers={"X-API-Key": KEY_A}).status_code == 204
        assert _post(client).status_code == 202


def test_the_blob_store_quota(tmp_path):
    app = stub_app(tmp_path / "blobs", blob_quota_bytes=2000, **UNLIMITED)
    with TestClient(app) as client:
        first = _post(client)
        assert first.status_code == 202  # an empty store is under any quota
        assert app.state.store.usage().bytes >= 2000  # the 64 x 64 noise PNG and its metadata
        full = _post(client)
        body = _is_problem(full, 507, "storage-full")
        assert "quota" in body["detail"] and "expire" in body["detail"]
        assert client.delete(f"/jobs/{first.json()['id']}", headers={"X-API-Key": KEY_A}).status_code == 204
        assert _post(client).status_code == 202


def test_a_failed_job_is_marked_finished(tmp_path):
    from worker.blobs import BlobNotFound, BlobStore
    from worker.settings import WorkerSettings
    from worker.tasks import counterfactual

    s = WorkerSettings(blob_dir=str(tmp_path))
    store = BlobStore(s.blob_dir, s.blob_ttl_s)
    job = store.new_id()
    store.put_meta(job, {"owner": "t", "notes": []})  # no input.png: the job fails
    assert store.usage().unfinished == 1
    with pytest.raises(BlobNotFound):
        counterfactual(None, s, job, {"target": "mild edema", "seed": 0, "optimize_seed": False})
    assert "finished_at" in store.get_meta(job) and store.usage().unfinished == 0


# --- inputs stored no larger than needed ---------------------------------------------------------


def _stored(client, response) -> np.ndarray:
    assert response.status_code == 202, response.text
    return np.asarray(Image.open(io.BytesIO(client.app.state.store.get(response.json()["id"], "input.png"))))


def test_8_bit_sources_are_stored_in_8_bits_and_16_bit_in_16(tmp_path):
    app = stub_app(tmp_path / "blobs", **UNLIMITED)
    eight = _png(256)
    with TestClient(app) as client:
        stored = _stored(client, _post(client, data=eight))
        assert stored.dtype == np.uint8
        assert np.array_equal(stored, np.asarray(Image.open(io.BytesIO(eight))))  # exactly the source
        assert len(client.app.state.store.get(client.app.state.celery.sent[-1], "input.png")) < 1.2 * len(eight)
        jpeg = io.BytesIO()
        Image.fromarray(np.asarray(Image.open(io.BytesIO(eight)))).convert("RGB").save(jpeg, format="JPEG")
        assert _stored(client, _post(client, data=jpeg.getvalue(), name="x.jpg", ctype="image/jpeg")).dtype == np.uint8
        sixteen = _png(256, np.uint16)
        stored = _stored(client, _post(client, data=sixteen))
        assert stored.dtype == np.uint16 and np.array_equal(stored, np.asarray(Image.open(io.BytesIO(sixteen))))


def test_the_worker_reads_an_8_bit_input_as_its_exact_16_bit_value(tmp_path, monkeypatch):
    """Outside the region the result is the input: v * 257 for an 8-bit v."""
    from types import SimpleNamespace

    import worker.tasks as tasks
    from worker.blobs import BlobStore
    from worker.settings import WorkerSettings

    s = WorkerSettings(blob_dir=str(tmp_path))
    store = BlobStore(s.blob_dir, s.blob_ttl_s)
    job = store.new_id()
    store.put(job, "input.png", _png(64))
    store.put_meta(job, {"owner": "t", "notes": []})
    seen = {}

    def fake_pipeline(pixels, target, **kw):
        seen["pixels"] = pixels
        return fake_result(pixels, target, "user")

    monkeypatch.setattr(tasks, "pipeline", lambda checkpoint, *_: FakePipeline(fake_pipeline))
    task = SimpleNamespace(update_state=lambda **kw: None)
    tasks.counterfactual(task, s, job, {"target": "mild edema", "seed": 0, "optimize_seed": False})
    source = np.asarray(Image.open(io.BytesIO(_png(64))))
    assert np.allclose(seen["pixels"], source / 255.0, atol=1e-7)
    result = np.asarray(Image.open(io.BytesIO(store.get(job, "result.png"))))
    assert result.dtype == np.uint16
    assert np.array_equal(result[8:, 8:], source[8:, 8:].astype(np.uint16) * 257)
