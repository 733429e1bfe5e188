"""The counterfactual task: input blob (and the user's region) -> pipeline (model loaded once per
process) -> result blobs at the input's own size: result.png (16-bit), region.png, diff.png, result.dcm,
and report.dcm (the structured report); a DICOMweb job's DICOM results stored back on the server."""

from __future__ import annotations

import contextlib
import io
import json
import time

import numpy as np
from celery.exceptions import Ignore
from PIL import Image

from . import dicomweb
from .blobs import BlobNotFound, BlobStore
from .dicom_results import LINKED, Provenance, derived_image, structured_report, to_bytes
from .heartbeat import Abandoned, Heartbeat
from .jobs import FAILED, FINISHED, QUEUED, RUNNING, SUCCEEDED, lost
from .outputs import difference_png, region_png, synthetic_png
from .runtime import autocast, pipeline


class JobError(Exception):
    """A job failure with a message safe to show to the client."""


# Shown for a failure that is not one of our own JobErrors (whose messages are meant for users).
GENERIC_ERROR = "the job failed; try again or contact the operator"


def counterfactual(self, s, job_id: str, params: dict) -> dict:
    """The job. Registered on each Celery app by `worker.celery_app.make_celery`; `self` is the
    bound task (unused: progress goes to the job record), `s` the worker's settings.

    The job runs only if its record wants this message (`_claim`); while it runs, a heartbeat
    thread keeps the record fresh (`worker/heartbeat.py`), and its end is written there too:
    `succeeded` with the result, or `failed` with the reason. A job deleted meanwhile stops at its
    next progress step and writes nothing."""
    store = BlobStore(s.blob_dir, s.blob_ttl_s)
    meta, delivery = _claim(store, s, job_id, params)
    with Heartbeat(store, job_id, delivery, s.heartbeat_interval_s, s.heartbeat_timeout_s) as beat:
        try:
            if int(meta["attempts"]) > s.max_deliveries:
                raise JobError(f"the job was started {meta['attempts'] - 1} times without finishing; giving up")
            result = _counterfactual(beat, store, s, job_id, params, meta)
        except Abandoned:
            raise Ignore() from None
        except Exception as exc:
            # A failed job is finished too: the API caps the jobs whose record has no finished_at
            # (WHATIF_MAX_UNFINISHED_JOBS), and a failure that left none would hold a place until it expired.
            error = str(exc) if isinstance(exc, JobError) else GENERIC_ERROR
            with contextlib.suppress(Abandoned, BlobNotFound, OSError, ValueError):
                beat.update(state=FAILED, finished_at=time.time(), error=error, progress=None)
            raise
    store.purge_expired()
    return result


def _claim(store: BlobStore, s, job_id: str, params: dict) -> tuple[dict, int]:
    """Take the job for this message, or drop the message (`Ignore`: acknowledged, nothing run).

    Dropped: the job was deleted or expired; it has ended; the message is older than the record's
    delivery (the job was sent again since: Redis restores an unacknowledged message after its
    visibility timeout); another worker runs it (a fresh heartbeat)."""
    try:
        meta = store.get_meta(job_id)
    except BlobNotFound:
        raise Ignore() from None
    delivery = int(params.get("delivery", meta.get("delivery", 1)))
    state = meta.get("state", QUEUED)
    if state in FINISHED or delivery != int(meta.get("delivery", 1)):
        raise Ignore()
    if state == RUNNING and not lost(meta, time.time(), s.heartbeat_timeout_s):
        raise Ignore()
    now = time.time()
    meta = store.update_meta(
        job_id,
        state=RUNNING,
        delivery=delivery,
        attempts=int(meta.get("attempts", 0)) + 1,
        started_at=now,
        heartbeat_at=now,
        progress=None,
    )
    return meta, delivery


def _counterfactual(beat: Heartbeat, store: BlobStore, s, job_id: str, params: dict, meta: dict) -> dict:
    stored = np.asarray(Image.open(io.BytesIO(store.get(job_id, "input.png"))))
    if stored.dtype == np.uint8:
        # The API stores an 8-bit source in 8 bits; v * 257 is its exact 16-bit value (v / 255 == v * 257 / 65535).
        input16 = stored.astype(np.uint16) * 257
    elif stored.dtype == np.uint16:
        input16 = stored
    else:
        raise JobError("the stored input is not an 8- or 16-bit grey PNG; submit the job again")
    # float32 v / 65535: the pipeline reads floats in [0, 1] as they are (an integer array would be
    # rescaled by its own maximum), and round(x * 65535) gives v back for every 16-bit v.
    pixels = input16.astype(np.float32) / 65535.0
    started = time.monotonic()

    def progress(stage, step, total, lp):
        # The solo pool cannot enforce Celery's time limits, so the task enforces its own.
        if time.monotonic() - started > s.job_time_limit_s:
            raise JobError(f"the job ran longer than {s.job_time_limit_s} s")
        beat.check()  # deleted or handed on: stop now rather than at the end
        beat.update(progress={"stage": stage, "step": step, "total": total, "lp": lp})

    try:
        from model.preprocess import ImageInputError
        from model.refine import NoFindingRecognised

        region = _user_region(store, job_id) if params.get("mask") else None
        # The API sends the refined findings, never the request's free text (it may name a patient);
        # "target" is a message queued before that change.
        target = params["findings"] if "findings" in params else params["target"]
        model = pipeline(s.checkpoint, s.device, s.precision)
        with autocast(s.device, s.precision):
            out = model(
                pixels,
                target,
                seed=params["seed"],
                optimize_seed=params["optimize_seed"],
                steps=params.get("steps"),
                guidance=params.get("guidance"),
                start=params.get("start"),
                detail=params.get("detail"),
                region=region,
                candidates=params.get("candidates", 1),
                progress=progress,
            )
    except (ImageInputError, NoFindingRecognised, ValueError) as exc:  # RegionError is a ValueError
        raise JobError(str(exc)) from None
    # The result in 16 bits, composed from the stored input itself: outside the region every pixel
    # is input.png's own value. (An input above model.composite.MAX_OUTPUT_SIDE was reduced by the
    # pipeline, as its notes say; its reduced input is then the reference.)
    base = input16 if input16.shape == out.image.shape else np.round(out.input_image * 65535.0).astype(np.uint16)
    result16 = np.where(out.region, out.to_uint16(), base)
    verdict = out.verdict.to_dict()
    source = _linked_source(store, job_id, meta)
    digest = getattr(model, "digest", None)  # model.modeling.checkpoint_digest; None: built in memory
    provenance = Provenance(out.condition, params.get("findings") or [], out.seed, digest, verdict)
    image = derived_image(result16, provenance, source)
    files = {
        "result.png": synthetic_png(result16, out.condition, out.seed, verdict),
        "region.png": region_png(out.region, out.region_source),
        "diff.png": difference_png((result16.astype(np.float32) - base) / 65535.0),
        "result.dcm": to_bytes(image),
        "report.dcm": to_bytes(structured_report(image, provenance, out.region)),
    }
    stored = meta.get("dicomweb") and source is not None
    if stored:
        # Stored on the server before the files are committed: a server that refuses them fails the
        # job, and nothing of it is left half written here (what the server took is its own).
        beat.check()
        try:
            dicomweb.store_instances(s, [files["result.dcm"], files["report.dcm"]])
        except dicomweb.DicomwebError as exc:
            raise JobError(str(exc)) from None
    if not store.commit(job_id, files, beat.owned):
        raise Abandoned(beat.reason)
    q = out.quality
    h, w = result16.shape
    result = {
        "condition": out.condition,
        "seed": out.seed,
        "seed_optimized": out.seed_optimized,
        "seed_kept": out.seed_kept,  # False: the guard (SeedOptConfig.guard) undid the optimisation (see notes)
        "verdict": verdict,  # model.verdict.Verdict.to_dict(): status, passed, reason, numbers
        "candidates": out.candidates,  # every candidate's seed and verdict
        "chosen": out.chosen,  # the index of the one returned
        "region_source": out.region_source,  # "automatic" or "user"
        "region_pixels": int(out.region.sum()),
        "width": w,
        "height": h,
        "dicom_mode": LINKED if source is not None else "deidentified",
        "stored_on_dicomweb": bool(stored),  # result.dcm and report.dcm stored in the input's study
        "lp_history": [round(v, 6) for v in out.lp_history],
        "timings_s": {k: round(v, 3) for k, v in out.timings.items()},
        "quality": {
            "target_probability": q.target_probability,
            "input_probability": q.input_probability,
            "identity_similarity": q.identity_similarity,
            "ood_score": q.ood_score,
            "notes": meta.get("notes", []) + q.notes,
        },
    }
    try:
        beat.update(state=SUCCEEDED, finished_at=time.time(), result=result, progress=None)
    except Abandoned:
        if beat.reason == "deleted":
            store.delete(job_id)  # deleted between the files' commit and this write
        raise
    return result


def _linked_source(store: BlobStore, job_id: str, meta: dict) -> dict | None:
    """Linked mode's identifiers of the input (`source.json`, written by the API), or None: the job's
    results are de-identified. Never logged."""
    if meta.get("dicom_mode") != LINKED:
        return None
    try:
        return json.loads(store.get(job_id, "source.json"))
    except BlobNotFound:
        raise JobError("the job's DICOM identifiers (source.json) have expired or were deleted") from None


def _user_region(store: BlobStore, job_id: str) -> np.ndarray:
    """The user's region (mask.png, validated by the API at the input's size) as bool (H, W). For an
    input above `MAX_OUTPUT_SIDE` the pipeline works on the reduced input: the mask is reduced the same
    way (`cap_size`), keeping every pixel it touches."""
    from model.composite import cap_size

    try:
        mask = np.asarray(Image.open(io.BytesIO(store.get(job_id, "mask.png")))) > 0
    except BlobNotFound:
        raise JobError("the job's region (mask.png) has expired or was deleted") from None
    return cap_size(mask.astype(np.float32)) > 0
