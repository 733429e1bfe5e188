"""A single-machine service on the tiny checkpoint (tests/conftest.py): in-memory broker, in-process worker."""

import io
import json
import os
import time
from types import SimpleNamespace

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

# The decoders run in this process for these tests, which patch and count them; the default, child
# processes (api/decode_pool.py), has its own tests (test_decode_isolation.py). An app's settings
# are read when it is made, so this holds for every app the tests make.
os.environ.setdefault("WHATIF_DECODE_ISOLATION", "thread")

# Random-looking keys: the settings refuse weak ones (api/core/keys.py).
KEY_A = "tWtkTrW8naNjQu1heSWRp4k9OHzWCwXn"
KEY_B = "DKUi3nhhDKhYB8DAq0oczGFMv8nU9kqJ"
# The suite creates jobs faster than a person would: no rate limit of its own gets in the way
# (tests/api/test_limits.py tests the limits).
UNLIMITED = {"jobs_per_minute": 1e6, "jobs_per_minute_per_address": 1e6}


def stored(root, index: bool = False) -> list:
    """The files the blob store holds for jobs: each job's own under `root`, and with `index` the
    index's entries that name a job (worker/job_index.py); never the index's folders, its shared
    count or its lock."""
    from worker.job_index import INDEX_DIR, NAMES, QUEUED, UNFINISHED

    out = [p for p in root.iterdir() if p.name != INDEX_DIR]
    for folder in (QUEUED, UNFINISHED, NAMES) if index else ():
        if (root / INDEX_DIR / folder).is_dir():
            out += (root / INDEX_DIR / folder).iterdir()
    return out


@pytest.fixture(scope="session")
def service(tiny_checkpoint, tmp_path_factory):
    from api.core.config import Settings
    from api.main import create_app
    from worker.celery_app import make_celery
    from worker.embedded import start_embedded_worker

    settings = Settings(
        api_keys=[KEY_A, KEY_B],
        broker_url="memory://",
        blob_dir=str(tmp_path_factory.mktemp("blobs")),
        checkpoint=tiny_checkpoint,
        max_upload_bytes=8_000_000,
        max_pixels=5_000_000,
        **UNLIMITED,
    )
    celery = make_celery(settings)
    worker = start_embedded_worker(celery)
    app = create_app(settings, celery)
    with TestClient(app) as client:
        yield client
    worker.stop(in_sighandler=False)


class StubCelery:
    """Stands in for Celery where a test ends at the queue: jobs are recorded, never run. The API
    reads job states from the job records (worker/jobs.py), never from Celery."""

    def __init__(self):
        self.sent = []
        self.messages = []  # what a broker would hold: the task's name and arguments, as JSON

    def send_task(self, name, args, task_id):
        self.sent.append(task_id)
        self.messages.append(json.dumps({"task": name, "args": args, "id": task_id}))


def stub_app(blob_dir, **overrides):
    """The app on a `StubCelery`, keyed with KEY_A and KEY_B unless `overrides` say otherwise."""
    from api.core.config import Settings
    from api.main import create_app

    # memory:// keeps the rate limits in-process: a Redis on 6379 (a CI machine's) must not carry buckets over.
    fields = {"api_keys": [KEY_A, KEY_B], "blob_dir": str(blob_dir), "broker_url": "memory://", **overrides}
    return create_app(Settings(**fields), celery=StubCelery())


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


class FakePipeline:
    """Stands in for `CounterfactualPipeline` in the worker's task: `batch(requests)` answers each
    request with `run(pixels, target, progress=..., **its other fields)` (`fake_result`, say)."""

    def __init__(self, run):
        self.run = run

    def batch(self, requests, **settings):
        return [
            self.run(r.image, r.target, progress=r.progress or (lambda *a: None), region=r.region, seed=r.seed)
            for r in requests
        ]


def fake_result(pixels, target, region_source="automatic"):
    """What `CounterfactualPipeline.__call__` returns, as the worker reads it, for tests that stand
    in for the model: the input unchanged, an 8 x 8 region in the corner, a passed verdict."""
    region = np.zeros(pixels.shape, bool)
    region[:8, :8] = True
    return SimpleNamespace(
        image=pixels,
        region=region,
        to_uint16=lambda: np.zeros(pixels.shape, np.uint16),
        verdict=SimpleNamespace(to_dict=lambda: {"status": "passed", "passed": True, "reason": "", "numbers": {}}),
        input_image=pixels,
        condition=target,
        seed=0,
        seed_optimized=False,
        seed_kept=None,
        candidates=[],
        chosen=0,
        region_source=region_source,
        lp_history=[],
        timings={},
        quality=SimpleNamespace(
            target_probability={}, input_probability={}, identity_similarity=1.0, ood_score=0.0, notes=[]
        ),
    )
