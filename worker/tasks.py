"""The counterfactual task: input blob (and the user's region) -> pipeline (model loaded once per
process) -> result blobs at the input's own size: result.png (16-bit), region.png, diff.png, result.dcm,
and report.dcm (the structured report); a DICOMweb job's DICOM results stored back on the server."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
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
# A job's parameters that `CounterfactualPipeline.batch` takes once for the whole batch: only jobs
# that agree on them share one (the others are per request: `model.pipeline.Request`).
SHARED = ("steps", "guidance", "start", "detail")

log = logging.getLogger(__name__)


@dataclasses.dataclass
class _Job:
    """A job this worker has taken: the message's own, or a queued one taken into its batch."""

    id: str
    params: dict
    meta: dict
    delivery: int
    beat: Heartbeat | None = None
    input16: np.ndarray | None = None
    abandoned: bool = False  # deleted or handed on while the batch ran: nothing of it is written
    outcome: dict | BaseException | None = None  # the result, or why it ended without one

    @property
    def rows(self) -> int:
        return int(self.params.get("candidates") or 1)


def counterfactual(self, s, job_id: str, params: dict) -> dict:
    """The job. Registered on each Celery app by `worker.celery_app.make_celery`; `self` is the
    bound task (unused: progress goes to the job record), `s` the worker's settings.

    The job runs only if its record wants this message (`_claim`). With WHATIF_BATCH_SIZE > 1 the
    worker also takes the oldest queued jobs that can share its forward pass (`_take_queued`) and
    runs them as one batch (`CounterfactualPipeline.batch`, issue 28 point 3); their own messages
    are dropped when they arrive, as a running or finished job's are. While the batch runs, a
    heartbeat thread per job keeps each record fresh (`worker/heartbeat.py`), and each job's end is
    written there: `succeeded` with its result, or `failed` with the reason. A job deleted
    meanwhile writes nothing, and the others go on."""
    store = BlobStore(s.blob_dir, s.blob_ttl_s, s.housekeeping_s)
    meta, delivery = _claim(store, s, job_id, params)
    batch = [_Job(job_id, params, meta, delivery)]
    if s.batch_size > batch[0].rows:
        batch += _take_queued(store, s, batch[0], s.batch_size - batch[0].rows)
    with contextlib.ExitStack() as stack:
        for job in batch:
            job.beat = stack.enter_context(
                Heartbeat(store, job.id, job.delivery, s.heartbeat_interval_s, s.heartbeat_timeout_s)
            )
        _run(store, s, batch)
    # Expired jobs purged and the index set right: by one process at a time, at most every
    # WHATIF_HOUSEKEEPING_S (it reads the whole store).
    with contextlib.suppress(OSError):
        store.housekeep()
    own = batch[0].outcome
    if isinstance(own, Abandoned):
        raise Ignore()
    if isinstance(own, BaseException):
        raise own  # Celery logs the message's own failure; the record already says it
    return own


def _claim(store: BlobStore, s, job_id: str, params: dict) -> tuple[dict, int]:
    """Take the job for this message, or drop the message (`Ignore`: acknowledged, nothing run).

    Dropped: the job was deleted or expired; it has ended; the message is older than the record's
    delivery (the job was sent again since: Redis restores an unacknowledged message after its
    visibility timeout); another worker runs it (a fresh heartbeat), having taken it into its batch
    or from its message. The record is read and written under the job's lock, so that two workers
    never both take it."""
    try:
        with store.locked(job_id):  # an id no job can have is BlobNotFound here too
            meta = store.get_meta(job_id)
            delivery = int(params.get("delivery", meta.get("delivery", 1)))
            state = meta.get("state", QUEUED)
            if state in FINISHED or delivery != int(meta.get("delivery", 1)):
                raise Ignore()
            if state == RUNNING and not lost(meta, time.time(), s.heartbeat_timeout_s):
                raise Ignore()
            return _start(store, job_id, meta, delivery), delivery
    except BlobNotFound:  # deleted or expired, before or while it was taken
        raise Ignore() from None


def _start(store: BlobStore, job_id: str, meta: dict, delivery: int) -> dict:
    now = time.time()
    return store.update_meta(
        job_id,
        state=RUNNING,
        delivery=delivery,
        attempts=int(meta.get("attempts", 0)) + 1,
        started_at=now,
        heartbeat_at=now,
        progress=None,
    )


def _take_queued(store: BlobStore, s, first: _Job, room: int) -> list[_Job]:
    """Queued jobs, oldest first, with `first`'s sampling settings (`SHARED`), whose candidates fit
    in `room` rows; each taken under its lock (a job another worker is taking is passed over)."""
    shared = {name: first.params.get(name) for name in SHARED}
    taken: list[_Job] = []
    for job_id in store.index.queued(time.time()):
        if room <= 0:
            break
        if job_id == first.id:
            continue
        with store.locked(job_id, wait=False) as held:
            if not held:
                continue
            try:
                meta = store.get_meta(job_id)
            except BlobNotFound:
                continue
            params = meta.get("params") or {}
            job = _Job(job_id, params, meta, int(meta.get("delivery", 1)))
            if meta.get("state") != QUEUED or job.rows > room or any(params.get(k) != v for k, v in shared.items()):
                continue
            try:
                job.meta = _start(store, job_id, meta, job.delivery)
            except BlobNotFound:
                continue  # deleted meanwhile
        taken.append(job)
        room -= job.rows
    if taken:
        log.info("job %s runs in a batch with %d queued jobs", first.id, len(taken))
    return taken


def _run(store: BlobStore, s, batch: list[_Job]) -> None:
    """Every job of the batch to its end: `job.outcome` is its result or the exception that ended it,
    which is also written into its record (an `Abandoned` job writes nothing)."""
    from model.pipeline import Request

    started = time.monotonic()
    live: list[_Job] = []
    requests = []
    for job in batch:
        try:
            if int(job.meta["attempts"]) > s.max_deliveries:
                raise JobError(f"the job was started {job.meta['attempts'] - 1} times without finishing; giving up")
            requests.append(Request(**_request_args(store, job), progress=_progress(s, job, live, started)))
            live.append(job)
        except Exception as exc:
            _fail(job, exc)
    if not live:
        return
    try:
        from model.preprocess import ImageInputError
        from model.refine import NoFindingRecognised

        model = pipeline(s.checkpoint, s.device, s.precision)
        with autocast(s.device, s.precision):
            outs = model.batch(requests, **{name: live[0].params.get(name) for name in SHARED})
    except Exception as exc:  # the whole batch: its time limit, a setting, the device
        if isinstance(exc, ValueError):  # a sampling setting out of range: every job's (they share them)
            exc = JobError(str(exc))
        for job in live:
            _fail(job, exc)
        return
    for job, out in zip(live, outs, strict=True):
        try:
            if isinstance(out, (ImageInputError, NoFindingRecognised, ValueError)):  # RegionError is a ValueError
                raise JobError(str(out))
            if isinstance(out, BaseException):
                raise out
            if job.abandoned:
                raise Abandoned(job.beat.reason)
            job.outcome = _finish(store, s, job, out, model)
        except Exception as exc:
            _fail(job, exc)


def _fail(job: _Job, exc: BaseException) -> None:
    """The job ends with `exc`: written as `failed` with a reason safe to show (our own JobError's
    message, else a generic one), unless the job is no longer ours (`Abandoned`)."""
    job.outcome = exc
    if isinstance(exc, Abandoned) or job.beat is None:
        return
    # A failed job is finished too: the API caps the jobs whose record has no finished_at
    # (WHATIF_MAX_UNFINISHED_JOBS), and a failure that left none would hold a place until it expired.
    error = str(exc) if isinstance(exc, JobError) else GENERIC_ERROR
    with contextlib.suppress(Abandoned, BlobNotFound, OSError, ValueError):
        job.beat.update(state=FAILED, finished_at=time.time(), error=error, progress=None)
    if not isinstance(exc, JobError):
        # The type only: an exception's message may carry what it was given (never logged, issue 27).
        log.error("job %s failed: %s", job.id, type(exc).__name__)


def _progress(s, job: _Job, live: list[_Job], started: float):
    def progress(stage, step, total, lp):
        # The solo pool cannot enforce Celery's time limits, so the task enforces its own (for the batch).
        if time.monotonic() - started > s.job_time_limit_s:
            raise JobError(f"the job ran longer than {s.job_time_limit_s} s")
        if job.abandoned:
            return
        try:
            job.beat.check()  # deleted or handed on: stop writing for it now rather than at the end
            job.beat.update(progress={"stage": stage, "step": step, "total": total, "lp": lp})
        except Abandoned:
            job.abandoned = True
            if all(j.abandoned for j in live):
                raise  # nobody left to run for

    return progress


def _request_args(store: BlobStore, job: _Job) -> dict:
    """The job's `model.pipeline.Request` from its stored input and region (its progress aside)."""
    stored = np.asarray(Image.open(io.BytesIO(store.get(job.id, "input.png"))))
    if stored.dtype == np.uint8:
        # The API stores an 8-bit source in 8 bits; v * 257 is its exact 16-bit value (v / 255 == v * 257 / 65535).
        job.input16 = stored.astype(np.uint16) * 257
    elif stored.dtype == np.uint16:
        job.input16 = stored
    else:
        raise JobError("the stored input is not an 8- or 16-bit grey PNG; submit the job again")
    params = job.params
    return {
        # float32 v / 65535: the pipeline reads floats in [0, 1] as they are (an integer array would be
        # rescaled by its own maximum), and round(x * 65535) gives v back for every 16-bit v.
        "image": job.input16.astype(np.float32) / 65535.0,
        # The API sends the refined findings, never the request's free text (it may name a patient);
        # "target" is a message queued before that change.
        "target": params["findings"] if "findings" in params else params["target"],
        "seed": params["seed"],
        "optimize_seed": params["optimize_seed"],
        "region": _user_region(store, job.id) if params.get("mask") else None,
        "candidates": params.get("candidates", 1),
    }


def _finish(store: BlobStore, s, job: _Job, out, model) -> dict:
    """The job's result files, committed, and its record `succeeded` with the result; `model` the
    pipeline that made `out` (its checkpoint digest goes into the DICOM provenance)."""
    job_id, params, meta, beat, input16 = job.id, job.params, job.meta, job.beat, job.input16
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
