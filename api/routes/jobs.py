"""GET /jobs/{id} (state, progress, results), the result files, DELETE /jobs/{id}.

A job's state is its record's (`worker/jobs.py`), written by this API and the workers into the
blob store; Celery's own states are never read. So a job Redis forgot is not shown as queued, a
finished one reads succeeded whatever Redis lost, and these routes answer during a Redis outage.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response

from worker import jobs
from worker.blobs import BlobNotFound

from ..deps import Caller, SettingsDep, StoreDep
from ..problems import KEYED, ProblemError, responses
from ..schemas import JobStatus, Progress

router = APIRouter()
_FILES = {
    "result.png": "image/png",
    "region.png": "image/png",
    "diff.png": "image/png",
    "result.dcm": "application/dicom",
    "report.dcm": "application/dicom",
}


def _owned(store, job_id: str, owner: str) -> dict:
    try:
        meta = store.get_meta(job_id)
    except BlobNotFound:
        raise ProblemError("not-found", "no such job (unknown, deleted or expired)") from None
    if meta.get("owner") != owner:
        raise ProblemError("not-found", "no such job (unknown, deleted or expired)")  # do not reveal others' jobs
    return meta


_KEYED_JOB = responses(*KEYED, "not-found")


@router.get("/jobs/{job_id}", response_model=JobStatus, responses=_KEYED_JOB)
def status(job_id: str, request: Request, owner: Caller, store: StoreDep, settings: SettingsDep):
    meta = _owned(store, job_id, owner)
    # A job whose worker stopped is sent again by the first to see it: this route, or a worker's
    # sweep (worker/celery_app.py). Only then is the broker asked, within its timeouts; if it is down
    # the job still reads "retrying" and the next look tries again.
    meta = jobs.redeliver_if_lost(store, job_id, meta, settings, jobs.Queue(request.app.state.celery))
    state = jobs.state_of(meta, time.time(), settings.heartbeat_timeout_s)
    body = JobStatus(
        id=job_id,
        status=state,
        condition=meta["condition"],
        created_at=meta["created_at"],
        started_at=meta.get("started_at"),
        finished_at=meta.get("finished_at") if state in jobs.FINISHED else None,
    )
    if state == jobs.QUEUED:
        body.queue_position = jobs.queue_position(store, job_id, meta)
    if state == jobs.RUNNING and meta.get("progress"):
        body.progress = Progress(**meta["progress"])
    elif state == jobs.SUCCEEDED:
        body.result = meta.get("result")
        body.links = {name: f"/jobs/{job_id}/{name}" for name in _FILES}
    elif state == jobs.FAILED:
        body.error = meta.get("error") or "the job failed; try again or contact the operator"
    return body


@router.get(
    "/jobs/{job_id}/{name}",
    response_class=Response,
    responses={
        200: {
            "description": "the file: result.png, region.png or diff.png (PNG), result.dcm or report.dcm (DICOM: the "
            "derived image, the structured report)",
            "content": {media: {"schema": {"type": "string", "format": "binary"}} for media in set(_FILES.values())},
        },
        **_KEYED_JOB,
    },
)
def file(job_id: str, name: str, request: Request, owner: Caller, store: StoreDep):
    if name not in _FILES:
        raise ProblemError("not-found", f"unknown file; available: {', '.join(_FILES)}")
    _owned(store, job_id, owner)
    try:
        data = store.get(job_id, name)
    except BlobNotFound:
        raise ProblemError("not-found", "not ready: the job has not succeeded (yet)") from None
    return Response(
        data, media_type=_FILES[name], headers={"Content-Disposition": f'inline; filename="{job_id}-{name}"'}
    )


@router.delete(
    "/jobs/{job_id}",
    status_code=204,
    response_class=Response,
    responses={204: {"description": "deleted"}, **responses(*KEYED, "not-found", "cross-site")},
)
def delete(job_id: str, owner: Caller, store: StoreDep):
    # No message to the broker (a revoke reaches only workers that are up, and hung during an
    # outage): a queued job's worker finds no record and drops it, a running one stops at its next
    # progress step or heartbeat and writes nothing (worker/heartbeat.py, BlobStore.commit).
    _owned(store, job_id, owner)
    store.delete(job_id)
    return Response(status_code=204)
