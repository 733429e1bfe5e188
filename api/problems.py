"""The service's guards answer in one JSON error shape: RFC 9457 (formerly 7807) problem details.

`{"type", "title", "status", "detail"}` as `application/problem+json`. `type` is a URN naming the
refusal (`urn:whatif-cxr:problem:rate-limited`); the table in docs/service.md lists them. A
client that reads only `detail` (a sentence for a person) works for these and for the routes'
older errors alike, which keep FastAPI's `{"detail": ...}` shape (422 validation errors carry a
list there).

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
}

# What any route can answer: the local-mode checks run before routing, and a Content-Length above
# the limit is refused whatever the route.
ANY_ROUTE = ("host-missing", "host-not-local", "not-loopback", "body-too-large", "internal")
# Routes that need an API key.
KEYED = (*ANY_ROUTE, "auth-rate-limited")


def problem(kind: str, detail: str, retry_after_s: float | None = None) -> JSONResponse:
    """The response for a refusal of `kind`, counted in `whatif_requests_refused_total`."""
    k = KINDS[kind]
    REQUESTS_REFUSED.labels(kind).inc()
    headers = {}
    if retry_after_s is not None:
        headers["Retry-After"] = str(max(1, math.ceil(retry_after_s)))  # whole seconds: RFC 9110
    body = Problem(type=TYPE_PREFIX + kind, title=k.title, status=k.status, detail=detail)
    return JSONResponse(body.model_dump(), status_code=k.status, headers=headers, media_type=MEDIA_TYPE)


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
