"""An upload decoded on the app's decode pool (`api/decode_pool.py`), its refusals answered as the
problems every upload route gives (POST /counterfactual, POST /preview, STOW-RS): one place for
what each refusal is called, what it counts and when to try again."""

from __future__ import annotations

from .decode_pool import DecodeCrashed, DecodePoolBusy
from .metrics import UPLOADS_REJECTED
from .problems import ProblemError
from .rejection import UploadRejected

# A decode takes seconds; a client refused because the pool is full may try again this soon.
RETRY_AFTER_S = 2
# The problem an `UploadRejected` is answered with, by its status (api/ingest.py's checks, and the
# DICOMweb fetch of a job named by UIDs: api/routes/counterfactual.py).
KIND_OF_STATUS = {
    404: "dicom-instance-not-found",
    413: "upload-too-large",
    415: "unsupported-media-type",
    422: "invalid-request",
    502: "dicomweb-unavailable",
}


async def decode_on_pool(request, fn, *args):
    """`fn(*args)` on the app's decode pool (a child process by default) -> what it returns; a
    refusal, a crashed decoder or a full pool as a `ProblemError` (4xx, or 503 with Retry-After)."""
    try:
        return await request.app.state.decode_pool.run(fn, *args)
    except UploadRejected as exc:
        UPLOADS_REJECTED.labels(str(exc.status)).inc()
        raise ProblemError(KIND_OF_STATUS.get(exc.status, "invalid-request"), exc.message) from None
    except DecodeCrashed:
        UPLOADS_REJECTED.labels("422").inc()
        raise ProblemError(
            "invalid-request",
            "the image could not be decoded: the decoder stopped on this or a concurrent upload; "
            "if the image is sound, send it again",
        ) from None
    except DecodePoolBusy:
        UPLOADS_REJECTED.labels("503").inc()
        raise ProblemError(
            "decoder-busy",
            "the server is decoding as many uploads as it can; send it again shortly",
            retry_after_s=RETRY_AFTER_S,
        ) from None
