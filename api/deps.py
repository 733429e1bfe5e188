"""Typed dependencies: settings, blob store and the caller's identity (API key)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Request

from worker.blobs import BlobStore

from .core.config import Settings
from .middleware.admission import OWNER
from .problems import ProblemError


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_store(request: Request) -> BlobStore:
    return request.app.state.store


def caller(
    request: Request,
    # Declared for the OpenAPI only: the admission middleware checks the key before the body is read.
    x_api_key: Annotated[str | None, Header(description="an API key; none in local mode")] = None,
) -> str:
    """A stable, non-secret owner id for the key (its SHA-256), or 'local' when auth is off, as
    `api/middleware/admission.py` found it."""
    owner = request.scope.get(OWNER)
    if owner is None:  # the middleware did not run for this route: fail closed
        raise ProblemError("unauthorized", "missing or unknown X-API-Key")
    return owner


Caller = Annotated[str, Depends(caller)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[BlobStore, Depends(get_store)]
