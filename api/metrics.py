"""Prometheus metrics of the API process."""

from prometheus_client import CollectorRegistry, Counter, Histogram

REGISTRY = CollectorRegistry()
JOBS_CREATED = Counter("whatif_jobs_created_total", "jobs accepted", registry=REGISTRY)
UPLOADS_REJECTED = Counter("whatif_uploads_rejected_total", "requests rejected at the boundary", ["status"], registry=REGISTRY)
REQUEST_SECONDS = Histogram("whatif_request_seconds", "API request latency", ["route"], registry=REGISTRY)
