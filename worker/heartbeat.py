"""The running job's heartbeat: a thread that writes `heartbeat_at` into the job record.

While it is fresh, the job is `running`; once it is older than WHATIF_HEARTBEAT_TIMEOUT_S the
job has lost its worker and is sent again (`worker/jobs.py`). It is a thread, not the progress
callback, because a stage may run minutes between two progress steps (loading the model).

Every write first checks that the job is still this worker's: the record exists (the job was not
deleted) and carries this worker's delivery (it was not given to another worker meanwhile). If
not, the job is abandoned: the next progress step raises `Abandoned` and no result is written.

Each write also carries this worker's timeout (`heartbeat_timeout_s`), and the first is made as
the heartbeat starts: the API and the other workers judge the job's staleness by it
(`worker.jobs.lost`), so a process started with another WHATIF_HEARTBEAT_TIMEOUT_S cannot call a
live job lost, nor wait longer than this worker meant for a dead one.
"""

from __future__ import annotations

import contextlib
import threading
import time

from .blobs import BlobNotFound, BlobStore
from .jobs import RUNNING


class Abandoned(Exception):
    """The job was deleted, or handed to another worker, while this one ran it."""


class Heartbeat:
    def __init__(self, store: BlobStore, job_id: str, delivery: int, interval_s: float, timeout_s: float | None = None):
        self.store, self.job_id, self.delivery, self.interval_s = store, job_id, delivery, interval_s
        # Written with each beat; None writes none, and readers judge by their own setting.
        self.stamp = {} if timeout_s is None else {"heartbeat_timeout_s": timeout_s}
        self.reason: str | None = None  # why the job is no longer ours, once it is not
        self._lock = threading.Lock()  # one read-modify-write of the record at a time (thread vs task)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{job_id[:8]}", daemon=True)

    def __enter__(self) -> Heartbeat:
        # A first beat now, so that the record carries this worker's timeout from the start.
        with contextlib.suppress(Abandoned, OSError):  # Abandoned: `check()` raises it in the task
            self.update()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.update()
            except Abandoned:
                return
            except OSError:
                continue  # a full or briefly unreachable volume: try again at the next beat

    def owned(self) -> bool:
        """The job still exists and is still this worker's (a read of the record)."""
        try:
            meta = self.store.get_meta(self.job_id)
        except BlobNotFound:
            self.reason = "deleted"
            return False
        if meta.get("delivery", 1) != self.delivery or meta.get("state") != RUNNING:
            self.reason = "given to another worker"
            return False
        return True

    def update(self, **changes) -> dict:
        """Write `changes` and a fresh heartbeat into the record, if the job is still ours; else `Abandoned`."""
        with self._lock:
            if self.reason or not self.owned():
                raise Abandoned(self.reason)
            return self.store.update_meta(self.job_id, heartbeat_at=time.time(), **self.stamp, **changes)

    def check(self) -> None:
        """`Abandoned` if the heartbeat thread found the job no longer ours."""
        if self.reason:
            raise Abandoned(self.reason)
