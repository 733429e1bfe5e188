"""The Celery application: Redis broker and result backend, JSON only, one solo-pool worker per GPU.

Run a worker per GPU with `celery -A worker.celery_app worker --pool=solo --concurrency=1`
(CUDA_VISIBLE_DEVICES picks the GPU): the solo pool never forks after the model is loaded, so
CUDA is never initialised before a fork.
"""

from __future__ import annotations

from celery import Celery

from .settings import WorkerSettings


def make_celery(settings: WorkerSettings | None = None) -> Celery:
    s = settings or WorkerSettings()
    from .tasks import TASK_NAME, counterfactual

    app = Celery("whatif", broker=s.broker_url, backend=s.result_backend, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],  # never pickle
        result_accept_content=["json"],
        task_acks_late=True,  # a job lost with its worker is delivered again...
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,  # ...and a busy worker does not hoard jobs
        task_track_started=True,
        result_extended=True,
        result_expires=s.blob_ttl_s,
        # Redis re-delivers unacknowledged jobs after the visibility timeout: longer than the longest job.
        broker_transport_options={"visibility_timeout": 2 * s.job_time_limit_s + 60},
        worker_hijack_root_logger=False,
    )

    # Registered on this app only (not shared), with this app's settings in the closure.
    @app.task(bind=True, name=TASK_NAME, acks_late=True, reject_on_worker_lost=True, shared=False)
    def run_counterfactual(task, job_id: str, params: dict) -> dict:
        return counterfactual(task, s, job_id, params)

    return app


app = make_celery()
