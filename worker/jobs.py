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

Fields the service reads: `state`, `delivery` (which message may run the job: it is raised each
time the job is sent again, and the worker runs only a message of the record's delivery, so an
old message Redis restores later is dropped), `broker_epoch` (the broker's epoch when the job was
sent, below), `attempts` (starts by a worker), `heartbeat_at`, `heartbeat_timeout_s` (the running
worker's WHATIF_HEARTBEAT_TIMEOUT_S, written with each heartbeat), `progress`, `started_at`,
`finished_at` (set for both ends: the API's queue cap counts the records without it), `result`
and `error`.

The broker's epoch is a random value kept in Redis under `EPOCH_KEY`, made when missing. Redis
restarted without persistence (or flushed) has lost it with every queued message; a worker's sweep
that finds a queued job sent in another epoch sends it again. With AOF (compose, k8s) it survives
with the queue and nothing is sent twice.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time

from kombu.exceptions import OperationalError
from redis.exceptions import RedisError

from .blobs import BlobNotFound, BlobStore

QUEUED, RUNNING, RETRYING, SUCCEEDED, FAILED = "queued", "running", "retrying", "succeeded", "failed"
FINISHED = (SUCCEEDED, FAILED)
TASK_NAME = "whatif.counterfactual"
# What a broker that is down or unreachable raises from a publish (kombu wraps most; the redis
# client's timeouts and the socket's errors can come through bare).
BROKER_ERRORS = (OperationalError, RedisError, OSError)
EPOCH_KEY = "whatif:broker-epoch"

log = logging.getLogger(__name__)


def state_of(meta: dict, now: float, heartbeat_timeout_s: float) -> str:
    """The state to report: the record's, except that a running job whose heartbeat is stale has
    lost its worker and is `retrying` (whoever reads it first sends it again: `redeliver_if_lost`)."""
    state = meta.get("state", QUEUED)
    if state == RUNNING and lost(meta, now, heartbeat_timeout_s):
        return RETRYING
    return state


def lost(meta: dict, now: float, heartbeat_timeout_s: float) -> bool:
    """A running job whose heartbeat is older than its worker's timeout. The worker writes its
    WHATIF_HEARTBEAT_TIMEOUT_S into the record with each heartbeat (`worker/heartbeat.py`), so the
    API and every worker judge by the value that goes with that worker's interval; `heartbeat_timeout_s`,
    the reader's own setting, is for a record without one (written before the worker's first beat, or
    by an older worker)."""
    return meta.get("state") == RUNNING and now - meta.get("heartbeat_at", 0.0) > timeout_of(meta, heartbeat_timeout_s)


def timeout_of(meta: dict, heartbeat_timeout_s: float) -> float:
    """The heartbeat timeout that judges this record: its worker's, else the reader's own."""
    written = meta.get("heartbeat_timeout_s")
    return float(written) if isinstance(written, (int, float)) and written > 0 else heartbeat_timeout_s


class Queue:
    """The job queue on a Celery app: send a job, read the broker's epoch. Every call is bounded by
    the broker's timeouts (worker/celery_app.py) and raises one of BROKER_ERRORS when it is down."""

    def __init__(self, celery):
        self.celery = celery

    def send(self, job_id: str, params: dict, delivery: int) -> None:
        """The message carries the delivery number (see the module's docstring)."""
        self.celery.send_task(TASK_NAME, args=[job_id, {**params, "delivery": delivery}], task_id=job_id)

    def epoch(self) -> str | None:
        """The broker's epoch, made if Redis has none; None for a broker without one (memory://, a stub)."""
        if not hasattr(self.celery, "connection_for_write"):
            return None
        with self.celery.connection_for_write() as conn:
            client = getattr(conn.default_channel, "client", None)  # kombu's Redis channel has one
            if client is None:
                return None
            client.set(EPOCH_KEY, secrets.token_hex(8), nx=True)
            value = client.get(EPOCH_KEY)
        return value.decode() if isinstance(value, bytes) else value


def queue_position(store: BlobStore, job_id: str, meta: dict) -> int:
    """How many jobs created before this one are still queued, all keys together: the jobs ahead of
    it, from the index of queued jobs the records keep (`worker/job_index.py`: a listing of the
    queued jobs, no record read; the broker is never asked, so this answers while Redis is down).
    Jobs sent again (`retrying`) are not counted: they went to the back of the broker's queue."""
    return store.index.queued_ahead(job_id, meta["created_at"], time.time())


def lost_in_broker(meta: dict, epoch: str | None) -> bool:
    """A job waiting for a worker whose message went with a Redis that lost its data."""
    sent_in = meta.get("broker_epoch")
    return meta.get("state") in (QUEUED, RETRYING) and None not in (epoch, sent_in) and sent_in != epoch


def redeliver_if_lost(store: BlobStore, job_id: str, meta: dict, s, queue: Queue, epoch: str | None = None) -> dict:
    """Send the job again if it is lost: its worker stopped writing its heartbeat, or (given the
    broker's current `epoch`) the broker lost its message. A job that lost its worker and has been
    started `s.max_deliveries` times ends failed instead, with the reason. -> the record as it is now.

    The record is written before the message is sent, so the new message is never older than the
    record it finds; if the broker cannot take it, the record goes back as it was and the next look
    tries again. Two lookers at once may both send it: the second message finds the job running
    with a fresh heartbeat and is dropped (`worker.tasks`)."""
    now = time.time()
    no_worker = lost(meta, now, s.heartbeat_timeout_s)
    if not (no_worker or lost_in_broker(meta, epoch)):
        return meta
    try:
        if no_worker and int(meta.get("attempts", 0)) >= s.max_deliveries:
            return store.update_meta(
                job_id,
                state=FAILED,
                finished_at=now,
                progress=None,
                error=f"the worker running the job stopped answering {meta.get('attempts')} times "
                f"(no heartbeat for {timeout_of(meta, s.heartbeat_timeout_s):g} s); giving up",
            )
        delivery = int(meta.get("delivery", 1)) + 1
        epoch = epoch or queue.epoch()
        new = store.update_meta(
            job_id, state=RETRYING, delivery=delivery, progress=None, requeued_at=now, broker_epoch=epoch
        )
        queue.send(job_id, meta.get("params", {}), delivery)
    except BlobNotFound:
        return meta  # deleted or expired meanwhile
    except BROKER_ERRORS as exc:
        log.warning("job %s is lost; the broker cannot take it again (%s)", job_id, type(exc).__name__)
        with contextlib.suppress(BlobNotFound):
            store.update_meta(
                job_id, **{k: meta.get(k) for k in ("state", "delivery", "progress", "requeued_at", "broker_epoch")}
            )
        return meta
    log.info("job %s was lost (%s); sent again", job_id, "no heartbeat" if no_worker else "the broker lost it")
    return new


def sweep(store: BlobStore, s, queue: Queue) -> int:
    """`redeliver_if_lost` for every unfinished job: the workers run this every heartbeat interval,
    so a lost job comes back even if nobody asks for it. -> how many were lost.

    The unfinished jobs come from the store's index (`worker/job_index.py`), so a sweep reads their
    records only, not every finished job's; housekeeping sets the index right from the records."""
    n = 0
    epoch = queue.epoch()
    now = time.time()
    for job_id in store.index.unfinished_ids(now):
        try:
            meta = store.get_meta(job_id)
        except BlobNotFound:
            continue  # deleted or expired meanwhile
        if lost(meta, now, s.heartbeat_timeout_s) or lost_in_broker(meta, epoch):
            redeliver_if_lost(store, job_id, meta, s, queue, epoch)
            n += 1
    return n
