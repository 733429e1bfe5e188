"""Settings the worker needs (environment variables `WHATIF_*`); the API's settings extend them."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The most rows one forward pass may take (WHATIF_BATCH_SIZE): past it a GPU's memory, not the queue, decides.
MAX_BATCH_SIZE = 64


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WHATIF_", extra="ignore")

    broker_url: str = "redis://localhost:6379/0"
    blob_dir: str = "/tmp/whatif-blobs"
    blob_ttl_s: int = Field(3600, gt=0, description="uploads and results are deleted after this")
    housekeeping_s: float = Field(
        10,
        gt=0,
        description="how often (at most) one process, API or worker, counts the bytes under WHATIF_BLOB_DIR for "
        "the quota and purges expired jobs; between counts each process adds its own writes (worker/blobs.py)",
    )
    job_time_limit_s: int = Field(
        600, gt=0, description="a job running longer fails; with WHATIF_BATCH_SIZE > 1, the whole batch's time"
    )
    batch_size: int = Field(
        1,
        description="rows a worker runs in one forward pass: taking a job, it also takes the oldest queued jobs "
        "with the same sampling settings until their candidates fill this many (worker/tasks.py). 1: one job at "
        "a time. Larger batches give more jobs a second on a GPU, and each job waits for the whole batch",
    )
    max_deliveries: int = Field(
        3, ge=1, description="a job started this often without finishing (its worker died each time) fails"
    )
    checkpoint: str | None = Field(None, description="checkpoint directory (default: the embedded model)")
    device: str = Field(
        "auto",
        description="where the worker runs the model: auto (CUDA when a GPU is visible, else the CPU), cpu, cuda, "
        "cuda:<index>; a device the machine lacks stops the worker at start-up (model/device.py)",
    )
    precision: str = Field(
        "auto", description="auto (bf16 autocast on CUDA, fp32 on the CPU), fp32, bf16 or fp16 (CUDA only)"
    )
    heartbeat_interval_s: float = Field(
        10, gt=0, description="how often the worker running a job writes its heartbeat into the job record"
    )
    heartbeat_timeout_s: float = Field(
        30,
        gt=0,
        le=60,
        description="a running job whose heartbeat is older than this has lost its worker: it is reported "
        "`retrying` and delivered again (worker/jobs.py)",
    )
    broker_timeout_s: float = Field(
        3,
        gt=0,
        description="connect and read timeout of a broker connection: during a Redis outage the API answers 503 "
        "within a few of these instead of hanging",
    )
    dicom_mode: Literal["deidentified", "linked"] = Field(
        "deidentified",
        description="result.dcm and report.dcm: `deidentified`, a new study with no data from the input; "
        "`linked` (on-premise, where identifiers may be kept), for a DICOM input the input's study and patient "
        "module, a new series, the input named as the source, SYNTHETIC burned in (worker/dicom_results.py)",
    )
    dicomweb_url: str | None = Field(
        None,
        description="the DICOMweb server (its root: QIDO-RS, WADO-RS and STOW-RS below it) a job may name its "
        "input on, by UIDs; in linked mode its results are stored back there. None: no DICOMweb jobs",
    )
    dicomweb_username: str | None = Field(None, description="HTTP basic user of the DICOMweb server; no default")
    dicomweb_password: SecretStr | None = Field(None, description="its password; no default")
    dicomweb_timeout_s: float = Field(
        10, gt=0, description="connect and read timeout of each DICOMweb request (fetch, store)"
    )

    @field_validator("device", "precision")
    @classmethod
    def _known(cls, value: str, info) -> str:
        # The names are checked wherever the settings are read (the API too); whether this machine
        # has the device is checked where the model is loaded, by the worker (`worker.runtime`).
        from model.device import DeviceError, device_name, precision_name

        try:
            return (device_name if info.field_name == "device" else precision_name)(value)
        except DeviceError as exc:
            raise ValueError(f"WHATIF_{info.field_name.upper()}: {exc}") from None

    @field_validator("batch_size")
    @classmethod
    def _batch(cls, value: int) -> int:
        # Named as the operator sets it: the worker stops at start-up with this line.
        if not 1 <= value <= MAX_BATCH_SIZE:
            raise ValueError(f"WHATIF_BATCH_SIZE must be between 1 and {MAX_BATCH_SIZE}, got {value}")
        return value

    @model_validator(mode="after")
    def _heartbeat(self):
        # One late heartbeat (a slow disk, a busy CPU) must not make a live worker's job look lost.
        if self.heartbeat_timeout_s < 2 * self.heartbeat_interval_s:
            raise ValueError("WHATIF_HEARTBEAT_TIMEOUT_S must be at least twice WHATIF_HEARTBEAT_INTERVAL_S")
        return self
