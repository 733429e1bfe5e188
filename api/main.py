"""The FastAPI application factory."""

from __future__ import annotations

from fastapi import FastAPI, Request

from worker.blobs import BlobStore
from worker.celery_app import make_celery

from .core.config import Settings
from .decode_pool import DecodePool
from .metrics import observe_latency
from .middleware import security_headers
from .middleware.admission import Admission
from .middleware.body_limit import BodyLimit
from .middleware.local_only import LocalOnly
from .problems import problem
from .routes import counterfactual, health, jobs, web


def create_app(settings: Settings | None = None, celery=None) -> FastAPI:
    settings = settings or Settings()
    app = FastAPI(
        title="whatif-cxr",
        description="Counterfactual chest X-rays. Every output is SYNTHETIC; the embedded model is trained on "
        "phantoms and is for demonstration and testing only, not for clinical use.",
        version="0.1.0",
        # Swagger UI and ReDoc load their scripts from a CDN, which the CSP forbids and a clinic's
        # network should not depend on; the schema itself stays at /openapi.json.
        docs_url=None,
        redoc_url=None,
        # Starlette's slash redirect builds an absolute Location from the Host header.
        redirect_slashes=False,
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
    # Each add_middleware wraps the stack so far: the last added runs first (api/middleware/__init__.py).
    app.add_middleware(Admission, settings=settings, store=app.state.store)
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes)
    app.add_middleware(LocalOnly, enabled=settings.auth_disabled)
    secure = security_headers.headers(web.FORM_HASHES)
    app.add_middleware(security_headers.SecurityHeaders, values=secure)

    async def internal_error(request: Request, exc: Exception):
        # Starlette sends this from outside the middleware stack: the security headers are set here.
        # It raises the error again afterwards, so the server logs it with its traceback.
        response = problem("internal", "an unexpected error; the operator's log has the details")
        security_headers.apply(response.headers, secure)
        return response

    app.add_exception_handler(Exception, internal_error)
    return app
