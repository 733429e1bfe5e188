"""The counterfactual task: input blob -> pipeline (model loaded once per process) -> result blobs."""

from __future__ import annotations

import io
import time

import numpy as np
from celery.exceptions import Ignore
from PIL import Image

from .blobs import BlobNotFound, BlobStore
from .outputs import difference_png, secondary_capture_dcm, synthetic_png

_PIPELINES: dict = {}


class JobError(Exception):
    """A job failure with a message safe to show to the client."""


def pipeline(checkpoint: str | None):
    """The model, loaded once per worker process (first job), on the GPU when there is one."""
    if checkpoint not in _PIPELINES:
        from model.pipeline import CounterfactualPipeline

        _PIPELINES[checkpoint] = CounterfactualPipeline.from_pretrained(checkpoint)
    return _PIPELINES[checkpoint]


TASK_NAME = "whatif.counterfactual"


def counterfactual(self, s, job_id: str, params: dict) -> dict:
    """The job. Registered on each Celery app by `worker.celery_app.make_celery`; `self` is the
    bound task (for progress states), `s` the worker's settings."""
    store = BlobStore(s.blob_dir, s.blob_ttl_s)
    try:
        meta = store.get_meta(job_id)
    except BlobNotFound:
        raise Ignore() from None  # deleted or expired before it ran
    attempts = int(meta.get("attempts", 0)) + 1
    store.update_meta(job_id, attempts=attempts, started_at=time.time())
    if attempts > s.max_deliveries:
        raise JobError(f"the job was started {attempts - 1} times without finishing; giving up")
    pixels = np.asarray(Image.open(io.BytesIO(store.get(job_id, "input.png")))).astype(np.float32) / 65535.0
    started = time.monotonic()

    def progress(stage, step, total, lp):
        # The solo pool cannot enforce Celery's time limits, so the task enforces its own.
        if time.monotonic() - started > s.job_time_limit_s:
            raise JobError(f"the job ran longer than {s.job_time_limit_s} s")
        self.update_state(state="PROGRESS", meta={"stage": stage, "step": step, "total": total, "lp": lp})

    try:
        from model.preprocess import ImageInputError
        from model.refine import NoFindingRecognised

        out = pipeline(s.checkpoint)(
            pixels,
            params["target"],
            seed=params["seed"],
            optimize_seed=params["optimize_seed"],
            steps=params.get("steps"),
            guidance=params.get("guidance"),
            start=params.get("start"),
            detail=params.get("detail"),
            progress=progress,
        )
    except (ImageInputError, NoFindingRecognised, ValueError) as exc:
        raise JobError(str(exc)) from None
    store.put(job_id, "result.png", synthetic_png(out.to_uint8(), out.condition, out.seed))
    store.put(job_id, "diff.png", difference_png(out.difference))
    store.put(job_id, "result.dcm", secondary_capture_dcm(out.to_uint8(), out.condition))
    store.update_meta(job_id, finished_at=time.time())
    store.purge_expired()
    q = out.quality
    return {
        "condition": out.condition,
        "seed": out.seed,
        "seed_optimized": out.seed_optimized,
        "seed_kept": out.seed_kept,  # False: the guard (SeedOptConfig.guard) undid the optimisation (see notes)
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
