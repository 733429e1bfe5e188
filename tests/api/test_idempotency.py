"""Idempotency-Key on POST /counterfactual, and a queued job's place in the queue."""

import time

from fastapi.testclient import TestClient

from .conftest import KEY_A, KEY_B, UNLIMITED, png_bytes, stub_app

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
    return sorted(p.name for p in root.iterdir() if not p.name.startswith(".tmp-"))


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
        for path in (tmp_path / "blobs").iterdir():
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
