"""A Redis outage: POST /counterfactual answers 503 with Retry-After within seconds and stores
nothing; job polls and DELETE need no broker and keep answering. Compose and k8s run Redis with
AOF, the configuration in which a Redis restart loses no job (docs/service.md)."""

import os
import signal
import time
from pathlib import Path

import yaml
from fastapi.testclient import TestClient

from tests.helpers import free_port, start_redis

from .conftest import KEY_A, UNLIMITED, png_bytes, stored

H = {"X-API-Key": KEY_A}
ROOT = Path(__file__).resolve().parents[2]
# The broker's connect and read timeout: 1 s here, the default (3 s) or another value from the
# environment to measure it (WHATIF_BROKER_TIMEOUT_S=3 pytest -s tests/api/test_broker_outage.py).
TIMEOUT_S = float(os.environ.get("WHATIF_BROKER_TIMEOUT_S", 1))
# The longest a request may take while the broker is down: a few timeouts.
BOUND_S = 4 * TIMEOUT_S + 2


def _app(broker_url, blob_dir):
    from api.core.config import Settings
    from api.main import create_app

    settings = Settings(
        api_keys=[KEY_A], broker_url=broker_url, blob_dir=str(blob_dir), broker_timeout_s=TIMEOUT_S, **UNLIMITED
    )
    return create_app(settings)


def _post(client):
    started = time.monotonic()
    r = client.post(
        "/counterfactual",
        headers=H,
        files={"image": ("x.png", png_bytes(), "image/png")},
        data={"target": "mild edema"},
    )
    return r, time.monotonic() - started


def _refused(r, took, blob_dir):
    assert r.status_code == 503, r.text
    assert r.json()["type"] == "urn:whatif-cxr:problem:broker-unavailable" and int(r.headers["retry-after"]) > 0
    print(f"503 in {took:.2f} s")
    assert took < BOUND_S, f"the 503 took {took:.1f} s"
    assert not stored(Path(blob_dir), index=True), "a refused job left files behind"


def test_broker_down_post_is_503_with_retry_after_and_stores_nothing(tmp_path):
    port = free_port()  # nothing listens there: connection refused
    blobs = tmp_path / "blobs"
    with TestClient(_app(f"redis://127.0.0.1:{port}/0", blobs)) as client:
        r, took = _post(client)
        _refused(r, took, blobs)
        # Polls and DELETE read and write the blob store only: they answer during the outage.
        store = client.app.state.store
        job = store.new_id()
        store.put(job, "input.png", b"x")
        store.put_meta(job, {"owner": _owner(), "condition": "c", "created_at": 1.0, "state": "queued"})
        started = time.monotonic()
        assert client.get(f"/jobs/{job}", headers=H).json()["status"] == "queued"
        assert client.delete(f"/jobs/{job}", headers=H).status_code == 204
        assert time.monotonic() - started < 1
        assert [p.name for p in stored(blobs, index=True)] == [f"{job}.deleted"]  # the tombstone (worker/blobs.py)


def _owner():
    import hashlib

    return hashlib.sha256(KEY_A.encode()).hexdigest()


def test_a_hung_broker_is_503_in_bounded_time(tmp_path):
    """Redis stopped (SIGSTOP): connections open but nothing answers. Without socket timeouts the
    publish waited forever."""
    port = free_port()
    proc = start_redis(port, tmp_path)
    blobs = tmp_path / "blobs"
    try:
        with TestClient(_app(f"redis://127.0.0.1:{port}/0", blobs)) as client:
            r, took = _post(client)
            assert r.status_code == 202, r.text  # up: accepted
            client.app.state.store.discard(r.json()["id"])  # no tombstone: the check below sees an empty store
            os.kill(proc.pid, signal.SIGSTOP)
            try:
                r, took = _post(client)
                _refused(r, took, blobs)
            finally:
                os.kill(proc.pid, signal.SIGCONT)
    finally:
        proc.terminate()
        proc.wait(10)


def _appendonly(args) -> str:
    return args[args.index("--appendonly") + 1]


def test_compose_and_k8s_run_redis_with_aof():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert _appendonly(compose["services"]["redis"]["command"]) == "yes"
    objects = list(yaml.safe_load_all((ROOT / "deploy/k8s/redis.yaml").read_text()))
    redis = next(o for o in objects if o["kind"] == "StatefulSet")
    assert _appendonly(redis["spec"]["template"]["spec"]["containers"][0]["args"]) == "yes"
    # The append-only file must be on the persistent volume, not in the container.
    mounts = redis["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    assert any(m["mountPath"] == "/data" for m in mounts) and redis["spec"]["volumeClaimTemplates"]
