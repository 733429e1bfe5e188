"""The FastAPI application factory."""

from __future__ import annotations

from fastapi import FastAPI

from worker.blobs import BlobStore
from worker.celery_app import make_celery

from .core.config import Settings
from .decode_pool import DecodePool
from .metrics import observe_latency
from .routes import counterfactual, health, jobs, web


def create_app(settings: Settings | None = None, celery=None) -> FastAPI:
    settings = settings or Settings()
    app = FastAPI(
        title="whatif-cxr",
        description="Counterfactual chest X-rays. Every output is SYNTHETIC; the embedded model is trained on "
        "phantoms and is for demonstration and testing only, not for clinical use.",
        version="0.1.0",
    )
    app.state.settings = settings
    app.state.store = BlobStore(settings.blob_dir, settings.blob_ttl_s)
    app.state.celery = celery or make_celery(settings)
    app.state.decode_pool = DecodePool(settings.decode_threads, settings.decode_queue)
    app.include_router(counterfactual.router)
    app.include_router(jobs.router)
    app.include_router(health.router)
    app.include_router(web.router)
    app.middleware("http")(observe_latency)
    return app
