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
    """The bound Celery task: unused, progress goes to the job record."""


def _job(store: BlobStore, attempts: int = 0, shape=(64, 64)) -> str:
    job = store.new_id()
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random(shape) * 65535).astype(np.uint16)).save(buf, format="PNG")
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
    assert out["condition"] == "mild edema"
    assert b"SYNTHETIC" in store.get(job, "result.png")
    record = store.get_meta(job)  # the job's state lives in its record, not in Celery (worker/jobs.py)
    assert record["state"] == "succeeded" and record["result"] == out and record["attempts"] == 1
    assert record["heartbeat_at"] >= record["finished_at"] >= record["started_at"]


def _png(store, job, name):
    return np.asarray(Image.open(io.BytesIO(store.get(job, name))))


def test_results_at_the_input_size_and_bit_identical_outside_the_region(tmp_path, tiny_checkpoint):
    import pydicom

    from model.verdict import VERDICTS

    s = WorkerSettings(blob_dir=str(tmp_path), checkpoint=tiny_checkpoint)
    store = BlobStore(s.blob_dir, s.blob_ttl_s)
    job = _job(store, shape=(150, 200))  # non-square, and not the model's grid
    out = counterfactual(_Task(), s, job, {**PARAMS, "target": "moderate left pleural effusion", "candidates": 2})
    assert (out["width"], out["height"]) == (200, 150)
    assert out["verdict"]["status"] in VERDICTS and out["verdict"]["reason"]
    assert len(out["candidates"]) == 2 and all(c["verdict"]["status"] in VERDICTS for c in out["candidates"])
    assert out["region_source"] == "automatic" and 0 <= out["chosen"] < 2
    given, result, region = (
        _png(store, job, "input.png"),
        _png(store, job, "result.png"),
        _png(store, job, "region.png"),
    )
    assert result.dtype == np.uint16 and result.shape == given.shape == region.shape == (150, 200)
    assert set(np.unique(region)) <= {0, 255} and out["region_pixels"] == int((region == 255).sum())
    assert np.array_equal(result[region == 0], given[region == 0])
    assert _png(store, job, "diff.png").shape == (150, 200, 3)
    info = Image.open(io.BytesIO(store.get(job, "result.png"))).info
    assert "SYNTHETIC" in info["Comment"] and info["whatif:verdict"] == out["verdict"]["status"]
    dcm = pydicom.dcmread(io.BytesIO(store.get(job, "result.dcm")))
    assert (dcm.Rows, dcm.Columns, dcm.BitsAllocated) == (150, 200, 16)
    assert np.array_equal(dcm.pixel_array, result)
    assert "SYNTHETIC" in dcm.ImageComments and out["verdict"]["status"] in dcm.ImageComments
    assert out["verdict"]["reason"] in dcm.ImageComments and out["verdict"]["status"] in dcm.DerivationDescription


def test_a_user_mask_confines_the_change(tmp_path, tiny_checkpoint):
    s = WorkerSettings(blob_dir=str(tmp_path), checkpoint=tiny_checkpoint)
    store = BlobStore(s.blob_dir, s.blob_ttl_s)
    job = _job(store, shape=(150, 200))
    mask = np.zeros((150, 200), np.uint8)
    mask[30:120, 110:190] = 255  # the patient's left: the viewer's right half
    buf = io.BytesIO()
    Image.fromarray(mask).save(buf, format="PNG")
    store.put(job, "mask.png", buf.getvalue())
    out = counterfactual(_Task(), s, job, {**PARAMS, "target": "moderate left pleural effusion", "mask": True})
    assert out["region_source"] == "user"
    region, given, result = (
        _png(store, job, "region.png"),
        _png(store, job, "input.png"),
        _png(store, job, "result.png"),
    )
    assert not region[mask == 0].any()  # never outside the user's region
    assert np.array_equal(result[mask == 0], given[mask == 0])
