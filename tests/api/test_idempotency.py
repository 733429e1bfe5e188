"""Idempotency-Key on POST /counterfactual, and a queued job's place in the queue."""

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from fastapi.testclient import TestClient

from api import idempotency
from worker.blobs import ORPHAN_GRACE_S

from .conftest import KEY_A, KEY_B, UNLIMITED, png_bytes, stored, stub_app

H = {"X-API-Key": KEY_A}


def _post(client, key=None, target="small left pleural effusion", headers=H, seed="0", image=None):
    extra = {"Idempotency-Key": key} if key is not None else {}
    return client.post(
        "/counterfactual",
        headers={**headers, **extra},
        files={"image": ("x.png", image or png_bytes(), "image/png")},
        data={"target": target, "seed": seed},
    )


def _files(root):
    return sorted(p.name for p in stored(root) if not p.name.startswith(".tmp-"))


def test_the_same_key_and_request_is_the_same_job_and_nothing_new_is_stored(tmp_path):
    app = stub_app(tmp_path / "blobs", **UNLIMITED)
    with TestClient(app) as client:
        first = _post(client, key="retry-1")
        assert first.status_code == 202, first.text
        files = _files(tmp_path / "blobs")
        # Another wording refined alike is the same request.
        again = _post(client, key="retry-1", target="Small LEFT pleural effusion, please")
        assert again.status_code == 202, again.text
        assert again.json()["id"] == first.json()["id"] and again.headers["location"] == first.headers["location"]
        assert again.headers["idempotent-replayed"] == "true" and "idempotent-replayed" not in first.headers
        assert _files(tmp_path / "blobs") == files
        assert app.state.celery.sent == [first.json()["id"]]  # queued once
        # The key is stored hashed: neither it nor the owner's key appears in a file name or a file.
        for path in stored(tmp_path / "blobs", index=True):
            assert b"retry-1" not in path.read_bytes() and "retry-1" not in path.name
        # Without a key, or with another, a new job.
        assert _post(client).json()["id"] != first.json()["id"]
        assert _post(client, key="retry-2").json()["id"] != first.json()["id"]


def test_the_same_key_with_another_request_is_refused_with_the_reason(tmp_path):
    with TestClient(stub_app(tmp_path / "blobs", **UNLIMITED)) as client:
        assert _post(client, key="k").status_code == 202
        for changed in (dict(seed="7"), dict(target="mild cardiomegaly"), dict(image=png_bytes(size=128))):
            r = _post(client, key="k", **changed)
            assert r.status_code == 422, (changed, r.text)
            body = r.json()
            assert body["type"].endswith("idempotency-key-reused") and "different request" in body["detail"]


def test_a_key_belongs_to_its_caller_and_expires_with_its_job(tmp_path):
    app = stub_app(tmp_path / "blobs", **UNLIMITED)
    with TestClient(app) as client:
        mine = _post(client, key="shared").json()["id"]
        theirs = _post(client, key="shared", headers={"X-API-Key": KEY_B})
        assert theirs.status_code == 202 and theirs.json()["id"] != mine  # no other caller's job, no 422
        assert client.delete(f"/jobs/{mine}", headers=H).status_code == 204
        after = _post(client, key="shared")
        assert after.status_code == 202 and after.json()["id"] != mine
        # Expired: the job's files go, the key's with them.
        store = app.state.store
        store.update_meta(after.json()["id"], expires_at=time.time() - 1)
        store.purge_expired()
        left = [p.name for p in (tmp_path / "blobs").iterdir() if p.name.startswith(after.json()["id"])]
        assert left == [f"{after.json()['id']}.deleted"]  # the tombstone only (worker/blobs.py)
        assert _post(client, key="shared").json()["id"] != after.json()["id"]


def _at_once(apps, n, **post):
    """`n` POSTs with one Idempotency-Key started together, spread over `apps` (API replicas sharing
    a blob store). A TestClient outside `with` runs each request on an event loop of its own, so
    the requests run truly in parallel, as on separate processes."""
    clients = [TestClient(app) for app in apps]
    start = threading.Barrier(n)

    def one(i):
        start.wait()
        return _post(clients[i % len(clients)], **post)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def test_simultaneous_requests_with_one_key_make_one_job_across_replicas(tmp_path):
    apps = [stub_app(tmp_path / "blobs", **UNLIMITED) for _ in range(2)]
    answers = _at_once(apps, 12, key="at-once")
    assert [r.status_code for r in answers] == [202] * 12, [r.text for r in answers if r.status_code != 202]
    assert len({r.json()["id"] for r in answers}) == 1
    assert sum(r.headers.get("idempotent-replayed") == "true" for r in answers) == 11
    assert [len(app.state.celery.sent) for app in apps] in ([1, 0], [0, 1])  # queued once, by one replica
    records = [p for p in (tmp_path / "blobs").iterdir() if p.name.endswith(".json")]
    assert len(records) == 1
    assert not list((tmp_path / "blobs").glob("*.claim"))  # released


def test_a_request_that_fails_releases_its_claim_and_the_next_makes_the_job(tmp_path):
    app = stub_app(tmp_path / "blobs", **UNLIMITED)
    queue = app.state.celery
    sent = queue.send_task

    def down(*a, **kw):
        raise OSError("connection refused")

    queue.send_task = down
    with TestClient(app) as client:
        assert _post(client, key="k").status_code == 503  # the broker could not take it
        assert not list((tmp_path / "blobs").glob("*.claim"))
        queue.send_task = sent
        again = _post(client, key="k")
        assert again.status_code == 202 and "idempotent-replayed" not in again.headers and len(queue.sent) == 1


def test_a_request_whose_key_is_held_too_long_is_409_with_retry_after(tmp_path, monkeypatch):
    monkeypatch.setattr(idempotency, "WAIT_S", 0.3)
    app = stub_app(tmp_path / "blobs", **UNLIMITED)
    with TestClient(app) as client:
        key_blob = idempotency.blob_name(_owner(), "held")
        held = idempotency.Claim(tmp_path / "blobs", key_blob)
        assert held.take()  # another replica is making the job
        r = _post(client, key="held")
        assert r.status_code == 409 and r.headers["retry-after"] == str(idempotency.RETRY_AFTER_S), r.text
        assert r.json()["type"].endswith("idempotency-key-in-flight") and app.state.celery.sent == []
        # A claim left by a process that died is taken over once stale.
        old = time.time() - idempotency.STALE_S - 1
        os.utime(held.path, (old, old))
        assert _post(client, key="held").status_code == 202 and len(app.state.celery.sent) == 1
        held.release()  # the dead holder coming back: nothing of its left to remove, no error
    assert idempotency.STALE_S < ORPHAN_GRACE_S  # taken over before the expiry's orphan sweep would remove it
    spec = app.openapi()["paths"]["/counterfactual"]["post"]["responses"]["409"]
    assert "idempotency-key-in-flight" in spec["description"] and "Retry-After" in spec["headers"]


def _owner():
    import hashlib

    return hashlib.sha256(KEY_A.encode()).hexdigest()


def test_a_malformed_key_is_a_422_problem(tmp_path):
    with TestClient(stub_app(tmp_path / "blobs", **UNLIMITED)) as client:
        r = _post(client, key="x" * 300)
        assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json", r.text
        assert "Idempotency-Key" in r.json()["detail"]


def test_a_queued_job_says_how_many_jobs_are_ahead_of_it(tmp_path):
    app = stub_app(tmp_path / "blobs", **UNLIMITED)
    with TestClient(app) as client:
        ids = [_post(client, headers=h).json()["id"] for h in (H, {"X-API-Key": KEY_B}, H, H)]
        positions = [client.get(f"/jobs/{i}", headers=H).json().get("queue_position") for i in ids]
        assert positions == [0, None, 2, 3]  # KEY_B's job is not KEY_A's to see, but it is ahead
        assert client.get(f"/jobs/{ids[1]}", headers={"X-API-Key": KEY_B}).json()["queue_position"] == 1
        store = app.state.store
        store.update_meta(ids[0], state="running", started_at=time.time(), heartbeat_at=time.time())
        client.delete(f"/jobs/{ids[2]}", headers=H)
        running = client.get(f"/jobs/{ids[0]}", headers=H).json()
        assert running["status"] == "running" and running["queue_position"] is None
        assert client.get(f"/jobs/{ids[3]}", headers=H).json()["queue_position"] == 1
    schema = app.openapi()["components"]["schemas"]["JobStatus"]["properties"]["queue_position"]
    assert "still queued" in schema["description"]
