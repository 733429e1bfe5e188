"""Request and response schemas (separate from the job metadata stored internally)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

State = Literal["queued", "running", "retrying", "succeeded", "failed"]


class JobCreated(BaseModel):
    id: str
    # queued for a new job; a job an Idempotency-Key made before is in whatever state it has reached
    status: State = "queued"
    status_url: str
    condition: str


class Progress(BaseModel):
    stage: str | None = None
    step: int | None = None
    total: int | None = None
    lp: float | None = None


class JobStatus(BaseModel):
    id: str
    # retrying: its worker stopped (no heartbeat for WHATIF_HEARTBEAT_TIMEOUT_S) and it was sent again
    status: State
    condition: str
    created_at: float  # seconds since the epoch
    queue_position: int | None = Field(
        None,
        ge=0,
        description="while queued: how many jobs created before this one are still queued (0: it is next); "
        "counted from the blob store's job records, all keys together",
    )
    started_at: float | None = None
    finished_at: float | None = None
    progress: Progress | None = None
    error: str | None = None
    links: dict[str, str] = {}
    result: dict | None = None
    synthetic: bool = True


class Problem(BaseModel):
    """An error of the service's guards (RFC 9457 problem details), as `application/problem+json`."""

    type: str  # a URN naming the refusal, e.g. urn:whatif-cxr:problem:rate-limited
    title: str  # the same for every refusal of a type
    status: int  # the HTTP status
    detail: str  # this refusal, in a sentence for a person
    # A 422 for the form's fields: one entry each, {"loc", "msg", "type"}; never the value sent.
    errors: list[dict[str, Any]] | None = None
