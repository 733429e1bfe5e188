"""The FastAPI application factory."""

from __future__ import annotations

import contextlib

from fastapi import FastAPI, Request

from worker.blobs import BlobStore
from worker.celery_app import make_celery

from . import access_log, errors
from .core.config import Settings
from .decode_pool import DecodePool
from .metrics import observe_latency
from .middleware import security_headers
from .middleware.admission import Admission
from .middleware.body_limit import BodyLimit
from .middleware.local_only import LocalOnly
from .problems import problem, responses
from .routes import counterfactual, health, jobs, stow, web


def create_app(settings: Settings | None = None, celery=None) -> FastAPI:
    settings = settings or Settings()
    _import_what_a_job_needs()
    access_log.install()  # request lines without query strings, however the app is served
    pool = DecodePool(
        settings.decode_threads,
        settings.decode_queue,
        processes=settings.decode_isolation == "process",
        # the decode functions' modules (a job's, a preview's), with the decoders
        warm=("api.routes.counterfactual", "api.routes.web"),
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        await pool.start()  # the decode processes before the first upload, not during it
        yield
        pool.close()  # the decode processes end with the app

    app = FastAPI(
        lifespan=lifespan,
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
    app.state.store = BlobStore(settings.blob_dir, settings.blob_ttl_s, settings.housekeeping_s)
    app.state.celery = celery or make_celery(settings)
    app.state.decode_pool = pool
    app.include_router(counterfactual.router)
    app.include_router(stow.router)
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
        # It raises the error again afterwards; errors.ScrubbedErrors logs its type and frames, not its message.
        response = problem("internal", "an unexpected error; the operator's log has the details")
        security_headers.apply(response.headers, secure)
        return response

    app.add_exception_handler(Exception, internal_error)
    errors.install(app)
    app.openapi = _openapi(app, app.openapi, settings)
    # The server logs an error the app raises with its message; errors.ScrubbedErrors logs it without.
    build = app.build_middleware_stack
    app.build_middleware_stack = lambda: errors.ScrubbedErrors(build())
    return app


def _import_what_a_job_needs() -> None:
    """Import now what `POST /counterfactual` imports when it runs (the refiner, the regions, the
    decoders: 0.4 s on a 2-core CPU, none of them torch), so that each API process pays it before it
    answers, not on its first job. The route imports them itself, so `import api` stays light."""
    import model.preprocess  # noqa: F401
    import model.refine.refiner  # noqa: F401
    import model.regions  # noqa: F401

    from . import deidentify, dicom  # noqa: F401


def _openapi(app: FastAPI, generate, settings: Settings):
    """FastAPI's schema, made to say what the app does: `steps` is bounded by the setting, and a 422
    is a problem (`api/errors.py`), not FastAPI's own validation error shape."""
    invalid = responses("invalid-request")[422]

    def openapi() -> dict:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        for ops in schema["paths"].values():
            for op in ops.values():
                if "422" in op.get("responses", {}) and "application/json" in op["responses"]["422"].get("content", {}):
                    op["responses"]["422"] = invalid
        form = schema["components"]["schemas"].get("Body_create_counterfactual_post", {}).get("properties", {})
        for branch in form.get("steps", {}).get("anyOf", []):
            if branch.get("type") == "integer":
                branch["maximum"] = settings.max_steps
        for unused in ("HTTPValidationError", "ValidationError"):
            schema["components"]["schemas"].pop(unused, None)
        app.openapi_schema = schema
        return schema

    return openapi
