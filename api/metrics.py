"""Prometheus metrics of the API process, and the middleware that times every request."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.requests import Request

REGISTRY = CollectorRegistry()
JOBS_CREATED = Counter("whatif_jobs_created_total", "jobs accepted", registry=REGISTRY)
UPLOADS_REJECTED = Counter(
    "whatif_uploads_rejected_total", "requests rejected at the boundary", ["status"], registry=REGISTRY
)
REQUESTS_REFUSED = Counter(
    "whatif_requests_refused_total",
    "requests answered with a problem (api/problems.py), by its kind",
    ["kind"],
    registry=REGISTRY,
)
REQUEST_SECONDS = Histogram("whatif_request_seconds", "API request latency", ["route", "method"], registry=REGISTRY)


async def observe_latency(request: Request, call_next):
    """Time each request into `REQUEST_SECONDS`, labelled by the route's template
    (`/jobs/{job_id}`), never the raw path: job ids would make one series per job."""
    start = time.perf_counter()
    try:
        return await call_next(request)
    finally:
        route = request.scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        REQUEST_SECONDS.labels(route=template, method=request.method).observe(time.perf_counter() - start)
