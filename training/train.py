"""`whatif train stage0|stage1|stage2|all`: build the data, check everything, run the stages, save the checkpoint."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from model.pipeline import CounterfactualPipeline
from model.presets import get_preset

from .centroids import compute_centroids
from .loop import RunSpec, TrainingError, distributed, open_run
from .options import STAGES, Hyper
from .stages import classifier_stage, stage0, stage1, stage2

EVAL_CLASSIFIER_SEED_OFFSET = 7919  # the classifier's data: a master seed no other stage uses


def make_dataset(spec: str, size: int, seed_offset: int = 0):
    """`phantom:N[:SEED]` (rendered on the fly), a `whatif phantom generate` directory, or a real
    layout: `mimic:ROOT` (MIMIC-CXR-JPG; reports under ROOT), `chexpert:ROOT`, `iu-xray:IMAGES`."""
    from .datasets import real
    from .datasets.phantom import PhantomDataset, PhantomDirDataset

    readers = {"mimic": real.mimic_cxr_jpg, "chexpert": real.chexpert, "iu-xray": real.iu_xray}
    kind, _, where = spec.partition(":")
    if kind in readers:
        if not Path(where).exists():
            raise TrainingError(f"--data {spec}: {where} does not exist")
        try:
            return readers[kind](where, size)
        except (FileNotFoundError, ValueError) as exc:
            raise TrainingError(f"--data {spec}: {exc}") from None

    if spec.startswith("phantom:"):
        n, seed = _phantom_spec(spec)
        return PhantomDataset(n, size, seed + seed_offset)
    path = Path(spec)
    if not path.exists():
        raise TrainingError(f"--data {spec}: no such file or directory (use phantom:N or a generated phantom directory)")
    try:
        return PhantomDirDataset(path, size)
    except (FileNotFoundError, ValueError) as exc:
        raise TrainingError(f"--data {spec}: {exc}") from None


def _phantom_spec(spec: str) -> tuple[int, int]:
    """`phantom:N[:SEED]` -> (N, SEED)."""
    parts = spec.split(":")
    try:
        n = int(parts[1])
        seed = int(parts[2]) if len(parts) > 2 else 0
    except (IndexError, ValueError):
        raise TrainingError(f"--data {spec!r}: expected phantom:N or phantom:N:SEED") from None
    if n < 1:
        raise TrainingError(f"--data {spec!r}: the dataset is empty")
    return n, seed


def classifier_data(spec: str, size: int, dataset):
    """The evaluation classifier's own data: class-balanced phantoms of a seed no other stage uses
    (for phantom runs), else `dataset`, the run's data."""
    if not spec.startswith("phantom:"):
        return dataset
    from .datasets.balanced import BalancedPhantomDataset

    n, seed = _phantom_spec(spec)
    return BalancedPhantomDataset(n, size, seed + EVAL_CLASSIFIER_SEED_OFFSET)


def ood_statistics(pipe, data, n: int = 128) -> dict:
    """Reconstruction MSE of training images: the reference for the input's out-of-distribution score."""
    errs = []
    with torch.no_grad():
        for i in range(min(n, len(data))):
            x = data[i]["image"][None]
            errs.append(float(((pipe.vae.decode(pipe.transformer(pipe.vae.encode(x).mean)) - x) ** 2).mean()))
    t = torch.tensor(errs)
    return {"recon_mse_mean": float(t.mean()), "recon_mse_std": float(t.std().clamp_min(1e-6))}


def train(stage: str, preset: str, data: str, out: str | Path, steps: int, batch_size: int, resume: bool = False, seed: int = 0, hp: Hyper | None = None) -> dict:
    if stage not in (*STAGES, "all"):
        raise TrainingError(f"unknown stage {stage!r}; use {', '.join(STAGES)} or all")
    if steps < 1 or batch_size < 2:
        raise TrainingError("--steps must be at least 1 and --batch-size at least 2 (contrastive losses need pairs)")
    hp = hp or Hyper()
    problem = hp.problem(stage)
    if problem:
        raise TrainingError(problem)
    p = get_preset(preset)
    dataset = make_dataset(data, p.resolution)
    if len(dataset) < batch_size:
        raise TrainingError(f"--data {data}: {len(dataset)} images, fewer than one batch of {batch_size}")
    if hp.paired_weight > 0 and stage in ("stage1", "all") and not hasattr(dataset, "counterfactual_view"):
        raise TrainingError(f"--paired-weight needs pixel-aligned true counterfactuals, which only phantom:N data renders; {data} has none")
    out = Path(out)
    torch.manual_seed(seed)
    rank, world = distributed()
    # Rank 0 checks and claims the run directory; the others then build the same starting
    # pipeline (same checkpoint, or the same seeded initialisation).
    if rank == 0:
        pipe = open_run(out, RunSpec(preset, data, seed), resume)
    if world > 1:
        torch.distributed.barrier()
    if rank != 0:
        ckpt = out / "checkpoint"
        pipe = CounterfactualPipeline.from_pretrained(ckpt) if (ckpt / "config.json").is_file() else CounterfactualPipeline.from_preset(preset, seed=seed)
    todo = STAGES if stage == "all" else (stage,)
    report = {}
    t0 = time.perf_counter()
    for name in todo:
        if name == "stage0":
            eval_data = make_dataset(data, p.resolution, EVAL_CLASSIFIER_SEED_OFFSET) if data.startswith("phantom:") else dataset
            report[name] = stage0(pipe, dataset, eval_data, out, steps, batch_size, hp, resume, seed, rank, world)
        elif name == "stage1":
            report[name] = stage1(pipe, dataset, out, steps, batch_size, hp, resume, seed, rank, world)
        elif name == "stage2":
            report[name] = stage2(pipe, dataset, out, steps, batch_size, hp, resume, seed, rank, world)
        else:
            report[name] = classifier_stage(pipe, classifier_data(data, p.resolution, dataset), out, steps, batch_size, hp, resume, seed, rank, world)
        if rank == 0:
            pipe.centroids = compute_centroids(pipe, m=10)
            pipe.config["ood"] = ood_statistics(pipe, dataset)
            history = pipe.config.setdefault("training", {}).setdefault("stages", {})
            # Each invocation of the stage (a resumed run may change the step target or stage 1's KL weight).
            prev = history.get(name, {})
            # Checkpoints from before runs were recorded per sitting hold one sitting's summary.
            first = [{"to_step": prev["steps"], "batch_size": prev["batch_size"]}] if "steps" in prev else []
            runs = (prev.get("runs") or first) if resume else []
            # Sittings are numbered across stages: the order matters (stage 1's L_PC reads E_CXR, so a
            # stage-0 sitting after stage 1 is not the same run as one before it).
            done = [r.get("sitting", 0) for st in history.values() for r in st.get("runs", [])]
            run = {"to_step": steps, "batch_size": batch_size, **hp.record(name), "sitting": max(done, default=0) + 1}
            runs = runs + [run]
            seconds = report[name]["seconds"]
            if resume and not report[name].get("earlier_seconds_counted", True):
                seconds += float(prev.get("seconds", 0.0))  # the checkpoint's history has the earlier sittings' time
            # A network frozen in this sitting keeps the last loss it trained to.
            final = {**(prev.get("final", {}) if resume else {}), **report[name]["final"]}
            history[name] = {"steps": steps, "batch_size": batch_size, "seconds": round(seconds, 1), "final": final, "runs": runs}
            pipe.config["training"].update({"state": "trained on phantoms" if data.startswith("phantom") else "trained", "data": data, "seed": seed})
            pipe.save_pretrained(out / "checkpoint")
    if rank == 0:
        (out / "report.json").write_text(json.dumps({k: {**v, "final": v["final"]} for k, v in report.items()}, indent=2) + "\n")
    report["seconds"] = time.perf_counter() - t0
    return report
