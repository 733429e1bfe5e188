"""POST /counterfactual: validate the upload, the target and the region, store them, enqueue the job.

Everything is checked before anything is stored: a request refused here leaves no file behind.
The key, the job rate, the queue and the blob quota were checked before the body was read
(`api/middleware/admission.py`).
The upload and its region are decoded on the decode pool (`api/decode_pool.py`), never on the
event loop, so other requests are answered meanwhile.

The free-text target may name a patient ("... for <name> born <date>"): it is refined here, and
only the refinement (structured findings and the canonical condition text) is stored, queued,
logged or answered; the text itself is dropped with the request.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Annotated, Literal

import anyio
from fastapi import APIRouter, File, Form, Header, Request, Response, UploadFile

from worker import dicomweb, jobs
from worker.blobs import BlobNotFound
from worker.dicom_results import LINKED, source_of

from .. import idempotency
from ..core.config import Settings
from ..decoding import decode_on_pool
from ..deps import Caller, SettingsDep, StoreDep
from ..ingest import box_mask, decode_mask, decode_upload, image_shape, mask_png
from ..metrics import JOBS_CREATED, UPLOADS_REJECTED
from ..problems import KEYED, ProblemError, problem, responses
from ..rejection import UploadRejected
from ..schemas import JobCreated

router = APIRouter()
# model.pipeline.MAX_CANDIDATES, spelled here because the API process does not import torch
# (tests/api/test_routes.py checks that the two agree).
MAX_CANDIDATES = 8
# A Redis restart takes seconds; a client refused because the broker is down may try again this soon.
BROKER_RETRY_AFTER_S = 5
log = logging.getLogger(__name__)


_RESPONSES = responses(
    *KEYED,
    "bad-request",
    "cross-site",
    "rate-limited",
    "queue-full",
    "storage-full",
    "broker-unavailable",
    "decoder-busy",
    "upload-too-large",
    "unsupported-media-type",
    "invalid-request",
    "idempotency-key-reused",
    "idempotency-key-in-flight",
    "dicom-instance-not-found",
    "dicomweb-unavailable",
)
_RESPONSES[202] = {
    "description": "the job was made, or (the same Idempotency-Key and request again) was made before",
    "headers": {
        "Location": {"description": "the job: /jobs/{id}", "schema": {"type": "string"}},
        "Idempotent-Replayed": {
            "description": "`true` when this is the job an earlier request with this Idempotency-Key made",
            "schema": {"type": "string", "enum": ["true"]},
        },
    },
}
# A DICOM UID (PS3.5 9.1): digits and dots, at most 64 characters.
UID_PATTERN = r"^[0-9]+(\.[0-9]+)*$"
# Modalities of a projection radiograph: computed, digital, conventional (film digitised).
RADIOGRAPH_MODALITIES = ("CR", "DX", "RG")
# What linked mode needs of the input to file the results beside it.
_LINK_NEEDS = ("StudyInstanceUID", "SOPClassUID", "SOPInstanceUID")


@router.post("/counterfactual", status_code=202, response_model=JobCreated, responses=_RESPONSES)
async def create(
    request: Request,
    response: Response,
    owner: Caller,
    settings: SettingsDep,
    store: StoreDep,
    # min_length: an empty form field reads as a missing one, so the schema says it is required non-empty.
    target: Annotated[str, Form(min_length=1, description="finding(s) wanted, e.g. 'small left pleural effusion'")],
    image: Annotated[
        UploadFile | None,
        File(description="PNG, JPEG or DICOM radiograph; or name an instance on the DICOMweb server by its UIDs"),
    ] = None,
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
    study_uid: Annotated[
        str | None,
        Form(
            max_length=64,
            pattern=UID_PATTERN,
            description="instead of `image`: the input is this study's instance on the DICOMweb server "
            "(WHATIF_DICOMWEB_URL), with `series_uid` and `instance_uid`",
        ),
    ] = None,
    series_uid: Annotated[str | None, Form(max_length=64, pattern=UID_PATTERN)] = None,
    instance_uid: Annotated[str | None, Form(max_length=64, pattern=UID_PATTERN)] = None,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            max_length=idempotency.MAX_KEY_CHARS,
            pattern=idempotency.KEY_PATTERN,
            description="send the request again with the same key (e.g. a UUID) after a lost answer: within "
            "the job's lifetime the answer is the same job, nothing new stored; a different request with the "
            "same key is 422; sent again while the first is still being made into a job, it waits for that job "
            "(409 if it is not made within seconds)",
        ),
    ] = None,
):
    from model.refine import NoFindingRecognised, refine_request
    from model.refine.refiner import UNDERSTOOD_HELP

    if steps is not None and steps > settings.max_steps:
        raise ProblemError("invalid-request", f"steps must be at most {settings.max_steps}")
    box = box.strip() if box is not None and box.strip() else None  # a form's empty field: no box
    if mask is not None and box is not None:
        raise ProblemError("invalid-request", "send either a mask or a box, not both")
    uids = _instance_uids(image, study_uid, series_uid, instance_uid, settings)
    try:
        refinement = refine_request(target)
    except NoFindingRecognised:
        # The refiner's message quotes the text, which may name a patient: answer without it.
        UPLOADS_REJECTED.labels("422").inc()
        what = "the target text is empty" if not target.strip() else "no finding recognised in the target"
        raise ProblemError("invalid-request", f"{what}; {UNDERSTOOD_HELP}") from None
    del target  # from here on only the refinement: nothing below may store, queue or log the text
    data = await image.read(settings.max_upload_bytes + 1) if image is not None else b""
    mask_data = await mask.read(settings.max_upload_bytes + 1) if mask is not None else None
    params = job_params(
        refinement,
        seed=seed,
        optimize_seed=optimize_seed,
        steps=steps,
        guidance=guidance,
        start=start,
        detail=detail,
        candidates=candidates,
        mask=mask_data is not None or box is not None,
    )
    if idempotency_key is None:
        return await make_job(request, response, owner, settings, store, refinement, params, data, mask_data, box, uids)
    key_blob = idempotency.blob_name(owner, idempotency_key)
    fingerprint = idempotency.fingerprint(data, mask_data, {**params, "box": box, "uids": uids})
    # The key is claimed before any work, so that requests with it at the same moment make one job
    # (api/idempotency.py); the others wait for that job and answer it.
    try:
        claim, earlier = await idempotency.claim_or_find(
            idempotency.Claim(store.root, key_blob),
            lambda: _earlier_job(store, key_blob, fingerprint, owner, settings),
        )
    except idempotency.InFlight:
        raise ProblemError(
            "idempotency-key-in-flight",
            "another request with this Idempotency-Key is still being made into a job; send this one "
            f"again in {idempotency.RETRY_AFTER_S} s to get that job",
            retry_after_s=idempotency.RETRY_AFTER_S,
        ) from None
    if earlier is not None:
        response.headers["Location"] = earlier.status_url
        response.headers["Idempotent-Replayed"] = "true"
        return earlier
    try:
        return await make_job(
            request,
            response,
            owner,
            settings,
            store,
            refinement,
            params,
            data,
            mask_data,
            box,
            uids,
            key_blob,
            fingerprint,
        )
    finally:
        claim.release()  # made, refused or failed: the next request with the key finds the job or tries itself


async def make_job(
    request: Request,
    response: Response,
    owner: str,
    settings: Settings,
    store,
    refinement,
    params: dict,
    data: bytes,
    mask_data: bytes | None,
    box: str | None,
    uids: tuple[str, str, str] | None,
    key_blob: str | None = None,
    fingerprint: bytes | None = None,
    from_pacs: bool = False,
):
    """Decode, store and send the job; 202 with it, or the problem that refused it. `from_pacs`: the
    input was sent by a PACS (STOW-RS), as one fetched by `uids` is: it must be a radiograph, and its
    results go back to the DICOMweb server in linked mode."""
    from model.regions import requested_side

    side = requested_side(refinement.findings)
    from_pacs = from_pacs or uids is not None
    png, notes, fmt, region, source = await decode_on_pool(
        request, _decoded, data, mask_data, box, side, settings, uids, from_pacs
    )
    # The broker first: while it is down nothing is written. Its epoch goes into the record, so that
    # a Redis that loses the message also loses the epoch and the job is sent again (worker/jobs.py).
    # Each call is bounded by the broker's timeouts (worker/celery_app.py) and runs off the event loop.
    queue = jobs.Queue(request.app.state.celery)
    try:
        epoch = await anyio.to_thread.run_sync(queue.epoch)
    except jobs.BROKER_ERRORS as exc:
        return _broker_down(exc)
    job_id = store.new_id()
    store.put(job_id, "input.png", png)
    if region is not None:
        store.put(job_id, "mask.png", mask_png(region))
    if source is not None:
        # Linked mode's identifiers (worker/dicom_results.py): a file of the job's, never logged, never
        # answered; deleted and expired with it.
        store.put(job_id, "source.json", json.dumps(source).encode())
    store.put_meta(
        job_id,
        {
            "owner": owner,
            "created_at": time.time(),
            "condition": refinement.condition,
            "notes": notes,
            "source_format": fmt,
            "dicom_mode": LINKED if source is not None else "deidentified",
            # Its results go back to the DICOMweb server (in linked mode: worker/tasks.py).
            "dicomweb": from_pacs and bool(settings.dicomweb_url),
            "params": params,
            "state": jobs.QUEUED,
            "delivery": 1,
            "broker_epoch": epoch,
        },
    )
    if key_blob is not None:
        # A file of the job's: it expires and is deleted with it; findable: store.find(key_blob) reads one file.
        store.put(job_id, key_blob, fingerprint, findable=True)
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


def _earlier_job(store, key_blob: str, fingerprint: bytes, owner: str, settings: Settings) -> JobCreated | None:
    """The job this caller's Idempotency-Key made, if it is still there; a refusal if the key was
    sent with another request."""
    job_id = store.find(key_blob)
    if job_id is None:
        return None
    try:
        meta = store.get_meta(job_id)
        same = store.get(job_id, key_blob) == fingerprint
    except BlobNotFound:
        return None  # expired or deleted meanwhile: a new job
    if meta.get("owner") != owner:  # the name holds the owner; a 104-bit collision is not a reason to leak
        return None
    if not same:
        raise ProblemError(
            "idempotency-key-reused",
            "this Idempotency-Key was used for a different request (another image, region, target or "
            "parameter); use a new key for a new request",
        )
    state = jobs.state_of(meta, time.time(), settings.heartbeat_timeout_s)
    return JobCreated(id=job_id, status=state, status_url=f"/jobs/{job_id}", condition=meta["condition"])


def _broker_down(exc: Exception):
    log.warning("job refused: the broker cannot be reached (%s)", type(exc).__name__)
    return problem(
        "broker-unavailable",
        f"the job queue cannot be reached; nothing was stored, send the job again in {BROKER_RETRY_AFTER_S} s",
        retry_after_s=BROKER_RETRY_AFTER_S,
    )


def job_params(refinement, seed: int, candidates: int, mask: bool = False, optimize_seed: bool = True, **given) -> dict:
    """The job's message: the structured findings, which the worker's pipeline takes as they are, and
    their condition text (never the request's free text), and the numbers; `mask`: the worker reads
    the region from mask.png. `given`: steps, guidance, start, detail (None: the checkpoint's)."""
    return {
        "findings": [f.model_dump(mode="json") for f in refinement.findings],
        "condition": refinement.condition,
        "seed": seed,
        "optimize_seed": optimize_seed,
        **{name: given.get(name) for name in ("steps", "guidance", "start", "detail")},
        "candidates": candidates,
        "mask": mask,
    }


def _instance_uids(image, study: str | None, series: str | None, instance: str | None, settings: Settings):
    """The DICOMweb instance the job names, or None for an upload; a refusal unless exactly one is sent."""
    named = [uid for uid in (study, series, instance) if uid]
    if named and len(named) < 3:
        raise ProblemError("invalid-request", "name a DICOM instance by all of study_uid, series_uid and instance_uid")
    if (image is None) == (not named):
        raise ProblemError(
            "invalid-request",
            "send an image, or name a DICOM instance on the DICOMweb server by study_uid, series_uid and "
            "instance_uid: one of the two",
        )
    if named and not settings.dicomweb_url:
        raise ProblemError(
            "invalid-request", "this service has no DICOMweb server (WHATIF_DICOMWEB_URL): upload the image"
        )
    return (study, series, instance) if named else None


def _decoded(
    data: bytes,
    mask_data: bytes | None,
    box: str | None,
    side: str | None,
    settings: Settings,
    uids: tuple[str, str, str] | None = None,
    from_pacs: bool = False,
):
    """-> (input PNG, notes, source format, checked region or None, linked mode's identifiers or None);
    runs on a decode thread. With `uids` the input is fetched from the DICOMweb server first; one from
    a PACS must be a radiograph (an upload may be any grey image, as pydicom's corpus tests)."""
    from model.regions import RegionError, check_user_region

    source: dict[str, str] = {}

    def inspect(ds) -> None:
        modality = str(ds.get("Modality", "")).strip()
        if from_pacs and modality not in RADIOGRAPH_MODALITIES:
            raise UploadRejected(
                422,
                f"the instance is not a radiograph (modality {modality[:16] or 'not given'}): name a CR, DX or RG "
                "image",
            )
        if settings.dicom_mode == LINKED:
            source.update(source_of(ds))

    if uids is not None:
        try:
            # Bounded by the upload limit while it arrives, not after: the PACS's instance is read no
            # further than an upload would be (worker/dicomweb.py).
            data = dicomweb.fetch_instance(settings, *uids, max_bytes=settings.max_upload_bytes)
        except dicomweb.NotOnServer as exc:
            raise UploadRejected(404, str(exc)) from None
        except dicomweb.InstanceTooLarge as exc:
            raise UploadRejected(413, str(exc)) from None
        except dicomweb.ServerUnavailable as exc:
            raise UploadRejected(502, str(exc)) from None
    png, notes, fmt = decode_upload(
        data, settings.max_upload_bytes, settings.max_pixels, settings.max_inflated_bytes, inspect=inspect
    )
    if settings.dicom_mode == LINKED:
        if fmt == "dicom" and all(source.get(k) for k in _LINK_NEEDS):
            notes.append("results linked to the input's study (WHATIF_DICOM_MODE=linked)")
        else:
            notes.append("results de-identified: linked mode needs a DICOM input with its study and instance UIDs")
            source.clear()
    if mask_data is None and box is None:
        return png, notes, fmt, None, source or None
    shape = image_shape(png)
    drawn = decode_mask(mask_data, shape, settings.max_upload_bytes) if mask_data is not None else box_mask(box, shape)
    try:
        return png, notes, fmt, check_user_region(drawn, shape, side), source or None
    except RegionError as exc:
        raise UploadRejected(422, str(exc)) from None
