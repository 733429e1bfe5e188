"""GET /jobs/{id} (state, progress, results), the result files, DELETE /jobs/{id}."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, Response

from worker.blobs import BlobNotFound

from ..deps import Caller, StoreDep
from ..problems import KEYED, responses
from ..schemas import JobStatus, Progress

router = APIRouter()
_STATUS = {
    "PENDING": "queued",
    "RECEIVED": "queued",
    "STARTED": "running",
    "PROGRESS": "running",
    "RETRY": "running",
    "SUCCESS": "succeeded",
    "FAILURE": "failed",
    "REVOKED": "failed",
}
_FILES = {
    "result.png": "image/png",
    "region.png": "image/png",
    "diff.png": "image/png",
    "result.dcm": "application/dicom",
}


def _owned(store, job_id: str, owner: str) -> dict:
    try:
        meta = store.get_meta(job_id)
    except BlobNotFound:
        raise HTTPException(404, "no such job (unknown, deleted or expired)") from None
    if meta.get("owner") != owner:
        raise HTTPException(404, "no such job (unknown, deleted or expired)")  # do not reveal others' jobs
    return meta


@router.get("/jobs/{job_id}", response_model=JobStatus, responses=responses(*KEYED))
def status(job_id: str, request: Request, owner: Caller, store: StoreDep):
    res = request.app.state.celery.AsyncResult(job_id)
    # The state first, then the meta: the worker writes started_at / finished_at before Celery
    # records the state, so a state read before the meta never runs ahead of them (read the other
    # way round, a job finishing between the two reads showed "succeeded" with no finished_at).
    raw_state = res.state  # each read of res.state asks the backend again
    meta = _owned(store, job_id, owner)
    state = _STATUS.get(raw_state, "queued")
    body = JobStatus(
        id=job_id,
        status=state,
        condition=meta["condition"],
        created_at=meta["created_at"],
        started_at=meta.get("started_at"),
        finished_at=meta.get("finished_at"),
    )
    if state == "failed" and body.finished_at is None and res.date_done is not None:
        body.finished_at = res.date_done.timestamp()
    if raw_state == "PROGRESS" and isinstance(res.info, dict):
        body.progress = Progress(**{k: res.info.get(k) for k in ("stage", "step", "total", "lp")})
    elif state == "succeeded":
        body.result = res.result
        body.links = {name: f"/jobs/{job_id}/{name}" for name in _FILES}
    elif state == "failed":
        # Only our own job errors carry a message meant for users; anything else is generic.
        err = res.result
        body.error = (
            str(err) if type(err).__name__ == "JobError" else "the job failed; try again or contact the operator"
        )
    return body


@router.get("/jobs/{job_id}/{name}", responses=responses(*KEYED))
def file(job_id: str, name: str, request: Request, owner: Caller, store: StoreDep):
    if name not in _FILES:
        raise HTTPException(404, f"unknown file {name!r}; available: {', '.join(_FILES)}")
    _owned(store, job_id, owner)
    try:
        data = store.get(job_id, name)
    except BlobNotFound:
        raise HTTPException(404, "not ready: the job has not succeeded (yet)") from None
    return Response(
        data, media_type=_FILES[name], headers={"Content-Disposition": f'inline; filename="{job_id}-{name}"'}
    )


@router.delete("/jobs/{job_id}", status_code=204, responses=responses(*KEYED, "cross-site"))
def delete(job_id: str, request: Request, owner: Caller, store: StoreDep):
    _owned(store, job_id, owner)
    request.app.state.celery.control.revoke(job_id)
    store.delete(job_id)
    return Response(status_code=204)
