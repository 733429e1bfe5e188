"""The Celery application: a Redis broker (no result backend), JSON only, one solo-pool worker per GPU.

Run a worker per GPU with `celery -A worker.celery_app worker --pool=solo --concurrency=1`
(CUDA_VISIBLE_DEVICES picks the GPU): the solo pool never forks after the model is loaded, so
CUDA is never initialised before a fork.
"""

from __future__ import annotations

import logging
import threading
import time

from celery import Celery, signals

from . import runtime
from .augment_task import AUGMENT_TASK, augment_item
from .blobs import BlobStore
from .jobs import BROKER_ERRORS, TASK_NAME, Queue, sweep
from .settings import WorkerSettings

log = logging.getLogger(__name__)


def make_celery(settings: WorkerSettings | None = None) -> Celery:
    s = settings or WorkerSettings()
    from .tasks import counterfactual

    # No result backend: a job's state and result live in its record (worker/jobs.py). With one,
    # each publish also subscribed to the backend, and during an outage retried that for 20 s.
    app = Celery("whatif", broker=s.broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],  # never pickle
        result_accept_content=["json"],
        task_acks_late=True,  # a job lost with its worker stays unacknowledged in Redis...
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,  # ...and a busy worker does not hoard jobs
        task_ignore_result=True,  # nowhere to store it (above)
        # Redis hands an unacknowledged job out again after the visibility timeout: longer than the
        # longest job, or a running job would be doubled. It is only the backstop now: a job whose
        # worker died comes back when its heartbeat is WHATIF_HEARTBEAT_TIMEOUT_S old (worker/jobs.py).
        # The socket timeouts and the bounded reconnects keep a publish during a Redis outage to
        # seconds: kombu's default retries the connection forever, and the API waited past 60 s.
        broker_transport_options={
            "visibility_timeout": 2 * s.job_time_limit_s + 60,
            "socket_timeout": s.broker_timeout_s,
            "socket_connect_timeout": s.broker_timeout_s,
            "max_retries": 1,
            "interval_start": 0,
            "interval_step": 0.5,
            "interval_max": 0.5,
        },
        broker_connection_timeout=s.broker_timeout_s,
        # One quick retry of a publish (a connection dropped since the last one), then the error.
        task_publish_retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 0.5, "interval_max": 0.5},
        worker_hijack_root_logger=False,
    )

    # Registered on this app only (not shared), with this app's settings in the closure.
    @app.task(bind=True, name=TASK_NAME, acks_late=True, reject_on_worker_lost=True, shared=False)
    def run_counterfactual(task, job_id: str, params: dict) -> dict:
        return counterfactual(task, s, job_id, params)

    @app.task(name=AUGMENT_TASK, acks_late=True, reject_on_worker_lost=True, shared=False)
    def run_augment_item(message: dict) -> None:
        augment_item(s, message)

    @signals.worker_init.connect(weak=False)
    def load_model(sender=None, **kwargs):
        # The model is loaded once, before the worker takes a job; a device the machine lacks or a
        # bad checkpoint stops the worker here with the reason (SystemExit: Celery logs and swallows
        # a signal handler's ordinary exceptions, and would start a worker whose every job fails).
        if getattr(sender, "app", None) is app:
            from model.device import DeviceError
            from model.modeling import CheckpointError

            try:
                runtime.start(s)
            except (DeviceError, CheckpointError) as exc:
                log.critical("the worker cannot start: %s", exc)
                raise SystemExit(f"whatif worker: {exc}") from None

    @signals.worker_ready.connect(weak=False)
    def start_sweeper(sender=None, **kwargs):
        # Every worker sends lost jobs again (their worker's heartbeat stopped, or Redis lost their
        # message), even if no client asks for them; signals are global: only this app's worker.
        if getattr(sender, "app", None) is app:
            threading.Thread(target=_sweep_forever, args=(s, Queue(app)), name="whatif-sweeper", daemon=True).start()

    return app


def _sweep_forever(s: WorkerSettings, queue: Queue) -> None:
    store = BlobStore(s.blob_dir, s.blob_ttl_s)
    while True:
        try:
            sweep(store, s, queue)
        except (*BROKER_ERRORS, ValueError):
            log.warning("sweeping for lost jobs failed; trying again in %g s", s.heartbeat_interval_s, exc_info=True)
        time.sleep(s.heartbeat_interval_s)


app = make_celery()
