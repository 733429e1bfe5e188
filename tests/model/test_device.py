"""Device and precision: the settings' errors, `CounterfactualPipeline.to`, and the float64 proof.

No GPU here, so the proof of device placement is by dtype: the pipeline moved to float64 must run
end to end with every network fed float64 only. A tensor made without the model's dtype (and so,
on a GPU, without its device) reaches a network as float32 and fails the hook below.
"""

import numpy as np
import pytest
import torch

from model.device import DeviceError, autocast, resolve_device, resolve_precision
from model.pipeline import CounterfactualPipeline


def test_device_and_precision_settings():
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    for bad in ("gpu", "cuda:x", "cpu:0", "", "cuda:-1"):
        with pytest.raises(DeviceError, match="device must be"):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no usable CUDA GPU"):
            resolve_device("cuda")
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == "fp32"
    assert resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(DeviceError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", cpu)
    with pytest.raises(DeviceError, match="precision must be"):
        resolve_precision("half", cpu)
    with autocast(cpu, "bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with autocast(cpu, "fp32"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_worker_settings_refuse_bad_values():
    from pydantic import ValidationError

    from worker.settings import WorkerSettings

    assert WorkerSettings(device="CUDA:1", precision="BF16").device == "cuda:1"
    for field, value in (("device", "gpu"), ("precision", "half"), ("device", "cuda:x")):
        with pytest.raises(ValidationError):
            WorkerSettings(**{field: value})


def _float64_only(pipe):
    """Hooks that fail any network called with a floating-point input other than float64."""
    seen = []

    def check(module, args, kwargs):
        for value in [*args, *kwargs.values()]:
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                assert value.dtype == torch.float64, f"{type(module).__name__} got {value.dtype}"
                seen.append(type(module).__name__)

    handles = [
        m.register_forward_pre_hook(check, with_kwargs=True)
        for component in pipe.components.values()
        for m in component.modules()
    ]
    return seen, handles


@pytest.mark.parametrize("optimize", [False, True])
def test_the_whole_pipeline_runs_in_float64(optimize):
    pipe = CounterfactualPipeline.from_preset("tiny").to(dtype=torch.float64)
    pipe.centroids = {"Pleural Effusion": torch.zeros(1)}  # replaced below: references given
    assert pipe.dtype == torch.float64 and pipe.device == torch.device("cpu")
    image = np.random.default_rng(0).random((72, 60)).astype(np.float32)
    seen, handles = _float64_only(pipe)
    try:
        out = pipe(
            image,
            "small left pleural effusion",
            optimize_seed=optimize,
            steps=3,
            references=[image] if optimize else None,
            candidates=2,
        )
    finally:
        for h in handles:
            h.remove()
    # Every network of the call ran, all of them on float64 only.
    ran = set(seen)
    assert {"UNet2DConditionModel", "PairedEditor", "EvalClassifier", "AnatomySegmenter", "Conv2d"} <= ran
    assert optimize == ("VisionTransformer" in ran)  # E_CXR reads images only in seed optimisation
    assert out.image.shape == image.shape and out.image.dtype == np.float32 and np.isfinite(out.image).all()
    assert out.seed_optimized == optimize or not out.seed_kept


def test_to_moves_the_centroids_and_refuses_an_integer_dtype():
    pipe = CounterfactualPipeline.from_preset("tiny")
    pipe.centroids = {"Pneumonia": torch.ones(1, 8)}
    assert pipe.to(dtype=torch.float64) is pipe
    assert pipe.centroids["Pneumonia"].dtype == torch.float64
    assert all(p.dtype == torch.float64 for m in pipe.components.values() for p in m.parameters())
    assert pipe.tensor(np.zeros(3, np.float32)).dtype == torch.float64
    with pytest.raises(ValueError, match="floating-point"):
        pipe.to(dtype=torch.int64)


def test_from_pretrained_onto_a_device(tiny_checkpoint):
    pipe = CounterfactualPipeline.from_pretrained(tiny_checkpoint, device="cpu")
    assert pipe.device == torch.device("cpu") and pipe.dtype == torch.float32
