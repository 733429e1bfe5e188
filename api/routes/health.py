"""Liveness, readiness (broker and a worker answer) and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..metrics import REGISTRY
from ..problems import ANY_ROUTE, responses

# Public: no API key. In local mode the connection and Host checks still apply.
router = APIRouter(responses=responses(*ANY_ROUTE))


@router.get("/healthz")
def healthz():
    return {"status": "ok"}


@router.get("/readyz")
def readyz(request: Request, response: Response):
    app = request.app.state.celery
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        workers = app.control.ping(timeout=1.0) or []
    except Exception as exc:  # broker down: not ready, say why without a stack trace
        response.status_code = 503
        return {"status": "not ready", "broker": f"unreachable ({type(exc).__name__})", "workers": 0}
    if not workers:
        response.status_code = 503
        return {"status": "not ready", "broker": "ok", "workers": 0}
    return {"status": "ready", "broker": "ok", "workers": len(workers)}


@router.get("/metrics")
def metrics():
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
