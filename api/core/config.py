"""Service settings (environment variables `WHATIF_*`). Secrets have no default."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from worker.settings import WorkerSettings

from .keys import HOW_TO_MAKE_ONE, weakness

LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


class Settings(WorkerSettings):
    # A refused setting's error would otherwise quote every input, the API keys among them, into the log.
    model_config = SettingsConfigDict(hide_input_in_errors=True)

    api_keys: list[SecretStr] = Field(
        default_factory=list, description="accepted X-API-Key values (JSON list); no default"
    )
    auth_disabled: bool = Field(
        False,
        description="no API keys (local mode): only in single-machine mode, and each request is then answered "
        "only on a loopback connection with a loopback Host (api/middleware/local_only.py)",
    )
    single_machine: bool = Field(False, description="in-memory broker and an in-process worker (`whatif serve`)")
    bind_host: str = Field(
        "127.0.0.1",
        description="the address `whatif serve` binds, checked at start-up; the per-request check reads the "
        "connection's real addresses, since a server started otherwise never sets this",
    )
    max_upload_bytes: int = Field(32 * 1024 * 1024, gt=0, description="one uploaded file (the image, the mask)")
    max_request_bytes: int | None = Field(
        None,
        gt=0,
        description="a whole request body, counted as it arrives: past it 413 before the multipart body is "
        "parsed or spooled. Default: two uploads (image and mask) and 1 MiB for the form fields",
    )
    max_pixels: int = Field(40_000_000, gt=0, description="decompression-bomb guard")
    max_inflated_bytes: int = Field(
        96 * 1024 * 1024,
        gt=0,
        description="a deflated DICOM's data set once inflated; inflation stops past it (413). "
        "The default holds a 40-megapixel 16-bit image and its header",
    )
    decode_threads: int = Field(
        2, ge=1, description="uploads decoded at once, off the event loop; each can take hundreds of MB"
    )
    decode_queue: int = Field(8, ge=0, description="uploads that may wait for a decoder; past it 503 with Retry-After")
    decode_isolation: Literal["process", "thread"] = Field(
        "process",
        description="process: each upload decodes in a child process, so a codec that holds the GIL cannot stall "
        "the API nor a crashing one stop it (api/decode_pool.py); thread: in the API's process (tests, debugging)",
    )
    max_steps: int = Field(200, gt=0, description="the largest `steps` a request may ask for")
    jobs_per_minute: float = Field(
        30, gt=0, description="jobs one API key may create a minute (a minute's worth at once); past it 429"
    )
    jobs_per_minute_per_address: float = Field(
        60, gt=0, description="jobs one client address may create a minute, whatever its keys; past it 429"
    )
    auth_failures_per_minute: float = Field(
        10,
        gt=0,
        description="missing or unknown API keys one client address may send a minute; past it every request "
        "from that address is 429 until the bucket refills",
    )
    max_unfinished_jobs: int = Field(
        64, gt=0, description="jobs queued or running, all keys together; a new job past it is 429"
    )
    blob_quota_bytes: int = Field(
        10 * 1024**3, gt=0, description="bytes under WHATIF_BLOB_DIR; a new job once they reach it is 507"
    )

    @model_validator(mode="after")
    def _secure(self):
        if self.auth_disabled and not (self.single_machine and self.bind_host in LOOPBACK_NAMES):
            raise ValueError("WHATIF_AUTH_DISABLED is only allowed in single-machine mode bound to 127.0.0.1")
        for i, key in enumerate(self.api_keys):
            if reason := weakness(key.get_secret_value()):
                raise ValueError(
                    f"API key {i + 1} of {len(self.api_keys)} is too weak: {reason}. Keys must be at least 16 "
                    f"characters of printable ASCII without spaces, with an estimated entropy of 64 bits or more "
                    f"(api/core/keys.py); make one with {HOW_TO_MAKE_ONE}"
                )
        if not self.auth_disabled and not self.api_keys:
            raise ValueError("set WHATIF_API_KEYS (a JSON list of keys), or run `whatif serve` on 127.0.0.1")
        if self.max_request_bytes is None:
            self.max_request_bytes = 2 * self.max_upload_bytes + 2**20
        return self
