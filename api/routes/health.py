"""Liveness, readiness (broker and a worker answer) and Prometheus metrics."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from worker.runtime import INFO_COMMAND

from ..metrics import REGISTRY
from ..problems import ANY_ROUTE, responses

# Public: no API key. In local mode the connection and Host checks still apply.
router = APIRouter(responses=responses(*ANY_ROUTE))


class Health(BaseModel):
    status: Literal["ok"]


class WorkerModel(BaseModel):
    """What a group of workers runs (`worker.runtime`): all of them alike are one entry."""

    device: str  # "cpu", "cuda:0"
    precision: str  # "fp32", "bf16", "fp16"
    checkpoint: str  # the checkpoint directory's name ("default": the embedded model)
    preset: str
    workers: int


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    broker: str  # "ok", or "unreachable (<error type>)"
    workers: int  # workers that answered, their model loaded
    models: list[WorkerModel] = []


@router.get("/healthz", response_model=Health)
def healthz():
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "not ready: the broker is unreachable or no worker answers"}},
)
def readyz(request: Request, response: Response):
    app = request.app.state.celery
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
        replies = app.control.broadcast(INFO_COMMAND, reply=True, timeout=1.0) or []
    except Exception as exc:  # broker down: not ready, say why without a stack trace
        response.status_code = 503
        return {"status": "not ready", "broker": f"unreachable ({type(exc).__name__})", "workers": 0}
    # One reply per worker, {hostname: info}; a worker whose model is not loaded yet answers {}.
    infos = [info for reply in replies for info in reply.values() if isinstance(info, dict) and info]
    models: dict[tuple, dict] = {}
    for info in infos:
        entry = {k: info.get(k) for k in WorkerModel.model_fields if k != "workers"}
        models.setdefault(tuple(entry.values()), {**entry, "workers": 0})["workers"] += 1
    if not infos:
        response.status_code = 503
        return {"status": "not ready", "broker": "ok", "workers": 0}
    return {"status": "ready", "broker": "ok", "workers": len(infos), "models": list(models.values())}


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}
    },
)
def metrics():
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
