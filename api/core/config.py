"""Service settings (environment variables `WHATIF_*`). Secrets have no default."""

from __future__ import annotations

from pydantic import Field, SecretStr, model_validator

from worker.settings import WorkerSettings


class Settings(WorkerSettings):
    api_keys: list[SecretStr] = Field(
        default_factory=list, description="accepted X-API-Key values (JSON list); no default"
    )
    auth_disabled: bool = Field(False, description="only honoured in single-machine mode bound to 127.0.0.1")
    single_machine: bool = Field(False, description="in-memory broker and an in-process worker (`whatif serve`)")
    bind_host: str = "127.0.0.1"
    max_upload_bytes: int = Field(32 * 1024 * 1024, gt=0)
    max_pixels: int = Field(40_000_000, gt=0, description="decompression-bomb guard")
    max_inflated_bytes: int = Field(
        96 * 1024 * 1024,
        gt=0,
        description="a deflated DICOM's data set once inflated; inflation stops past it (413). "
        "The default holds a 40-megapixel 16-bit image and its header",
    )
    decode_threads: int = Field(
        2, ge=1, description="uploads decoded at once, on threads off the event loop; each can take hundreds of MB"
    )
    decode_queue: int = Field(
        8, ge=0, description="uploads that may wait for a decode thread; past it 503 with Retry-After"
    )
    max_steps: int = 200

    @model_validator(mode="after")
    def _secure(self):
        if self.auth_disabled and not (self.single_machine and self.bind_host in ("127.0.0.1", "localhost", "::1")):
            raise ValueError("WHATIF_AUTH_DISABLED is only allowed in single-machine mode bound to 127.0.0.1")
        weak = [
            k for k in self.api_keys if len(k.get_secret_value()) < 16 or k.get_secret_value() in ("changeme", "secret")
        ]
        if weak:
            raise ValueError("API keys must be at least 16 characters and not a placeholder")
        if not self.auth_disabled and not self.api_keys:
            raise ValueError("set WHATIF_API_KEYS (a JSON list of keys), or run `whatif serve` on 127.0.0.1")
        return self
