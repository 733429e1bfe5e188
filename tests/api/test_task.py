"""The worker task on its own: bounded redelivery and the in-task time limit fail with a clear message."""

import io
import itertools

import numpy as np
import pytest
from PIL import Image

from worker.blobs import BlobStore
from worker.settings import WorkerSettings
from worker.tasks import JobError, counterfactual


class _Task:
    def update_state(self, **kw):
        self.last = kw


def _job(store: BlobStore, attempts: int = 0) -> str:
    job = store.new_id()
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((64, 64)) * 65535).astype(np.uint16)).save(buf, format="PNG")
    store.put(job, "input.png", buf.getvalue())
    store.put_meta(job, {"owner": "t", "attempts": attempts, "notes": []})
    return job


PARAMS = {"target": "mild edema", "seed": 0, "optimize_seed": True, "steps": 2, "guidance": None}


def test_redelivered_too_often_fails(tmp_path, tiny_checkpoint):
    s = WorkerSettings(blob_dir=str(tmp_path), checkpoint=tiny_checkpoint, max_deliveries=2)
    store = BlobStore(s.blob_dir, s.blob_ttl_s)
    with pytest.raises(JobError, match="started 2 times without finishing"):
        counterfactual(_Task(), s, _job(store, attempts=2), PARAMS)


def test_time_limit_is_enforced_inside_the_task(tmp_path, tiny_checkpoint, monkeypatch):
    s = WorkerSettings(blob_dir=str(tmp_path), checkpoint=tiny_checkpoint, job_time_limit_s=5)
    store = BlobStore(s.blob_dir, s.blob_ttl_s)
    clock = itertools.count(0, 4)  # each look at the clock: 4 s later
    monkeypatch.setattr("worker.tasks.time.monotonic", lambda: next(clock))
    with pytest.raises(JobError, match="longer than 5 s"):
        counterfactual(_Task(), s, _job(store), PARAMS)


def test_successful_task_writes_marked_results(tmp_path, tiny_checkpoint):
    s = WorkerSettings(blob_dir=str(tmp_path), checkpoint=tiny_checkpoint)
    store = BlobStore(s.blob_dir, s.blob_ttl_s)
    job = _job(store)
    task = _Task()
    out = counterfactual(task, s, job, PARAMS)
    assert out["condition"] == "mild edema" and task.last["state"] == "PROGRESS"
    assert b"SYNTHETIC" in store.get(job, "result.png")
    assert store.get_meta(job)["finished_at"] >= store.get_meta(job)["started_at"]
