"""The worker's model: loaded once per process, on its device (`WHATIF_DEVICE`), run in its
precision (`WHATIF_PRECISION`), and described to `/readyz` through a Celery control command.

The solo pool runs jobs in the worker's main process, so the model is loaded there, once, when
the worker starts (`load`), and a device the machine lacks stops the worker before it takes a job.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from celery.worker.control import inspect_command

INFO_COMMAND = "whatif_info"


@dataclasses.dataclass
class Runtime:
    pipe: object  # model.pipeline.CounterfactualPipeline
    device: str  # "cpu", "cuda:0"
    precision: str  # "fp32", "bf16", "fp16"
    checkpoint: str  # the checkpoint directory's name ("default": the embedded model)
    preset: str
    load_seconds: float

    def describe(self) -> dict:
        return {
            "device": self.device,
            "precision": self.precision,
            "checkpoint": self.checkpoint,
            "preset": self.preset,
            "load_seconds": round(self.load_seconds, 2),
        }


_RUNTIMES: dict[tuple, Runtime] = {}


def load(checkpoint: str | None, device: str = "auto", precision: str = "auto") -> Runtime:
    """The model of `checkpoint` on `device` in `precision`, loaded on first use and kept for the
    process; `model.device.DeviceError` when the machine cannot honour the setting."""
    key = (checkpoint, device, precision)
    if key not in _RUNTIMES:
        from model.device import resolve_device, resolve_precision
        from model.pipeline import CounterfactualPipeline, default_checkpoint_dir

        where = resolve_device(device)
        how = resolve_precision(precision, where)
        t = time.perf_counter()
        pipe = CounterfactualPipeline.from_pretrained(checkpoint, device=where)
        name = Path(checkpoint).name if checkpoint else default_checkpoint_dir().name
        _RUNTIMES[key] = Runtime(pipe, str(where), how, name, pipe.config.get("preset", "?"), time.perf_counter() - t)
    return _RUNTIMES[key]


def autocast(device: str = "auto", precision: str = "auto"):
    """The context a job's forward passes run in: bf16 autocast on CUDA by default (`model.device`)."""
    from model.device import autocast as precision_context
    from model.device import resolve_device, resolve_precision

    where = resolve_device(device)
    return precision_context(where, resolve_precision(precision, where))


def pipeline(checkpoint: str | None, device: str = "auto", precision: str = "auto"):
    """The loaded pipeline (`load`)."""
    return load(checkpoint, device, precision).pipe


def start(settings) -> Runtime:
    """Load the worker's model at start-up (the worker_init signal): a bad setting or a missing
    checkpoint stops the worker here, with the reason, instead of failing its first job."""
    return load(settings.checkpoint, settings.device, settings.precision)


@inspect_command(name=INFO_COMMAND)
def whatif_info(state) -> dict:
    """Celery control command (`app.control.broadcast(INFO_COMMAND, reply=True)`): what this worker
    runs. Empty until its model is loaded, which `/readyz` reads as not ready."""
    if not _RUNTIMES:
        return {}
    runtime = next(reversed(_RUNTIMES.values()))
    return runtime.describe()
