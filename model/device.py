"""Where the model runs and in what precision: the `WHATIF_DEVICE` and `WHATIF_PRECISION` settings.

`auto` picks CUDA when a GPU is visible, else the CPU; precision `auto` is bf16 autocast on CUDA
(the weights stay fp32, matmuls and convolutions run in bf16, which needs no loss scaling) and
fp32 on the CPU, where bf16 is slower than fp32 on most cores. A setting that cannot hold (CUDA
asked for on a machine without it, an unknown name) is a `DeviceError` at start-up, never a
silent fall back to the CPU.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where it is used: the API checks these names without it
    import torch

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


class DeviceError(ValueError):
    """A device or precision setting this machine cannot honour."""


def device_name(name: str) -> str:
    """The setting normalised (`auto`, `cpu`, `cuda`, `cuda:<index>`); `DeviceError` for any other."""
    name = str(name).strip().lower()
    kind, _, index = name.partition(":")
    if kind not in DEVICES or (name.count(":") and (kind != "cuda" or not index.isdigit())):
        raise DeviceError(f"device must be one of auto, cpu, cuda or cuda:<index>, got {name!r}")
    return name


def precision_name(name: str) -> str:
    """The setting normalised (`auto`, `fp32`, `bf16`, `fp16`); `DeviceError` for any other."""
    name = str(name).strip().lower()
    if name not in PRECISIONS:
        raise DeviceError(f"precision must be one of {', '.join(PRECISIONS)}, got {name!r}")
    return name


def resolve_device(name: str = "auto") -> torch.device:
    """`auto`, `cpu`, `cuda` or `cuda:<index>` -> the torch device; `DeviceError` when unavailable."""
    import torch

    name = device_name(name)
    kind = name.split(":", 1)[0]
    if kind == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {name!r} asked for, but this machine has no usable CUDA GPU")
        index = int(name.split(":", 1)[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise DeviceError(f"device {name!r} asked for, but only {torch.cuda.device_count()} GPU(s) are visible")
        return torch.device("cuda", index)
    return torch.device("cpu")


def resolve_precision(name: str, device: torch.device) -> str:
    """`auto`, `fp32`, `bf16` or `fp16` -> the precision to run in on `device` (never `auto`)."""
    import torch

    name = precision_name(name)
    if name == "auto":
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if name == "fp16" and device.type != "cuda":
        raise DeviceError("precision fp16 needs a CUDA device; use fp32 or bf16 on the CPU")
    return name


def autocast(device: torch.device, precision: str):
    """The context to run the model's forward passes in: autocast to bf16/fp16, or nothing for fp32."""
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[precision])
