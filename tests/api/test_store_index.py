"""The blob store's index (worker/job_index.py): queue positions, the unfinished jobs and the bytes
held, as the API reads them on each request without reading the store, and right for every process
on one directory (two stores stand in for two API replicas, or an API and a worker)."""

import fcntl
import os
import threading
import time

import pytest
from fastapi.testclient import TestClient

from worker import jobs
from worker.blobs import BlobNotFound, BlobStore
from worker.job_index import INDEX_DIR, QUEUED, UNFINISHED

from .conftest import KEY_A, UNLIMITED, png_bytes, stored, stub_app

TARGET = "moderate left pleural effusion"


def _job(store: BlobStore, created_at: float, **fields) -> str:
    job = store.new_id()
    store.put(job, "input.png", b"x" * 100)
    store.put_meta(job, {"owner": "o", "created_at": created_at, "state": jobs.QUEUED, **fields})
    return job


def _position(store: BlobStore, job: str) -> int:
    return jobs.queue_position(store, job, store.get_meta(job))


def _bytes_on_disk(root) -> int:
    return sum(p.stat().st_size for p in stored(root))


def test_queue_positions_follow_enqueue_start_finish_delete_and_expiry_on_two_stores(tmp_path):
    a, b = BlobStore(tmp_path, 3600), BlobStore(tmp_path, 3600)  # two API replicas
    t = time.time()
    ids = [_job(a if i % 2 else b, t + i) for i in range(5)]
    assert [_position(b, j) for j in ids] == [0, 1, 2, 3, 4]
    a.update_meta(ids[0], state=jobs.RUNNING, started_at=time.time())  # a worker takes the first
    assert [_position(a, j) for j in ids[1:]] == [0, 1, 2, 3]
    a.update_meta(ids[0], state=jobs.SUCCEEDED, finished_at=time.time())
    b.update_meta(ids[1], state=jobs.RETRYING)  # sent again: at the back of the broker's queue, not counted
    assert [_position(b, j) for j in ids[2:]] == [0, 1, 2]
    b.delete(ids[2])
    assert [_position(a, j) for j in ids[3:]] == [0, 1]
    a.update_meta(ids[3], expires_at=time.time() - 1)  # expired, not yet purged
    assert _position(b, ids[4]) == 0
    b.update_meta(ids[1], state=jobs.QUEUED)  # a rolled-back redelivery (worker.jobs.redeliver_if_lost)
    assert _position(a, ids[4]) == 1


def test_the_unfinished_jobs_are_counted_across_stores_and_expiry(tmp_path):
    api, worker = BlobStore(tmp_path, 3600), BlobStore(tmp_path, 3600)
    t = time.time()
    ids = [_job(api, t + i) for i in range(4)]
    assert api.usage().unfinished == 4 == worker.usage().unfinished
    worker.update_meta(ids[0], state=jobs.RUNNING)
    assert api.usage().unfinished == 4  # running is unfinished too
    worker.update_meta(ids[0], state=jobs.FAILED, finished_at=time.time())
    api.delete(ids[1])
    worker.discard(ids[2])  # never sent
    assert api.usage().unfinished == 1
    api.update_meta(ids[3], expires_at=time.time() - 1)
    assert worker.usage().unfinished == 0  # expired: no longer counted, even before the purge
    worker.purge_expired()
    assert not os.listdir(tmp_path / INDEX_DIR / UNFINISHED) and not os.listdir(tmp_path / INDEX_DIR / QUEUED)


def test_a_record_written_as_its_job_is_deleted_leaves_no_marker(tmp_path):
    worker, api = BlobStore(tmp_path, 3600), BlobStore(tmp_path, 3600)
    job = _job(api, time.time())
    write = worker.put

    def deleted_meanwhile(job_id, name, data, **kwargs):
        if name == "json":
            api.delete(job_id)  # DELETE /jobs/{id} between the worker's read of the record and its write
        write(job_id, name, data, **kwargs)

    worker.put = deleted_meanwhile
    with pytest.raises(BlobNotFound):
        worker.update_meta(job, state=jobs.RUNNING, heartbeat_at=time.time())
    assert [p.name for p in stored(tmp_path, index=True)] == [f"{job}.deleted"]
    assert api.usage().unfinished == 0


def test_bytes_are_exact_for_the_own_store_and_counted_for_the_others_at_housekeeping(tmp_path):
    api, worker = BlobStore(tmp_path, 3600), BlobStore(tmp_path, 3600)
    assert api.usage().bytes == 0  # the first look counts the (empty) store
    job = _job(api, time.time())
    assert api.usage().bytes == _bytes_on_disk(tmp_path)  # its own writes, at once
    worker.commit(job, {"result.png": b"r" * 5000, "diff.png": b"d" * 3000}, lambda: True)
    worker.update_meta(job, state=jobs.SUCCEEDED, finished_at=time.time())
    assert api.usage().bytes < _bytes_on_disk(tmp_path)  # another process's: not yet
    assert worker.housekeep(force=True)  # any process's count serves every process
    assert api.usage().bytes == _bytes_on_disk(tmp_path)
    api.delete(job)
    assert api.usage().bytes == _bytes_on_disk(tmp_path) == 0  # the tombstone is empty
    other = _job(worker, time.time())
    worker.update_meta(other, expires_at=time.time() - 1)
    assert api.housekeep(force=True)  # purges the expired job before counting
    assert api.usage().bytes == _bytes_on_disk(tmp_path) == 0 and api.usage().unfinished == 0


def test_usage_starts_the_next_count_in_the_background_once_it_is_old(tmp_path):
    api, worker = BlobStore(tmp_path, 3600, housekeeping_s=0.2), BlobStore(tmp_path, 3600)
    api.usage()
    job = _job(worker, time.time())
    time.sleep(0.3)
    api.usage()  # old: starts a count, answers from the last one meanwhile
    deadline = time.monotonic() + 10
    while api.usage().bytes != _bytes_on_disk(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert api.usage().bytes == _bytes_on_disk(tmp_path) > 0, job


def test_housekeeping_is_done_by_one_process_at_a_time(tmp_path):
    a, b = BlobStore(tmp_path, 3600), BlobStore(tmp_path, 3600)
    a.usage()
    with open(a.index.lock_file(), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process is at it
        assert not b.housekeep(force=True)
    assert b.housekeep(force=True)
    assert not a.housekeep()  # the count just made is fresh: nothing to do


def test_housekeeping_sets_wrong_markers_right(tmp_path):
    """A process that died between a record and its marker: the next housekeeping repairs the index."""
    store = BlobStore(tmp_path, 3600)
    t = time.time()
    queued, running = _job(store, t), _job(store, t + 1)
    late = _job(store, t + 2)
    store.update_meta(running, state=jobs.RUNNING)
    store.usage()  # the first count: the next is housekeeping's
    index = tmp_path / INDEX_DIR

    def queued_jobs():
        return sorted(name.split(".", 2)[2] for name in os.listdir(index / QUEUED))

    (index / QUEUED / next(n for n in os.listdir(index / QUEUED) if n.endswith(queued))).unlink()  # lost
    (index / QUEUED / f"{round((t + 1) * 1e6)}.{round((t + 3600) * 1e6)}.{running}").touch()  # left behind
    (index / UNFINISHED / f"0.{round((t + 3600) * 1e6)}.{store.new_id()}").touch()  # a job with no record
    assert queued_jobs() == sorted([running, late]) and store.usage().unfinished == 4
    store.housekeep(force=True)
    assert queued_jobs() == sorted([queued, late]) and _position(store, late) == 1
    assert store.usage().unfinished == 3


def test_an_idempotency_key_is_found_from_any_store_while_its_job_lives(tmp_path):
    a, b = BlobStore(tmp_path, 3600), BlobStore(tmp_path, 3600)
    job = _job(a, time.time())
    a.put(job, "idem_k1", b"fingerprint", findable=True)
    a.put(job, "idem_k2", b"fingerprint")  # not findable: never looked up
    assert b.find("idem_k1") == job and b.find("idem_k2") is None and b.find("idem_none") is None
    b.delete(job)
    assert a.find("idem_k1") is None
    again = _job(b, time.time())
    b.put(again, "idem_k1", b"fingerprint", findable=True)  # the key's next job
    assert a.find("idem_k1") == again


def test_a_poll_and_a_submit_read_no_record_but_their_own(tmp_path, monkeypatch):
    """What each request costs does not grow with the store: once counted, neither the route nor
    the admission check lists the records or purges (the background housekeeping does, every
    WHATIF_HOUSEKEEPING_S)."""
    app = stub_app(tmp_path / "blobs", housekeeping_s=3600, **UNLIMITED)
    store = app.state.store
    for i in range(20):
        _job(store, time.time() - 100 + i)
    store.usage()  # the first count

    def no_scan(*args, **kwargs):
        raise AssertionError("a request read the whole store")

    monkeypatch.setattr(BlobStore, "records", no_scan)
    monkeypatch.setattr(BlobStore, "_purge", no_scan)
    with TestClient(app) as client:
        H = {"X-API-Key": KEY_A}
        files = {"image": ("x.png", png_bytes(), "image/png")}
        r = client.post("/counterfactual", headers={**H, "Idempotency-Key": "k"}, files=files, data={"target": TARGET})
        assert r.status_code == 202, r.text
        body = client.get(r.headers["location"], headers=H).json()
        assert body["status"] == "queued" and body["queue_position"] == 20
        again = client.post(
            "/counterfactual", headers={**H, "Idempotency-Key": "k"}, files=files, data={"target": TARGET}
        )
        assert again.json()["id"] == r.json()["id"] and again.headers["idempotent-replayed"] == "true"


def test_concurrent_writers_keep_the_count_of_unfinished_jobs(tmp_path):
    stores = [BlobStore(tmp_path, 3600) for _ in range(4)]
    made: list[str] = []

    def work(store):
        for _ in range(10):
            job = _job(store, time.time())
            made.append(job)
            store.update_meta(job, state=jobs.RUNNING)
            store.update_meta(job, state=jobs.SUCCEEDED, finished_at=time.time())
            made.append(_job(store, time.time()))

    threads = [threading.Thread(target=work, args=(s,)) for s in stores]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert stores[0].usage().unfinished == 40 and len(made) == 80
