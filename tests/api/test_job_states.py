"""Job states that tell the truth: read from the job's record, never from Celery; a lost worker's
job is `retrying` and sent again, then `failed` after WHATIF_MAX_DELIVERIES; results bound to the
job (a job deleted while it runs leaves no file); expiry removes every file of a job."""

import io
import os
import threading
import time

import numpy as np
import pytest
from celery.exceptions import Ignore
from fastapi.testclient import TestClient
from kombu.exceptions import OperationalError
from PIL import Image

from worker import jobs
from worker.blobs import ORPHAN_GRACE_S, BlobNotFound, BlobStore
from worker.heartbeat import Abandoned, Heartbeat
from worker.settings import WorkerSettings

from .conftest import KEY_A, UNLIMITED, FakePipeline, fake_result, png_bytes, stored, stub_app

H = {"X-API-Key": KEY_A}


def _left(root) -> list[str]:
    """The files under `root` but the tombstones a delete leaves for ORPHAN_GRACE_S (worker/blobs.py)."""
    return [p.name for p in stored(root) if not p.name.endswith(".deleted")]


class Queue:
    """Celery's send_task, recorded; `down` makes it fail as a publish to a dead broker does."""

    def __init__(self):
        self.sent, self.down = [], False

    def send_task(self, name, args, task_id):
        if self.down:
            raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
        self.sent.append((task_id, args[1]["delivery"]))


@pytest.fixture()
def client(tmp_path):
    app = stub_app(tmp_path / "blobs", heartbeat_interval_s=1, heartbeat_timeout_s=5, **UNLIMITED)
    app.state.celery = Queue()
    with TestClient(app) as c:
        yield c


def _create(client) -> str:
    r = client.post(
        "/counterfactual",
        headers=H,
        files={"image": ("x.png", png_bytes(), "image/png")},
        data={"target": "mild edema"},
    )
    assert r.status_code == 202, r.text
    return r.json()["id"]


def _get(client, job):
    return client.get(f"/jobs/{job}", headers=H).json()


def test_the_state_is_the_records_not_celerys(client):
    store, queue = client.app.state.store, client.app.state.celery
    job = _create(client)
    assert queue.sent == [(job, 1)] and store.get_meta(job)["state"] == "queued"
    assert _get(client, job)["status"] == "queued"
    now = time.time()
    store.update_meta(job, state="running", started_at=now, heartbeat_at=now, progress={"stage": "sampling", "step": 2})
    body = _get(client, job)
    assert body["status"] == "running" and body["progress"]["step"] == 2 and body["finished_at"] is None
    # Redis may have lost the task (Celery would say PENDING); the record says it finished.
    store.put(job, "result.png", b"\x89PNG")
    store.update_meta(job, state="succeeded", finished_at=now + 1, result={"seed": 7}, progress=None)
    body = _get(client, job)
    assert body["status"] == "succeeded" and body["result"] == {"seed": 7} and body["finished_at"] == now + 1
    assert client.get(f"/jobs/{job}/result.png", headers=H).content == b"\x89PNG"
    store.update_meta(job, state="failed", error="the job ran longer than 600 s", result=None)
    body = _get(client, job)
    assert body["status"] == "failed" and body["error"] == "the job ran longer than 600 s" and not body["links"]
    assert queue.sent == [(job, 1)]  # nothing was sent again


def test_a_stale_heartbeat_is_retrying_and_sent_again(client):
    store, queue = client.app.state.store, client.app.state.celery
    job = _create(client)
    store.update_meta(job, state="running", attempts=1, heartbeat_at=time.time() - 4)
    assert _get(client, job)["status"] == "running"  # 4 s old: within the 5 s limit
    store.update_meta(job, heartbeat_at=time.time() - 6)
    assert _get(client, job)["status"] == "retrying"
    assert queue.sent == [(job, 1), (job, 2)]  # sent again, with the next delivery number
    record = store.get_meta(job)
    assert record["state"] == "retrying" and record["delivery"] == 2
    assert _get(client, job)["status"] == "retrying" and len(queue.sent) == 2  # sent once only


def test_a_lost_job_the_broker_cannot_take_is_retried_at_the_next_look(client):
    store, queue = client.app.state.store, client.app.state.celery
    job = _create(client)
    store.update_meta(job, state="running", attempts=1, heartbeat_at=time.time() - 60)
    queue.down = True
    assert _get(client, job)["status"] == "retrying"
    assert store.get_meta(job)["delivery"] == 1  # not handed on: the old message may still run it
    queue.down = False
    assert _get(client, job)["status"] == "retrying" and queue.sent[-1] == (job, 2)


def test_after_the_maximum_deliveries_a_lost_job_fails_with_the_reason(client):
    store, queue = client.app.state.store, client.app.state.celery
    job = _create(client)
    store.update_meta(job, state="running", attempts=3, heartbeat_at=time.time() - 60)  # max_deliveries: 3
    body = _get(client, job)
    assert body["status"] == "failed" and "stopped answering 3 times" in body["error"] and body["finished_at"]
    assert queue.sent == [(job, 1)] and store.usage().unfinished == 0  # no longer holds a place in the queue cap


def test_staleness_is_judged_by_the_timeout_the_worker_wrote(client):
    """The API's own limit is 5 s; the record's worker wrote 20 s (or 2 s): the record's value decides,
    so an API and workers started with different WHATIF_HEARTBEAT_TIMEOUT_S agree on a job."""
    store, queue = client.app.state.store, client.app.state.celery
    job = _create(client)
    store.update_meta(job, state="running", attempts=1, heartbeat_at=time.time() - 10, heartbeat_timeout_s=20)
    assert _get(client, job)["status"] == "running" and queue.sent == [(job, 1)]  # stale by 5 s, fresh by 20 s
    store.update_meta(job, heartbeat_at=time.time() - 3, heartbeat_timeout_s=2)
    assert _get(client, job)["status"] == "retrying" and queue.sent == [(job, 1), (job, 2)]  # stale by 2 s
    # A record without the field (an older worker, or before the first beat): the reader's own 5 s.
    other = _create(client)
    store.update_meta(other, state="running", attempts=1, heartbeat_at=time.time() - 4)
    assert _get(client, other)["status"] == "running"


def test_the_sweep_judges_by_the_records_timeout_and_says_it_when_it_gives_up(tmp_path):
    s = WorkerSettings(blob_dir=str(tmp_path), heartbeat_interval_s=1, heartbeat_timeout_s=5)
    store = BlobStore(s.blob_dir, s.blob_ttl_s)
    slow, done_for = store.new_id(), store.new_id()
    beat = {"state": "running", "attempts": 1, "heartbeat_at": time.time() - 10, "params": {}}
    store.put_meta(slow, {**beat, "heartbeat_timeout_s": 30})
    store.put_meta(done_for, {**beat, "attempts": 3, "heartbeat_timeout_s": 8})
    broker = _Broker(None)
    assert jobs.sweep(store, s, broker) == 1 and broker.sent == []
    assert store.get_meta(slow)["state"] == "running"
    failed = store.get_meta(done_for)
    assert failed["state"] == "failed" and "no heartbeat for 8 s" in failed["error"]


class _Broker:
    """`worker.jobs.Queue` with the broker's epoch given: "b" after a Redis restart that lost "a"."""

    def __init__(self, epoch):
        self.sent, self._epoch = [], epoch

    def epoch(self):
        return self._epoch

    def send(self, job_id, params, delivery):
        self.sent.append((job_id, delivery))


def test_the_workers_sweep_sends_lost_jobs_without_a_client_asking(tmp_path):
    s = WorkerSettings(blob_dir=str(tmp_path), heartbeat_interval_s=1, heartbeat_timeout_s=5)
    store = BlobStore(s.blob_dir, s.blob_ttl_s)
    lost, alive, queued = store.new_id(), store.new_id(), store.new_id()
    store.put_meta(lost, {"state": "running", "attempts": 1, "heartbeat_at": time.time() - 10, "params": {}})
    store.put_meta(alive, {"state": "running", "attempts": 1, "heartbeat_at": time.time(), "params": {}})
    store.put_meta(queued, {"state": "queued", "params": {}, "broker_epoch": "a"})
    broker = _Broker("a")
    assert jobs.sweep(store, s, broker) == 1
    assert broker.sent == [(lost, 2)] and store.get_meta(lost)["state"] == "retrying"


def test_jobs_queued_in_a_redis_that_lost_its_data_are_sent_again(tmp_path):
    s = WorkerSettings(blob_dir=str(tmp_path))
    store = BlobStore(s.blob_dir, s.blob_ttl_s)
    queued, retrying, running, done = (store.new_id() for _ in range(4))
    store.put_meta(queued, {"state": "queued", "params": {}, "broker_epoch": "a"})
    store.put_meta(retrying, {"state": "retrying", "delivery": 2, "params": {}, "broker_epoch": "a"})
    store.put_meta(running, {"state": "running", "heartbeat_at": time.time(), "params": {}, "broker_epoch": "a"})
    store.put_meta(done, {"state": "succeeded", "params": {}, "broker_epoch": "a"})
    broker = _Broker("b")  # Redis restarted without AOF: the epoch "a" went with the queue
    assert jobs.sweep(store, s, broker) == 2
    assert sorted(broker.sent) == sorted([(queued, 2), (retrying, 3)])
    assert store.get_meta(queued)["broker_epoch"] == "b" and store.get_meta(running)["state"] == "running"
    assert jobs.sweep(store, s, broker) == 0  # sent once: now of this epoch


# --- the worker's side: which message runs, the heartbeat, results bound to the job ---------------


def _input(store, shape=(64, 64)) -> str:
    job = store.new_id()
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random(shape) * 255).astype(np.uint8)).save(buf, format="PNG")
    store.put(job, "input.png", buf.getvalue())
    store.put_meta(job, {"owner": "t", "notes": [], "state": "queued", "delivery": 1})
    return job


PARAMS = {"target": "mild edema", "seed": 0, "optimize_seed": False, "delivery": 1}


@pytest.mark.parametrize(
    "record",
    [
        {"state": "succeeded"},  # a duplicate of a finished job
        {"state": "retrying", "delivery": 2},  # an old message: the job was sent again since
        {"state": "running", "heartbeat_at": time.time() + 3600},  # another worker runs it
    ],
)
def test_the_worker_drops_a_message_the_record_does_not_want(tmp_path, record):
    from worker.tasks import counterfactual

    s = WorkerSettings(blob_dir=str(tmp_path))
    store = BlobStore(s.blob_dir, s.blob_ttl_s)
    job = _input(store)
    store.update_meta(job, **record)
    with pytest.raises(Ignore):
        counterfactual(None, s, job, PARAMS)
    assert store.get_meta(job).get("attempts") is None  # not started


def test_the_heartbeat_thread_refreshes_the_record_and_notices_a_delete(tmp_path):
    store = BlobStore(tmp_path, 3600)
    job = _input(store)
    store.update_meta(job, state="running", heartbeat_at=0.0)
    with Heartbeat(store, job, delivery=1, interval_s=0.05) as beat:
        time.sleep(0.3)
        assert time.time() - store.get_meta(job)["heartbeat_at"] < 0.2
        store.delete(job)
        time.sleep(0.2)
        with pytest.raises(Abandoned, match="deleted"):
            beat.check()
    assert not _left(tmp_path)  # the heartbeat did not write the record back


def test_the_heartbeat_writes_its_workers_timeout_from_its_first_beat(tmp_path):
    store = BlobStore(tmp_path, 3600)
    job = _input(store)
    store.update_meta(job, state="running", heartbeat_at=0.0)
    with Heartbeat(store, job, delivery=1, interval_s=30, timeout_s=45):
        record = store.get_meta(job)  # long before the thread's first beat (30 s)
        assert record["heartbeat_timeout_s"] == 45 and time.time() - record["heartbeat_at"] < 1
        assert not jobs.lost(record, time.time() + 40, heartbeat_timeout_s=5)  # judged by 45 s, not 5 s
        assert jobs.lost(record, time.time() + 50, heartbeat_timeout_s=60)
    # A job deleted before the heartbeat starts: no error at the start, `check` says why, nothing written back.
    gone = _input(store)
    store.update_meta(gone, state="running", heartbeat_at=0.0)
    store.delete(gone)
    with Heartbeat(store, gone, delivery=1, interval_s=30, timeout_s=45) as beat, pytest.raises(Abandoned):
        beat.check()
    assert not [p for p in _left(tmp_path) if p.startswith(gone)]


def _fake_pipeline(during=lambda: None):
    """Stands in for the model: calls `progress` twice, running `during` between the calls."""

    def run(pixels, target, progress, **kw):
        progress("sampling", 1, 2, 0.5)
        during()
        progress("sampling", 2, 2, 0.4)
        return fake_result(pixels, target, "automatic")

    return FakePipeline(run)


def test_a_job_deleted_while_it_runs_leaves_no_file(tmp_path, monkeypatch):
    import worker.tasks as tasks

    s = WorkerSettings(blob_dir=str(tmp_path / "blobs"))
    store = BlobStore(s.blob_dir, s.blob_ttl_s)
    job = _input(store)
    monkeypatch.setattr(tasks, "pipeline", lambda checkpoint, *_: _fake_pipeline(during=lambda: store.delete(job)))
    with pytest.raises(Ignore):
        tasks.counterfactual(None, s, job, PARAMS)
    assert not _left(store.root)


def test_a_job_deleted_while_its_results_are_written_leaves_no_file(tmp_path):
    store = BlobStore(tmp_path, 3600)
    job = _input(store)
    looks = iter([True, False])  # wanted before the renames; deleted before the check after them

    def still_wanted():
        if not next(looks):
            (tmp_path / f"{job}.json").unlink()  # DELETE /jobs/{id} between the two looks...
            (tmp_path / f"{job}.input.png").unlink()
            return False
        return True

    assert not store.commit(job, {"result.png": b"r", "diff.png": b"d"}, still_wanted)
    assert not _left(tmp_path)  # ...and the results renamed meanwhile are gone too
    assert not store.commit(job, {"result.png": b"r"}, lambda: False) and not _left(tmp_path)


def test_a_record_write_racing_a_delete_does_not_bring_the_job_back(tmp_path):
    store = BlobStore(tmp_path, 3600)
    job = _input(store)
    read = store.get_meta

    def read_then_deleted(job_id):
        meta = read(job_id)
        store.delete(job_id)  # DELETE /jobs/{id} lands between a heartbeat's read and its write
        return meta

    store.get_meta = read_then_deleted
    with pytest.raises(BlobNotFound):
        store.update_meta(job, heartbeat_at=time.time())
    assert not _left(tmp_path)


def test_a_succeeded_job_records_its_result(tmp_path, monkeypatch):
    import worker.tasks as tasks

    s = WorkerSettings(blob_dir=str(tmp_path))
    store = BlobStore(s.blob_dir, s.blob_ttl_s)
    job = _input(store)
    seen = []
    monkeypatch.setattr(
        tasks, "pipeline", lambda checkpoint, *_: _fake_pipeline(during=lambda: seen.append(store.get_meta(job)))
    )
    out = tasks.counterfactual(None, s, job, PARAMS)
    assert seen[0]["state"] == "running" and seen[0]["progress"]["step"] == 1 and seen[0]["attempts"] == 1
    record = store.get_meta(job)
    assert record["state"] == "succeeded" and record["result"] == out and record["progress"] is None
    assert {p.name.split(".", 1)[1] for p in stored(store.root)} == {
        "json",
        "input.png",
        "result.png",
        "region.png",
        "diff.png",
        "result.dcm",
        "report.dcm",
        "lock",  # empty: taking the job locks it (BlobStore.locked); deleted and expired with the job
    }


def test_expiry_removes_every_file_of_a_job(tmp_path):
    store = BlobStore(tmp_path, 3600)
    expired, orphan_old, orphan_new = store.new_id(), store.new_id(), store.new_id()
    for name in ("input.png", "mask.png", "result.png", "region.png", "diff.png", "result.dcm"):
        store.put(expired, name, b"x")
    store.put_meta(expired, {"expires_at": time.time() - 1})
    store.put(orphan_old, "result.png", b"x")  # written by a worker after its job was deleted
    store.put(orphan_new, "input.png", b"x")  # an upload whose record is being written now
    tmp = tmp_path / ".tmp-abc123"  # a worker died while writing
    tmp.write_bytes(b"x")
    old = time.time() - ORPHAN_GRACE_S - 1
    for path in (tmp_path / f"{orphan_old}.result.png", tmp):
        os.utime(path, (old, old))
    kept = store.new_id()
    store.put(kept, "result.png", b"x")
    store.put_meta(kept, {})
    os.utime(tmp_path / f"{kept}.result.png", (old, old))
    assert store.purge_expired() == 1
    assert sorted(_left(tmp_path)) == sorted([f"{orphan_new}.input.png", f"{kept}.result.png", f"{kept}.json"])
    tombstone = tmp_path / f"{expired}.deleted"  # the expired job's, removed after the grace period
    os.utime(tombstone, (old, old))
    store.purge_expired()
    assert not tombstone.exists()


def test_progress_and_the_heartbeat_do_not_lose_each_others_writes(tmp_path):
    store = BlobStore(tmp_path, 3600)
    job = _input(store)
    store.update_meta(job, state="running")
    with Heartbeat(store, job, delivery=1, interval_s=0.001) as beat:
        threads = [threading.Thread(target=lambda i=i: beat.update(**{f"k{i}": i})) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    record = store.get_meta(job)
    assert all(record[f"k{i}"] == i for i in range(20))


def test_a_job_of_a_deleted_record_is_dropped(tmp_path):
    from worker.tasks import counterfactual

    s = WorkerSettings(blob_dir=str(tmp_path))
    with pytest.raises(Ignore):
        counterfactual(None, s, BlobStore.new_id(), PARAMS)


def test_the_heartbeat_limit_is_at_most_60_s_and_twice_the_interval():
    from pydantic import ValidationError

    assert WorkerSettings().heartbeat_timeout_s <= 60
    with pytest.raises(ValidationError, match="less than or equal to 60"):
        WorkerSettings(heartbeat_timeout_s=61)
    with pytest.raises(ValidationError, match="at least twice"):
        WorkerSettings(heartbeat_interval_s=10, heartbeat_timeout_s=15)
