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


# --- several jobs in one forward pass (WHATIF_BATCH_SIZE, issue 28 point 3) -------------------------

FAST = {"seed": 0, "optimize_seed": False, "steps": 2, "guidance": None, "start": None, "detail": None}


def _queued(store: BlobStore, target: str, at: float, **params) -> str:
    """A job as the API leaves it: input, record queued with its message's params (`job_params`)."""
    job = _job(store)
    p = {**FAST, "target": target, "candidates": 1, "mask": False, **params}  # a free-text target: refined here
    store.put_meta(job, {"owner": "t", "notes": [], "created_at": at, "state": "queued", "delivery": 1, "params": p})
    return job


def test_a_worker_takes_queued_jobs_into_its_batch(tmp_path, tiny_checkpoint):
    from celery.exceptions import Ignore

    s = WorkerSettings(blob_dir=str(tmp_path), checkpoint=tiny_checkpoint, batch_size=3)
    store = BlobStore(s.blob_dir, s.blob_ttl_s)
    first = _queued(store, "mild edema", 1.0)
    other_steps = _queued(store, "mild edema", 2.0, steps=3)  # another sampling setting: not batched with it
    second = _queued(store, "moderate left pleural effusion", 3.0)
    too_wide = _queued(store, "mild edema", 4.0, candidates=2)  # 1 + 1 rows taken: no room for 2 more
    third = _queued(store, "severe cardiomegaly", 5.0)
    own = store.get_meta(first)["params"]
    out = counterfactual(_Task(), s, first, {**own, "delivery": 1})
    assert out["condition"] == "mild edema"
    for job, condition in ((second, "moderate left pleural effusion"), (third, "severe cardiomegaly")):
        record = store.get_meta(job)
        assert record["state"] == "succeeded" and record["attempts"] == 1
        assert record["result"]["condition"] == condition and b"SYNTHETIC" in store.get(job, "result.png")
    for job in (other_steps, too_wide):
        assert store.get_meta(job)["state"] == "queued" and "attempts" not in store.get_meta(job)
    assert store.index.queued(0.0) == [other_steps, too_wide]
    # The message of a job that ran in another's batch is dropped when it arrives.
    with pytest.raises(Ignore):
        counterfactual(_Task(), s, second, {**store.get_meta(second)["params"], "delivery": 1})
    assert store.get_meta(second)["attempts"] == 1


def test_a_job_another_worker_is_taking_is_passed_over(tmp_path, tiny_checkpoint):
    s = WorkerSettings(blob_dir=str(tmp_path), checkpoint=tiny_checkpoint, batch_size=4)
    store = BlobStore(s.blob_dir, s.blob_ttl_s)
    first, held = _queued(store, "mild edema", 1.0), _queued(store, "mild edema", 2.0)
    with store.locked(held):  # another worker, between its read of the record and its write
        counterfactual(_Task(), s, first, {**store.get_meta(first)["params"], "delivery": 1})
    assert store.get_meta(first)["state"] == "succeeded"
    assert store.get_meta(held)["state"] == "queued"


def test_each_job_of_a_batch_ends_on_its_own(tmp_path, tiny_checkpoint, monkeypatch):
    """A job whose input is unusable fails with its reason, a job deleted while the batch runs leaves
    nothing, and the others succeed."""
    import worker.tasks

    s = WorkerSettings(blob_dir=str(tmp_path), checkpoint=tiny_checkpoint, batch_size=4)
    store = BlobStore(s.blob_dir, s.blob_ttl_s)
    first, gone, fine = (_queued(store, "mild edema", float(t)) for t in range(3))
    bad = _queued(store, "mild edema", 3.0, mask=True)  # its region (mask.png) is missing
    take = worker.tasks._take_queued

    def take_then_delete(*args):
        taken = take(*args)
        store.delete(gone)  # as DELETE /jobs/{id} does, once the job is running here
        return taken

    monkeypatch.setattr(worker.tasks, "_take_queued", take_then_delete)
    counterfactual(_Task(), s, first, {**store.get_meta(first)["params"], "delivery": 1})
    assert store.get_meta(first)["state"] == store.get_meta(fine)["state"] == "succeeded"
    failed = store.get_meta(bad)
    assert failed["state"] == "failed" and "mask.png" in failed["error"]
    assert sorted(p.name for p in tmp_path.glob(f"{gone}.*")) == [f"{gone}.deleted"]


def test_a_job_in_a_batch_gets_what_it_gets_alone(tmp_path, tiny_checkpoint):
    """The same input, request and seed, alone and second in a batch of three: the same result up to
    float32 rounding (the pipeline's own test, tests/model/test_batch.py, holds it to 1e-9 in float64)."""
    out = {}
    for size in (1, 3):
        s = WorkerSettings(blob_dir=str(tmp_path / str(size)), checkpoint=tiny_checkpoint, batch_size=size)
        store = BlobStore(s.blob_dir, s.blob_ttl_s)
        if size == 1:
            job = first = _queued(store, "moderate left pleural effusion", 1.0, seed=7)
        else:
            first = _queued(store, "mild edema", 1.0)
            job = _queued(store, "moderate left pleural effusion", 2.0, seed=7)
            _queued(store, "severe cardiomegaly", 3.0, seed=3)
        counterfactual(_Task(), s, first, {**store.get_meta(first)["params"], "delivery": 1})
        record = store.get_meta(job)
        assert record["state"] == "succeeded"
        out[size] = (record["result"], _png(store, job, "result.png").astype(float), _png(store, job, "region.png"))
    (alone, image_alone, region_alone), (batched, image_batched, region_batched) = out[1], out[3]
    assert batched["seed"] == alone["seed"] == 7 and batched["verdict"]["status"] == alone["verdict"]["status"]
    assert (region_alone != region_batched).mean() <= 0.001
    assert np.abs(image_alone - image_batched).mean() <= 2.0  # 16-bit levels: the rounding of a larger batch


def test_a_message_for_no_job_is_dropped(tmp_path):
    """A message naming an id no job has, or one no job can have, is acknowledged and runs nothing."""
    from celery.exceptions import Ignore

    s = WorkerSettings(blob_dir=str(tmp_path))
    for job_id in (BlobStore.new_id(), "../../etc/passwd"):
        with pytest.raises(Ignore):
            counterfactual(_Task(), s, job_id, {**FAST, "target": "mild edema", "delivery": 1})
    assert not any(p.name.startswith("..") for p in tmp_path.iterdir())
