"""The job record: a job's state, written beside its files in the blob store (`<id>.json`).

Celery's task states cannot tell the truth here: PENDING means "unknown", so a task Redis lost
reads like one waiting, and a worker killed with -9 leaves its task STARTED until the broker's
visibility timeout (20 minutes) hands it out again. So the state lives in the job's own record,
written by the API when it creates the job (and when it delivers it again) and by the worker
when it starts the job, on each progress step and heartbeat, and when it ends; the API reads
nothing else.

    queued -> running -> succeeded | failed
    running, heartbeat older than WHATIF_HEARTBEAT_TIMEOUT_S -> retrying (sent again) -> running ...
    ... started WHATIF_MAX_DELIVERIES times without finishing -> failed, with the reason

Fields the service reads: `state`, `delivery` (which message may run the job: the API raises it
when it sends the job again, and the worker runs only a message of the record's delivery, so an
old message Redis restores later is dropped), `attempts` (starts by a worker), `heartbeat_at`,
`progress`, `started_at`, `finished_at` (set for both ends: the API's queue cap counts the
records without it), `result` and `error`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

from .blobs import BlobNotFound, BlobStore

QUEUED, RUNNING, RETRYING, SUCCEEDED, FAILED = "queued", "running", "retrying", "succeeded", "failed"
FINISHED = (SUCCEEDED, FAILED)
TASK_NAME = "whatif.counterfactual"
# What a broker that is down or unreachable raises from a publish (kombu wraps most; the redis
# client's timeouts and the socket's errors can come through bare).
BROKER_ERRORS = (OperationalError, RedisError, OSError)

log = logging.getLogger(__name__)


def state_of(meta: dict, now: float, heartbeat_timeout_s: float) -> str:
    """The state to report: the record's, except that a running job whose heartbeat is stale has
    lost its worker and is `retrying` (whoever reads it first sends it again: `redeliver_if_lost`)."""
    state = meta.get("state", QUEUED)
    if state == RUNNING and lost(meta, now, heartbeat_timeout_s):
        return RETRYING
    return state


def lost(meta: dict, now: float, heartbeat_timeout_s: float) -> bool:
    return meta.get("state") == RUNNING and now - meta.get("heartbeat_at", 0.0) > heartbeat_timeout_s


def send(celery, job_id: str, params: dict, delivery: int) -> None:
    """Put the job on the queue. The message carries its delivery number (see the module's docstring)."""
    celery.send_task(TASK_NAME, args=[job_id, {**params, "delivery": delivery}], task_id=job_id)


def redeliver_if_lost(store: BlobStore, job_id: str, meta: dict, s, enqueue: Callable[[str, dict, int], None]) -> dict:
    """A running job whose worker stopped writing its heartbeat: send it again, or, once it has
    been started `s.max_deliveries` times, end it failed with the reason. -> the record as it is now.

    The record is written before the message is sent, so the new message is never older than the
    record it finds; if the broker cannot take it, the record goes back to running (stale) and the
    next reader tries again. Two readers at once may both send it: the second message finds the job
    running with a fresh heartbeat and is dropped (`worker.tasks`)."""
    now = time.time()
    if not lost(meta, now, s.heartbeat_timeout_s):
        return meta
    try:
        if int(meta.get("attempts", 0)) >= s.max_deliveries:
            return store.update_meta(
                job_id,
                state=FAILED,
                finished_at=now,
                progress=None,
                error=f"the worker running the job stopped answering {meta.get('attempts')} times "
                f"(no heartbeat for {s.heartbeat_timeout_s:g} s); giving up",
            )
        delivery = int(meta.get("delivery", 1)) + 1
        new = store.update_meta(job_id, state=RETRYING, delivery=delivery, progress=None, requeued_at=now)
    except BlobNotFound:
        return meta  # deleted or expired meanwhile
    try:
        enqueue(job_id, meta.get("params", {}), delivery)
    except BROKER_ERRORS as exc:
        log.warning("job %s lost its worker; the broker could not take it again (%s)", job_id, type(exc).__name__)
        try:
            return store.update_meta(job_id, state=RUNNING, delivery=delivery - 1)
        except BlobNotFound:
            return meta
    log.info("job %s lost its worker (no heartbeat for %.0f s); sent again", job_id, now - meta.get("heartbeat_at", 0))
    return new


def sweep(store: BlobStore, s, enqueue: Callable[[str, dict, int], None]) -> int:
    """`redeliver_if_lost` for every job in the store (the workers run this every heartbeat
    interval, so a lost job comes back even if nobody asks for it). -> how many were lost."""
    n = 0
    now = time.time()
    for job_id, meta in store.records():
        if lost(meta, now, s.heartbeat_timeout_s):
            redeliver_if_lost(store, job_id, meta, s, enqueue)
            n += 1
    return n
