"""Training on a device, in a precision: the float64 proof, the settings' errors, bf16 on the CPU.

No GPU here, so device placement is proved by dtype, as tests/model/test_device.py proves it for
inference: one step of each stage runs through `train()` with the pipeline in float64 and hooks
that fail any network fed a floating-point tensor that is not float64. A batch, a view, a pool
batch, a target or a noise made without the pipeline's device and dtype (and so, on a GPU, on the
CPU) reaches a network as float32 and fails the step.
"""

import math

import pytest
import torch

import training.train as train_module
from model.device import DeviceError
from model.pipeline import CounterfactualPipeline
from training.loop import rank_device, training_precision
from training.options import Hyper
from training.state import load_state, save_state
from training.train import train
from whatif.cli import main

# What each stage trains: every one of them must have moved after one step.
TRAINED = {
    "stage0": ("contrastive", "identity_encoder", "eval_classifier"),
    "stage1": ("vae", "transformer", "findings_head"),
    "stage2": ("diffusion",),
    "classifier": ("eval_classifier",),
    "segmenter": ("segmenter",),
    "editor": ("editor",),
}


def _float64_only(pipe, seen: list):
    """Hooks that fail any network called with a floating-point input other than float64."""

    def check(module, args, kwargs):
        for value in [*args, *kwargs.values()]:
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                assert value.dtype == torch.float64, f"{type(module).__name__} got {value.dtype}"
                seen.append(type(module).__name__)

    return [
        m.register_forward_pre_hook(check, with_kwargs=True)
        for component in pipe.components.values()
        for m in component.modules()
    ]


SLOW = pytest.mark.slow


@pytest.mark.parametrize(
    "stage, hp",
    [
        pytest.param("stage0", Hyper(), marks=SLOW, id="stage0"),
        pytest.param(
            "stage1", Hyper(swap_every=1), marks=SLOW, id="stage1"
        ),  # the swap's L_ID and L_PC on the first step
        pytest.param("stage1", Hyper(paired_weight=1.0, swap_every=1), id="stage1-paired"),
        pytest.param("stage2", Hyper(), marks=SLOW, id="stage2"),
        pytest.param("classifier", Hyper(acquisition_augment=1.0), id="classifier"),
        pytest.param("segmenter", Hyper(acquisition_augment=1.0), id="segmenter"),
        pytest.param("editor", Hyper(), marks=SLOW, id="editor"),
    ],
)
def test_one_step_of_each_stage_runs_in_float64(tmp_path, monkeypatch, stage, hp):
    opened, seen = [], []

    def open_in_float64(out, spec, resume, rank, world):
        pipe = CounterfactualPipeline.from_preset(spec.preset, seed=spec.seed).to(dtype=torch.float64)
        pipe.config["sampling"]["steps"] = 2  # the editor's pool: the generator's inversion and sampling
        weights = {
            name: {k: t.clone() for k, t in pipe.components[name].state_dict().items()} for name in TRAINED[stage]
        }
        opened.append((pipe, weights))
        _float64_only(pipe, seen)
        return pipe

    monkeypatch.setattr(train_module, "open_pipeline", open_in_float64)
    monkeypatch.setattr("training.loop.plot_curves", lambda *a: None)  # seconds of matplotlib, no tensors
    if stage == "stage2":
        # The references a stage leaves (centroids of 10 renders per label, the OOD statistics) run
        # in float64 too, once here, with 2 renders per label to keep it short.
        real_centroids = train_module.compute_centroids
        monkeypatch.setattr(train_module, "compute_centroids", lambda pipe, m: real_centroids(pipe, m=2))
    else:
        monkeypatch.setattr(train_module, "refresh_references", lambda pipe, data: None)
    report = train(stage, "tiny", "phantom:8", tmp_path / "run", steps=1, batch_size=4, hp=hp, device="cpu")

    ((pipe, before),) = opened
    assert seen, "no network ran"
    assert report[stage]["final"] and all(math.isfinite(v) for v in report[stage]["final"].values())
    for name, weights in before.items():
        after = pipe.components[name].state_dict()
        assert any(not torch.equal(weights[k], after[k]) for k in weights), f"{stage} left {name} as it was"
    if stage == "stage2":
        assert len(pipe.centroids) == 14 and all(c.dtype == torch.float64 for c in pipe.centroids.values())
    assert CounterfactualPipeline.from_pretrained(tmp_path / "run" / "checkpoint").device == torch.device("cpu")


@pytest.mark.slow
def test_bf16_autocast_trains_on_the_cpu(tmp_path, monkeypatch):
    ran_in = set()
    real_open = train_module.open_pipeline

    def open_and_watch(*args):
        pipe = real_open(*args)
        for m in pipe.vae.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.register_forward_hook(lambda m, args, out: ran_in.add(out.dtype))
        return pipe

    monkeypatch.setattr(train_module, "open_pipeline", open_and_watch)
    monkeypatch.setattr(train_module, "refresh_references", lambda pipe, data: None)
    monkeypatch.setattr("training.loop.plot_curves", lambda *a: None)
    report = train(
        "stage1", "tiny", "phantom:8", tmp_path / "run", steps=1, batch_size=4, hp=Hyper(swap_every=1), precision="bf16"
    )
    assert ran_in == {torch.bfloat16}  # the convolutions ran in bf16; the weights stay fp32
    assert all(math.isfinite(v) for v in report["stage1"]["final"].values())
    pipe = CounterfactualPipeline.from_pretrained(tmp_path / "run" / "checkpoint")
    assert pipe.dtype == torch.float32


def test_a_device_or_precision_the_machine_lacks_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    args = dict(stage="stage1", preset="tiny", data="phantom:8", out=tmp_path / "r", steps=1, batch_size=4)
    with pytest.raises(DeviceError, match="no usable CUDA GPU"):
        train(**args, device="cuda")
    with pytest.raises(DeviceError, match="fp16 needs a CUDA device"):
        train(**args, precision="fp16")
    with pytest.raises(DeviceError, match="device must be"):
        train(**args, device="gpu")
    assert not (tmp_path / "r").exists()
    # On the command line: the reason, exit status 2.
    cmd = ["train", "stage1", "--preset", "tiny", "--data", "phantom:8", "--out", str(tmp_path / "r"), "--device"]
    with pytest.raises(SystemExit) as exc:
        main([*cmd, "cuda"])
    assert exc.value.code == 2 and "no usable CUDA GPU" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    # fp16 on a GPU would need loss scaling, which training does not do.
    with pytest.raises(DeviceError, match="GradScaler"):
        training_precision("fp16", torch.device("cuda"))


def test_each_rank_under_torchrun_trains_on_its_own_gpu(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert rank_device("auto") == torch.device("cpu")  # gloo
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert rank_device("auto") == rank_device("cuda") == torch.device("cuda", 1)  # NCCL, one GPU per rank
    assert rank_device("cuda:0") == torch.device("cuda", 0)  # an index given is kept
    assert rank_device("cpu") == torch.device("cpu")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert rank_device("auto").type == "cuda"


def test_resumed_state_goes_to_the_modules_device_and_dtype(tmp_path):
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters())
    net(torch.ones(1, 3)).sum().backward()
    opt.step()
    save_state(tmp_path, {"net": net}, {"net": opt}, {"step": 1})  # saved from float32
    again = torch.nn.Linear(3, 2).to(torch.float64)
    opt2 = torch.optim.AdamW(again.parameters())
    load_state(tmp_path, {"net": again}, {"net": opt2})
    assert torch.equal(again.weight, net.weight.detach().double())
    moments = [v for st in opt2.state.values() for k, v in st.items() if k != "step"]
    assert moments and all(v.dtype == torch.float64 and v.device == again.weight.device for v in moments)
