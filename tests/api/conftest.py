"""A single-machine service on the tiny checkpoint (tests/conftest.py): in-memory broker, in-process worker."""

import io
import time

import pytest
from fastapi.testclient import TestClient
from PIL import Image

KEY_A = "a" * 32
KEY_B = "b" * 32


@pytest.fixture(scope="session")
def service(tiny_checkpoint, tmp_path_factory):
    from api.core.config import Settings
    from api.main import create_app
    from worker.celery_app import make_celery
    from worker.embedded import start_embedded_worker

    settings = Settings(
        api_keys=[KEY_A, KEY_B],
        broker_url="memory://",
        result_backend="cache+memory://",
        blob_dir=str(tmp_path_factory.mktemp("blobs")),
        checkpoint=tiny_checkpoint,
        max_upload_bytes=8_000_000,
        max_pixels=5_000_000,
    )
    celery = make_celery(settings)
    worker = start_embedded_worker(celery)
    app = create_app(settings, celery)
    with TestClient(app) as client:
        yield client
    worker.stop(in_sighandler=False)


def png_bytes(size=96, mode="L", bits=8):
    from training.phantom.renderer import render

    img = Image.fromarray(render(4, [], 0, size).image)
    if mode == "RGB":
        img = img.convert("RGB")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def wait(client, job_id, key, timeout=120):
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        body = client.get(f"/jobs/{job_id}", headers={"X-API-Key": key}).json()
        seen.append(body["status"])
        if body["status"] in ("succeeded", "failed"):
            return body, seen
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish: {seen[-5:]}")
