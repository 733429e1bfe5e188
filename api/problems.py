"""The service's guards answer in one JSON error shape: RFC 9457 (formerly 7807) problem details.

`{"type", "title", "status", "detail"}` as `application/problem+json`, for every 4xx and 5xx the
service answers: its guards', its routes' (`ProblemError`), FastAPI's own (a form field that
does not validate, an unknown path, a wrong method) and an unexpected error's. `type` is a URN
naming the refusal (`urn:whatif-cxr:problem:rate-limited`); the table in docs/service.md lists
them. `detail` is always a sentence for a person, so a client that read the older
`{"detail": ...}` errors reads these too; a 422 for the form's fields adds `errors`, one entry
per field, without the value sent (it could be a patient's text).

Every kind is declared once here, with the text that documents it in the OpenAPI of each route
that can answer it (`responses(...)`).
"""

from __future__ import annotations

import dataclasses
import math

from starlette.responses import JSONResponse

from .metrics import REQUESTS_REFUSED
from .schemas import Problem

MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:whatif-cxr:problem:"


@dataclasses.dataclass(frozen=True)
class Kind:
    status: int
    title: str
    when: str  # the condition, for the OpenAPI description
    retry_after: bool = False  # the answer carries Retry-After (seconds)


KINDS = {
    "body-too-large": Kind(
        413,
        "Request body too large",
        "the request body is larger than WHATIF_MAX_REQUEST_BYTES (from Content-Length, at once; "
        "or counted as it arrives, before the multipart body is parsed)",
    ),
    "host-missing": Kind(400, "Host header missing", "local mode (no API keys): the request has no Host header"),
    "host-not-local": Kind(
        421,
        "Host not served here",
        "local mode (no API keys): the Host header is not localhost, 127.0.0.1 or [::1] (DNS rebinding)",
    ),
    "not-loopback": Kind(
        403,
        "Local mode answers only loopback connections",
        "local mode (no API keys): the connection's server or client address is not a loopback address",
    ),
    "cross-site": Kind(
        403,
        "Cross-site request refused",
        "local mode (no API keys): an unsafe method with a foreign Origin or a cross-site Sec-Fetch-Site",
    ),
    "auth-rate-limited": Kind(
        429,
        "Too many failed authentications",
        "this client address sent too many missing or unknown API keys; every request it makes is refused "
        "until Retry-After",
        retry_after=True,
    ),
    "rate-limited": Kind(
        429,
        "Too many jobs created",
        "this API key or this client address created jobs faster than WHATIF_JOBS_PER_MINUTE "
        "(WHATIF_JOBS_PER_MINUTE_PER_ADDRESS)",
        retry_after=True,
    ),
    "preview-rate-limited": Kind(
        429,
        "Too many previews",
        "this API key or this client address asked for previews faster than WHATIF_JOBS_PER_MINUTE "
        "(WHATIF_JOBS_PER_MINUTE_PER_ADDRESS), counted apart from its jobs",
        retry_after=True,
    ),
    "queue-full": Kind(
        429,
        "Too many unfinished jobs",
        "WHATIF_MAX_UNFINISHED_JOBS jobs are queued or running",
        retry_after=True,
    ),
    "storage-full": Kind(
        507,
        "Blob store quota reached",
        "the files under WHATIF_BLOB_DIR reach WHATIF_BLOB_QUOTA_BYTES; they expire after WHATIF_BLOB_TTL_S",
    ),
    "broker-unavailable": Kind(
        503,
        "Job queue unavailable",
        "the broker (Redis) cannot be reached; nothing was stored, send the job again after Retry-After",
        retry_after=True,
    ),
    "internal": Kind(500, "Internal server error", "an unexpected error; the log has its details"),
    "unauthorized": Kind(401, "API key missing or unknown", "the X-API-Key header is missing or not a known key"),
    "not-found": Kind(404, "Not found", "no such job for this API key (unknown, deleted or expired), or no such file"),
    "bad-request": Kind(400, "Request not readable", "the multipart body cannot be parsed"),
    "method-not-allowed": Kind(
        405, "Method not allowed", "the path does not answer this method; `Allow` lists those it does"
    ),
    "invalid-request": Kind(
        422,
        "Request not valid",
        "a field is missing or out of its range, no finding is recognised in `target`, the region does not fit "
        "the image, or the image cannot be used (burned-in annotations, its size, its frames, its colour); "
        "`errors` lists a form's fields",
    ),
    "idempotency-key-reused": Kind(
        422,
        "Idempotency-Key reused",
        "this Idempotency-Key was sent before, within the job's lifetime, with a different request",
    ),
    "upload-too-large": Kind(
        413,
        "Upload too large",
        "an uploaded file (or an instance fetched from the DICOMweb server, whose download stops there) is "
        "larger than WHATIF_MAX_UPLOAD_BYTES, an image has more than WHATIF_MAX_PIXELS pixels, "
        "or a deflated DICOM inflates past WHATIF_MAX_INFLATED_BYTES",
    ),
    "unsupported-media-type": Kind(
        415,
        "Upload type not supported",
        "the image is not a PNG, JPEG or DICOM of an allowed transfer syntax, or the mask is not a PNG",
    ),
    "dicom-instance-not-found": Kind(
        404,
        "DICOM instance not found",
        "the job names an instance by its UIDs and the DICOMweb server (WHATIF_DICOMWEB_URL) does not hold it",
    ),
    "dicomweb-unavailable": Kind(
        502,
        "DICOMweb server unavailable",
        "the job names an instance by its UIDs and the DICOMweb server cannot be reached, did not answer in "
        "time or answered with an error; nothing was stored",
    ),
    "decoder-busy": Kind(
        503,
        "Decoder busy",
        "WHATIF_DECODE_QUEUE uploads already wait for a decode thread; send the upload again after Retry-After",
        retry_after=True,
    ),
}
# HTTP errors raised by FastAPI or Starlette themselves, by status.
BY_STATUS = {400: "bad-request", 401: "unauthorized", 404: "not-found", 405: "method-not-allowed"}

# What any route can answer: the local-mode checks run before routing, and a Content-Length above
# the limit is refused whatever the route.
ANY_ROUTE = ("host-missing", "host-not-local", "not-loopback", "body-too-large", "internal")
# Routes that need an API key.
KEYED = (*ANY_ROUTE, "auth-rate-limited", "unauthorized")


class ProblemError(Exception):
    """Raised by a route (or a dependency) to answer `problem(kind, detail, ...)`."""

    def __init__(self, kind: str, detail: str, retry_after_s: float | None = None, headers: dict | None = None):
        super().__init__(kind)  # never the detail: an exception's message can reach a log
        self.kind, self.detail, self.retry_after_s, self.headers = kind, detail, retry_after_s, headers or {}


def problem(
    kind: str,
    detail: str,
    retry_after_s: float | None = None,
    headers: dict | None = None,
    errors: list[dict] | None = None,
) -> JSONResponse:
    """The response for a refusal of `kind`, counted in `whatif_requests_refused_total`."""
    k = KINDS[kind]
    REQUESTS_REFUSED.labels(kind).inc()
    headers = dict(headers or {})
    if retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after_s)))  # whole seconds: RFC 9110
    if kind == "unauthorized":
        headers.setdefault("WWW-Authenticate", "X-API-Key")
    body = Problem(type=TYPE_PREFIX + kind, title=k.title, status=k.status, detail=detail, errors=errors)
    return JSONResponse(
        body.model_dump(exclude_none=True), status_code=k.status, headers=headers, media_type=MEDIA_TYPE
    )


def responses(*kinds: str) -> dict[int | str, dict]:
    """OpenAPI `responses=` for a route that can answer these kinds; kinds of one status share an entry."""
    out: dict[int | str, dict] = {}
    for name in kinds:
        k = KINDS[name]
        entry = out.setdefault(
            k.status,
            {"description": "", "content": {MEDIA_TYPE: {"schema": Problem.model_json_schema()}}},
        )
        line = f"`{TYPE_PREFIX}{name}`: {k.when}."
        entry["description"] = f"{entry['description']}\n\n{line}" if entry["description"] else line
        if k.retry_after:
            entry["headers"] = {
                "Retry-After": {"description": "seconds to wait before trying again", "schema": {"type": "integer"}}
            }
    return out
