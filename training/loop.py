"""What every training stage shares: the run directory, data, resume, progress, metrics and curves.

Run directory (`--out DIR`):
    run.json             preset, data spec, seed: a resume with other values is refused
    checkpoint/          the pipeline as trained so far (a loadable whatif-cxr checkpoint)
    state/<stage>/       resumable state of the stage in progress (safetensors + JSON, no pickle)
    metrics/<stage>.jsonl, curves/<stage>.png
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from tqdm import tqdm

from model.device import DeviceError, device_name, resolve_device, resolve_precision
from model.pipeline import CounterfactualPipeline

from .state import load_state, save_state


class TrainingError(ValueError):
    """A problem found before training starts: bad data path, empty data, preset mismatch."""


@dataclasses.dataclass
class RunSpec:
    preset: str
    data: str
    seed: int = 0


def rank_device(name: str = "auto") -> torch.device:
    """The device this process trains on: `auto` is CUDA when present, else the CPU; under torchrun
    `auto` and `cuda` are `cuda:<LOCAL_RANK>`, one GPU per rank. `DeviceError` when unavailable."""
    name = device_name(name)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and name in ("auto", "cuda") and torch.cuda.is_available():
        name = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return resolve_device(name)


def training_precision(name: str, device: torch.device) -> str:
    """`auto`, `fp32` or `bf16` -> what the forward passes run in on `device` (`auto`: bf16 on a GPU
    that has it, fp32 elsewhere). fp16 is refused: its gradients underflow without loss scaling."""
    precision = resolve_precision(name, device)
    if precision == "fp16":
        raise DeviceError(
            "precision fp16 needs loss scaling (a GradScaler), which whatif train does not do; "
            "use bf16 (what auto picks on a GPU that has it) or fp32"
        )
    return precision


def distributed(device: torch.device) -> tuple[int, int]:
    """(rank, world size); under torchrun starts the process group, NCCL when the ranks compute on
    GPUs (`device` from `rank_device`) and gloo on CPUs."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return (torch.distributed.get_rank() if world > 1 else 0), world


def open_run(out: Path, spec: RunSpec, resume: bool) -> CounterfactualPipeline:
    """Check the run directory and return the pipeline to train (from checkpoint/ when resuming)."""
    run_json = out / "run.json"
    if run_json.exists():
        old = json.loads(run_json.read_text())
        if not resume:
            raise TrainingError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
        if old["preset"] != spec.preset:
            raise TrainingError(f"--resume with preset {spec.preset!r}, but {out} was trained with {old['preset']!r}")
        if old["data"] != spec.data:
            raise TrainingError(f"--resume with data {spec.data!r}, but {out} was trained on {old['data']!r}")
    elif resume:
        raise TrainingError(f"--resume: {out} holds no run to resume")
    ckpt = out / "checkpoint"
    if (ckpt / "config.json").is_file():
        # A checkpoint put there by hand (a copy of shipped weights, say) must be of the preset asked for.
        made_with = json.loads((ckpt / "config.json").read_text()).get("preset")
        if made_with != spec.preset:
            raise TrainingError(f"--preset {spec.preset}, but {ckpt} was made with preset {made_with!r}; pass that")
    out.mkdir(parents=True, exist_ok=True)
    run_json.write_text(json.dumps(dataclasses.asdict(spec), indent=2) + "\n")
    if (ckpt / "config.json").is_file():
        add_missing_components(ckpt, spec)
        return CounterfactualPipeline.from_pretrained(ckpt)
    return CounterfactualPipeline.from_preset(spec.preset, seed=spec.seed)


def add_missing_components(checkpoint: Path, spec: RunSpec) -> None:
    """Give a checkpoint made before one of the networks existed (the anatomy segmenter, say) that
    network, freshly initialised from the preset (seeded by the run's seed), saved into the run's
    checkpoint with a note: the other networks are kept, and the new one's stage can train it."""
    from model.pipeline import COMPONENTS
    from model.presets import get_preset

    path = checkpoint / "config.json"
    config = json.loads(path.read_text())
    missing = [name for name in COMPONENTS if name not in config.get("components", {})]
    if not missing:
        return
    preset = get_preset(spec.preset)
    torch.manual_seed(spec.seed)
    for name in missing:
        COMPONENTS[name](preset.components[name]).save_pretrained(checkpoint / name)
        config["components"][name] = name
        print(
            f"note: {checkpoint} had no {name}; added one freshly initialised from preset {preset.name!r} "
            f"(untrained until `whatif train` trains it)"
        )
    path.write_text(json.dumps(config, indent=2) + "\n")


def to_device(value, device: torch.device | None = None, dtype: torch.dtype | None = None):
    """A batch (a tensor, or a dict of them and of other values) on `device`, its floating-point
    tensors in `dtype` (the pipeline's): data is made on the CPU in float32."""
    if isinstance(value, dict):
        return {k: to_device(v, device, dtype) for k, v in value.items()}
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=dtype if value.is_floating_point() else None)
    return value


def batches(
    dataset,
    batch_size: int,
    seed: int,
    rank: int = 0,
    world: int = 1,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> Iterator[dict]:
    """Endless shuffled batches, each image once per epoch, a different shard per rank (DDP), on
    `device` in `dtype` (the pipeline's; None: as the data makes them)."""
    from .datasets.phantom import collate

    epoch = 0
    while True:
        g = torch.Generator().manual_seed(seed * 1000 + epoch)
        order = torch.randperm(len(dataset), generator=g).tolist()[rank::world]
        for i in range(0, len(order) - batch_size + 1, batch_size):
            idx = order[i : i + batch_size]
            yield {**to_device(collate([dataset[j] for j in idx]), device, dtype), "index": idx}
        epoch += 1


def run_loop(
    out: Path,
    stage: str,
    steps: int,
    modules: dict[str, torch.nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    step_fn: Callable[[int], dict[str, float]],
    resume: bool,
    save_every: int = 200,
    rank: int = 0,
) -> dict:
    """Run `step_fn(step)` from the saved step (when resuming) to `steps`, with state saved on the way."""
    state_dir = out / "state" / stage
    start, before, counted = 0, 0.0, True
    if resume and (state_dir / "state.json").is_file():
        meta = load_state(state_dir, modules, optimizers)
        start, before = int(meta["step"]), float(meta.get("seconds", 0.0))  # wall time of earlier runs
        counted = "seconds" in meta  # states saved before wall time was kept do not know it
    metrics_path = out / "metrics" / f"{stage}.jsonl"
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    if rank == 0 and metrics_path.is_file():
        # A run killed between two saves wrote steps past the saved state; they are run again.
        rows = metrics_path.read_text().splitlines()
        kept = [r for r in rows if _step_of(r) is not None and _step_of(r) <= start]
        if len(kept) != len(rows):
            metrics_path.write_text("".join(r + "\n" for r in kept))
    last: dict[str, float] = {}
    t0 = time.perf_counter()
    with (
        open(metrics_path, "a") as mfh,
        tqdm(total=steps, initial=start, desc=stage, unit="step", disable=rank != 0) as bar,
    ):
        for step in range(start, steps):
            last = step_fn(step)
            if rank == 0:
                mfh.write(json.dumps({"step": step + 1, **{k: round(v, 6) for k, v in last.items()}}) + "\n")
                bar.set_postfix({k: f"{v:.4f}" for k, v in list(last.items())[:3]})
                bar.update(1)
                if (step + 1) % save_every == 0 or step + 1 == steps:
                    mfh.flush()
                    seconds = before + time.perf_counter() - t0
                    save_state(
                        state_dir, modules, optimizers, {"step": step + 1, "stage": stage, "seconds": round(seconds, 1)}
                    )
    if rank == 0:
        plot_curves(metrics_path, out / "curves" / f"{stage}.png", stage)
    # Seconds over every run of this stage (resumed runs add up), not just this one.
    return {
        "final": last,
        "seconds": before + time.perf_counter() - t0,
        "start_step": start,
        "earlier_seconds_counted": counted,
    }


def _step_of(row: str) -> int | None:
    """The step of a metrics line; None for a line cut short by a kill."""
    try:
        return int(json.loads(row)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def plot_curves(metrics: Path, png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    if not rows:
        return
    # Every metric any row has, in first-seen order: a sitting with networks frozen (stage 0's
    # --freeze) logs fewer, and the earlier sittings' curves stay on the plot.
    keys = list(dict.fromkeys(k for r in rows for k in r if k != "step"))
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 2.8), squeeze=False)
    for ax, key in zip(axes[0], keys):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=0.8)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        if all(p[1] > 0 for p in pts):
            ax.set_yscale("log")
    fig.suptitle(f"{title} training curves", fontsize=10)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)
