"""POST /counterfactual: validate the upload, the target and the region, store them, enqueue the job.

Everything is checked before anything is stored: a request refused here leaves no file behind.
The key, the job rate, the queue and the blob quota were checked before the body was read
(`api/middleware/admission.py`).
The upload and its region are decoded on the decode pool (`api/decode_pool.py`), never on the
event loop, so other requests are answered meanwhile.
"""

from __future__ import annotations

import logging
import time
from typing import Annotated, Literal

import anyio
from fastapi import APIRouter, File, Form, HTTPException, Request, Response, UploadFile

from worker import jobs

from ..core.config import Settings
from ..decode_pool import DecodePoolBusy
from ..deps import Caller, SettingsDep, StoreDep
from ..ingest import UploadRejected, box_mask, decode_mask, decode_upload, image_shape, mask_png
from ..metrics import JOBS_CREATED, UPLOADS_REJECTED
from ..problems import KEYED, problem, responses
from ..schemas import JobCreated

router = APIRouter()
# model.pipeline.MAX_CANDIDATES, spelled here because the API process does not import torch
# (tests/api/test_routes.py checks that the two agree).
MAX_CANDIDATES = 8
# A decode takes seconds; a client refused because the pool is full may try again this soon.
RETRY_AFTER_S = 2
# A Redis restart takes seconds; a client refused because the broker is down may try again this soon.
BROKER_RETRY_AFTER_S = 5
log = logging.getLogger(__name__)


_RESPONSES = responses(*KEYED, "cross-site", "rate-limited", "queue-full", "storage-full", "broker-unavailable")
_RESPONSES[413]["description"] += (
    "\n\nThe route's own 413s (a file above WHATIF_MAX_UPLOAD_BYTES, an image above WHATIF_MAX_PIXELS, "
    'a DICOM inflating past WHATIF_MAX_INFLATED_BYTES) keep their older shape, `{"detail": "..."}`.'
)


@router.post("/counterfactual", status_code=202, response_model=JobCreated, responses=_RESPONSES)
async def create(
    request: Request,
    response: Response,
    owner: Caller,
    settings: SettingsDep,
    store: StoreDep,
    image: Annotated[UploadFile, File(description="PNG, JPEG or DICOM radiograph")],
    target: Annotated[str, Form(description="finding(s) wanted, e.g. 'small left pleural effusion'")],
    seed: Annotated[int, Form(ge=0, lt=2**32)] = 0,
    optimize_seed: Annotated[bool, Form()] = True,
    steps: Annotated[int | None, Form(ge=1)] = None,
    guidance: Annotated[float | None, Form(ge=0.0, le=30.0)] = None,
    start: Annotated[
        Literal["inversion", "noise"] | None,
        Form(description="sampling start: the input's inverted pathology channel, or noise from the seed"),
    ] = None,
    # le: model.detail.MAX_DETAIL, spelled here because the API process does not import torch
    detail: Annotated[
        float | None,
        Form(
            ge=0.0,
            le=2.0,
            description="restore the input's fine detail where the change is "
            "below about this much on [-1, 1]; 0: the decoded image",
        ),
    ] = None,
    mask: Annotated[
        UploadFile | None,
        File(description="edit region: a PNG of the image's size, grey or RGB, nonzero inside; or send `box`"),
    ] = None,
    box: Annotated[
        str | None,
        Form(description="edit region: 'x0,y0,x1,y1' in the image's pixels (x1, y1 exclusive); or send `mask`"),
    ] = None,
    candidates: Annotated[
        int,
        Form(ge=1, le=MAX_CANDIDATES, description="candidates sampled; the best that passes its verdict is returned"),
    ] = 1,
):
    from model.refine import NoFindingRecognised, refine_request
    from model.regions import requested_side

    if steps is not None and steps > settings.max_steps:
        raise HTTPException(422, f"steps must be at most {settings.max_steps}")
    box = box.strip() if box is not None and box.strip() else None  # a form's empty field: no box
    if mask is not None and box is not None:
        raise HTTPException(422, "send either a mask or a box, not both")
    try:
        refinement = refine_request(target)
    except NoFindingRecognised as exc:
        UPLOADS_REJECTED.labels("422").inc()
        raise HTTPException(422, str(exc)) from None
    data = await image.read(settings.max_upload_bytes + 1)
    mask_data = await mask.read(settings.max_upload_bytes + 1) if mask is not None else None
    side = requested_side(refinement.findings)
    try:
        png, notes, fmt, region = await request.app.state.decode_pool.run(
            _decoded, data, mask_data, box, side, settings
        )
    except UploadRejected as exc:
        UPLOADS_REJECTED.labels(str(exc.status)).inc()
        raise HTTPException(exc.status, exc.message) from None
    except DecodePoolBusy:
        UPLOADS_REJECTED.labels("503").inc()
        raise HTTPException(
            503,
            "the server is decoding as many uploads as it can; send it again shortly",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        ) from None
    # The broker first: while it is down nothing is written. Its epoch goes into the record, so that
    # a Redis that loses the message also loses the epoch and the job is sent again (worker/jobs.py).
    # Each call is bounded by the broker's timeouts (worker/celery_app.py) and runs off the event loop.
    queue = jobs.Queue(request.app.state.celery)
    try:
        epoch = await anyio.to_thread.run_sync(queue.epoch)
    except jobs.BROKER_ERRORS as exc:
        return _broker_down(exc)
    job_id = store.new_id()  # expired jobs were purged by the admission check (api/middleware/admission.py)
    store.put(job_id, "input.png", png)
    if region is not None:
        store.put(job_id, "mask.png", mask_png(region))
    params = {
        "target": target,
        "seed": seed,
        "optimize_seed": optimize_seed,
        "steps": steps,
        "guidance": guidance,
        "start": start,
        "detail": detail,
        "candidates": candidates,
        "mask": region is not None,  # the worker reads the region from mask.png
    }
    store.put_meta(
        job_id,
        {
            "owner": owner,
            "created_at": time.time(),
            "condition": refinement.condition,
            "notes": notes,
            "source_format": fmt,
            "params": params,
            "state": jobs.QUEUED,
            "delivery": 1,
            "broker_epoch": epoch,
        },
    )
    # The record is written before the message is sent, so a worker always finds it. If the broker
    # cannot take the job after all, everything written is removed again: no job that will never run
    # is left reading "queued".
    try:
        await anyio.to_thread.run_sync(queue.send, job_id, params, 1)
    except Exception as exc:
        store.discard(job_id)  # never sent: no worker can write to it
        if not isinstance(exc, jobs.BROKER_ERRORS):
            raise
        return _broker_down(exc)
    JOBS_CREATED.inc()
    response.headers["Location"] = f"/jobs/{job_id}"
    return JobCreated(id=job_id, status_url=f"/jobs/{job_id}", condition=refinement.condition)


def _broker_down(exc: Exception):
    log.warning("job refused: the broker cannot be reached (%s)", type(exc).__name__)
    return problem(
        "broker-unavailable",
        f"the job queue cannot be reached; nothing was stored, send the job again in {BROKER_RETRY_AFTER_S} s",
        retry_after_s=BROKER_RETRY_AFTER_S,
    )


def _decoded(data: bytes, mask_data: bytes | None, box: str | None, side: str | None, settings: Settings):
    """-> (input PNG, notes, source format, checked region or None); runs on a decode thread."""
    from model.regions import RegionError, check_user_region

    png, notes, fmt = decode_upload(data, settings.max_upload_bytes, settings.max_pixels, settings.max_inflated_bytes)
    if mask_data is None and box is None:
        return png, notes, fmt, None
    shape = image_shape(png)
    drawn = decode_mask(mask_data, shape, settings.max_upload_bytes) if mask_data is not None else box_mask(box, shape)
    try:
        return png, notes, fmt, check_user_region(drawn, shape, side)
    except RegionError as exc:
        raise UploadRejected(422, str(exc)) from None
