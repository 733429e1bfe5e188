"""Settings the worker needs (environment variables `WHATIF_*`); the API's settings extend them."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WHATIF_", extra="ignore")

    broker_url: str = "redis://localhost:6379/0"
    result_backend: str = "redis://localhost:6379/1"
    blob_dir: str = "/tmp/whatif-blobs"
    blob_ttl_s: int = Field(3600, gt=0, description="uploads and results are deleted after this")
    job_time_limit_s: int = Field(600, gt=0, description="a job running longer fails")
    max_deliveries: int = Field(3, ge=1, description="a job delivered more often than this (worker crashes) fails")
    checkpoint: str | None = Field(None, description="checkpoint directory (default: the embedded model)")
