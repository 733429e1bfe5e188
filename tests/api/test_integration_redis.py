"""Upload to result.png through a real redis-server and a real Celery worker process."""

import os
import subprocess
import sys

from fastapi.testclient import TestClient

from .conftest import KEY_A, png_bytes, wait


def test_job_through_redis_and_worker_process(redis_url, tiny_checkpoint, tmp_path):
    """Three jobs queued before the worker starts: it runs them as one batch (WHATIF_BATCH_SIZE=3),
    and drops the messages of the two it took from the queue."""
    import json

    from api.core.config import Settings
    from api.main import create_app

    env = {
        **os.environ,
        "WHATIF_BROKER_URL": f"{redis_url}/0",
        "WHATIF_BLOB_DIR": str(tmp_path / "blobs"),
        "WHATIF_CHECKPOINT": tiny_checkpoint,
        "WHATIF_BATCH_SIZE": "3",
        "OMP_NUM_THREADS": "1",
    }
    settings = Settings(
        api_keys=[KEY_A],
        broker_url=f"{redis_url}/0",
        blob_dir=str(tmp_path / "blobs"),
        checkpoint=tiny_checkpoint,
    )
    worker = None
    try:
        with TestClient(create_app(settings)) as client:
            ids = []
            for target in ("small right pneumothorax", "mild edema", "moderate left pleural effusion"):
                r = client.post(
                    "/counterfactual",
                    headers={"X-API-Key": KEY_A},
                    files={"image": ("x.png", png_bytes(), "image/png")},
                    data={"target": target},
                )
                assert r.status_code == 202, r.text
                ids.append(r.json()["id"])
            worker = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "worker.celery_app",
                    "worker",
                    "--pool=solo",
                    "--concurrency=1",
                    "--loglevel=WARNING",
                    "--without-mingle",
                    "--without-gossip",
                ],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for job in ids:
                body, seen = wait(client, job, KEY_A, timeout=240)
                assert body["status"] == "succeeded", body
            png = client.get(f"/jobs/{ids[0]}/result.png", headers={"X-API-Key": KEY_A})
            assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
            records = [json.loads((tmp_path / "blobs" / f"{job}.json").read_text()) for job in ids]
            assert [r["attempts"] for r in records] == [1, 1, 1]
            started = [r["started_at"] for r in records]
            assert max(started) - min(started) < 1.0  # taken together, not one after another
    finally:
        if worker is not None:
            worker.terminate()
            try:
                worker.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                worker.kill()


def _redis_dump(client) -> str:
    """Every key and value in Redis, as text: what a queued message leaves there."""
    out = []
    for key in client.scan_iter():
        kind = client.type(key).decode()
        value = {
            "string": lambda: client.get(key),
            "list": lambda: client.lrange(key, 0, -1),
            "hash": lambda: client.hgetall(key),
            "set": lambda: client.smembers(key),
            "zset": lambda: client.zrange(key, 0, -1),
        }.get(kind, lambda: b"")()
        out.append(f"{key!r} {kind} {value!r}")
    return "\n".join(out)


def test_a_queued_job_keeps_no_free_text_in_redis(redis_url, tmp_path):
    """The target may name a patient: Redis holds the refined condition, never the text."""
    import base64

    import redis

    from api.core.config import Settings
    from api.main import create_app

    from .test_phi import PLANTED, TARGET

    settings = Settings(api_keys=[KEY_A], broker_url=f"{redis_url}/0", blob_dir=str(tmp_path / "blobs"))
    with TestClient(create_app(settings)) as client:
        r = client.post(
            "/counterfactual",
            headers={"X-API-Key": KEY_A, "Idempotency-Key": PLANTED[0]},
            files={"image": (f"{PLANTED[1]}.png", png_bytes(), "image/png")},
            data={"target": TARGET},
        )
    assert r.status_code == 202, r.text
    dump = _redis_dump(redis.Redis.from_url(f"{redis_url}/0"))
    # Kombu keeps a message's body base64-encoded: look inside it too.
    decoded = []
    for chunk in dump.split('"body": "')[1:]:
        decoded.append(base64.b64decode(chunk.split('"', 1)[0] + "==").decode("latin-1"))
    text = (dump + "\n".join(decoded)).lower()
    assert decoded and "pleural effusion" in "\n".join(decoded)
    assert not [p for p in PLANTED if p.lower() in text], text
