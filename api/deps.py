"""Typed dependencies: settings, blob store and the caller's identity (API key)."""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request

from worker.blobs import BlobStore

from .core.config import Settings


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_store(request: Request) -> BlobStore:
    return request.app.state.store


def caller(request: Request, x_api_key: Annotated[str | None, Header()] = None) -> str:
    """A stable, non-secret owner id for the key (its SHA-256), or 'local' when auth is off."""
    settings: Settings = request.app.state.settings
    if settings.auth_disabled:
        return "local"
    if x_api_key:
        for key in settings.api_keys:
            if hmac.compare_digest(x_api_key.encode(), key.get_secret_value().encode()):
                return hashlib.sha256(x_api_key.encode()).hexdigest()
    raise HTTPException(401, "missing or unknown X-API-Key", headers={"WWW-Authenticate": "X-API-Key"})


Caller = Annotated[str, Depends(caller)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[BlobStore, Depends(get_store)]
