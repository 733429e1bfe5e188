"""`whatif train`: one sitting (a stage, or all four of the generator and its judge) or a recipe of sittings.

A sitting checks the request, builds the data, opens the run, runs each stage and, after each,
records the sitting in the checkpoint's history and saves the checkpoint. A recipe
(`recipes/*.toml`) lists sittings in order; `train_recipe` runs those the run has not done yet.
"""

from __future__ import annotations

import dataclasses
import json
import time
import tomllib
from pathlib import Path

import torch

from model.pipeline import CounterfactualPipeline
from model.presets import get_preset

from .centroids import compute_centroids
from .editor_stage import editor_stage
from .loop import RunSpec, TrainingError, distributed, open_run, rank_device, training_precision
from .options import ALL_STAGES, STAGES, Hyper
from .stages import classifier_stage, segmenter_stage, stage0, stage1, stage2

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
        n, seed = phantom_spec(spec)
        return PhantomDataset(n, size, seed + seed_offset)
    path = Path(spec)
    if not path.exists():
        raise TrainingError(
            f"--data {spec}: no such file or directory (use phantom:N or a generated phantom directory)"
        )
    try:
        return PhantomDirDataset(path, size)
    except (FileNotFoundError, ValueError) as exc:
        raise TrainingError(f"--data {spec}: {exc}") from None


def phantom_spec(spec: str) -> tuple[int, int]:
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

    n, seed = phantom_spec(spec)
    return BalancedPhantomDataset(n, size, seed + EVAL_CLASSIFIER_SEED_OFFSET)


def segmenter_data(spec: str, size: int):
    """The anatomy segmenter's data: the run's phantom cases with their exact anatomy masks."""
    from .datasets.anatomy import AnatomyDataset

    n, seed = phantom_spec(spec)
    return AnatomyDataset(n, size, seed)


def editor_data(spec: str, size: int):
    """The paired editor's data: exact edit pairs of the run's phantom identities."""
    from .datasets.edit_pairs import EditPairDataset

    n, seed = phantom_spec(spec)
    return EditPairDataset(n, size, seed)


def ood_statistics(pipe, data, n: int = 128) -> dict:
    """Reconstruction MSE of training images: the reference for the input's out-of-distribution score."""
    errs = []
    with torch.no_grad():
        for i in range(min(n, len(data))):
            x = pipe.tensor(data[i]["image"][None])
            errs.append(float(((pipe.vae.decode(pipe.transformer(pipe.vae.encode(x).mean)) - x) ** 2).mean()))
    t = torch.tensor(errs)
    return {"recon_mse_mean": float(t.mean()), "recon_mse_std": float(t.std().clamp_min(1e-6))}


def train(
    stage: str,
    preset: str,
    data: str,
    out: str | Path,
    steps: int,
    batch_size: int,
    resume: bool = False,
    seed: int = 0,
    hp: Hyper | None = None,
    recipe: str | None = None,
    device: str = "auto",
    precision: str = "auto",
) -> dict:
    """One sitting: `stage` (or all four of `ALL_STAGES` in order) to `steps` steps, in the run directory `out`.

    `recipe`: the recipe this sitting is one of (`train_recipe`), recorded in the checkpoint.
    `device`: `auto` (CUDA when present; under torchrun `cuda:<LOCAL_RANK>`), `cpu`, `cuda` or
    `cuda:<index>`. `precision`: what the forward passes run in, `auto` (bf16 autocast on a GPU,
    fp32 on the CPU), `fp32` or `bf16`; the weights and the optimiser stay fp32 either way.
    A device or precision this machine cannot honour is a `DeviceError` before anything is read.
    """
    hp = hp or Hyper()
    todo = check_request(stage, steps, batch_size, hp)
    where = rank_device(device)
    precision = training_precision(precision, where)
    resolution = get_preset(preset).resolution
    dataset = build_data(data, resolution, batch_size, hp, todo)
    out = Path(out)
    torch.manual_seed(seed)
    rank, world = distributed(where)
    # Opened on the CPU (a checkpoint is read there) and moved once; saving writes CPU tensors.
    pipe = open_pipeline(out, RunSpec(preset, data, seed), resume, rank, world).to(where)
    report = {}
    t0 = time.perf_counter()
    for name in todo:
        report[name] = run_stage(
            name, pipe, dataset, data, resolution, out, steps, batch_size, hp, resume, seed, rank, world, precision
        )
        if rank == 0:
            if name not in ("segmenter", "editor"):  # the references read E_CXR and the VAE, left alone by these
                refresh_references(pipe, dataset)
            record_sitting(pipe.config, name, report[name], data, seed, steps, batch_size, hp, resume, recipe)
            pipe.save_pretrained(out / "checkpoint")
    if rank == 0:
        (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    report["seconds"] = time.perf_counter() - t0
    return report


def check_request(stage: str, steps: int, batch_size: int, hp: Hyper) -> tuple[str, ...]:
    """The stages to run, after the checks that need no data."""
    if stage not in (*STAGES, "all"):
        raise TrainingError(f"unknown stage {stage!r}; use {', '.join(STAGES)} or all")
    if steps < 1 or batch_size < 2:
        raise TrainingError("--steps must be at least 1 and --batch-size at least 2 (contrastive losses need pairs)")
    problem = hp.problem(stage)
    if problem:
        raise TrainingError(problem)
    return ALL_STAGES if stage == "all" else (stage,)


def build_data(data: str, resolution: int, batch_size: int, hp: Hyper, todo: tuple[str, ...]):
    """The run's dataset, checked against what the sitting asks of it."""
    if {"segmenter", "editor"} & set(todo) and not data.startswith("phantom:"):
        raise TrainingError(
            f"the segmenter and the editor train on the phantom's exact masks and pairs, which {data} has none of; "
            "use --data phantom:N[:SEED]"
        )
    dataset = make_dataset(data, resolution)
    if len(dataset) < batch_size:
        raise TrainingError(f"--data {data}: {len(dataset)} images, fewer than one batch of {batch_size}")
    if hp.paired_weight > 0 and "stage1" in todo and not hasattr(dataset, "counterfactual_view"):
        raise TrainingError(
            "--paired-weight needs pixel-aligned true counterfactuals, "
            f"which only phantom:N data renders; {data} has none"
        )
    return dataset


def open_pipeline(out: Path, spec: RunSpec, resume: bool, rank: int, world: int) -> CounterfactualPipeline:
    """The pipeline to train: the run's checkpoint, or the preset's seeded initialisation.

    Rank 0 checks and claims the run directory; the others then build the same starting pipeline.
    """
    if rank == 0:
        pipe = open_run(out, spec, resume)
    if world > 1:
        torch.distributed.barrier()
    if rank != 0:
        ckpt = out / "checkpoint"
        pipe = (
            CounterfactualPipeline.from_pretrained(ckpt)
            if (ckpt / "config.json").is_file()
            else CounterfactualPipeline.from_preset(spec.preset, seed=spec.seed)
        )
    return pipe


def run_stage(
    name, pipe, dataset, data, resolution, out, steps, batch_size, hp, resume, seed, rank, world, precision="fp32"
) -> dict:
    """Train stage `name` to `steps` steps on the pipeline's device, the forward passes in
    `precision`; its report (final losses, seconds)."""
    args = (out, steps, batch_size, hp, resume, seed, rank, world, precision)
    if name == "stage0":
        eval_data = (
            make_dataset(data, resolution, EVAL_CLASSIFIER_SEED_OFFSET) if data.startswith("phantom:") else dataset
        )
        return stage0(pipe, dataset, eval_data, *args)
    if name == "stage1":
        return stage1(pipe, dataset, *args)
    if name == "stage2":
        return stage2(pipe, dataset, *args)
    if name == "editor":
        return editor_stage(pipe, editor_data(data, resolution), *args)
    if name == "segmenter":
        return segmenter_stage(pipe, segmenter_data(data, resolution), *args)
    return classifier_stage(pipe, classifier_data(data, resolution, dataset), *args)


def record_sitting(
    config: dict,
    name: str,
    report: dict,
    data: str,
    seed: int,
    steps: int,
    batch_size: int,
    hp: Hyper,
    resume: bool,
    recipe: str | None,
) -> None:
    """Add this sitting of stage `name` to the checkpoint's history (config["training"])."""
    training = config.setdefault("training", {})
    history = training.setdefault("stages", {})
    prev = history.get(name, {})
    # Checkpoints from before sittings were recorded one by one hold one sitting's summary.
    first = [{"to_step": prev["steps"], "batch_size": prev["batch_size"]}] if "steps" in prev else []
    runs = (prev.get("runs") or first) if resume else []
    # Sittings are numbered across stages: the order matters (stage 1's L_PC reads E_CXR, so a
    # stage-0 sitting after stage 1 is not the same run as one before it).
    done = [r.get("sitting", 0) for st in history.values() for r in st.get("runs", [])]
    runs = runs + [{"to_step": steps, "batch_size": batch_size, **hp.record(name), "sitting": max(done, default=0) + 1}]
    seconds = report["seconds"]
    if resume and not report.get("earlier_seconds_counted", True):
        seconds += float(prev.get("seconds", 0.0))  # the checkpoint's history has the earlier sittings' time
    # A network frozen in this sitting keeps the last loss it trained to.
    final = {**(prev.get("final", {}) if resume else {}), **report["final"]}
    history[name] = {
        "steps": steps,
        "batch_size": batch_size,
        "seconds": round(seconds, 1),
        "final": final,
        "runs": runs,
    }
    training.update(
        {"state": "trained on phantoms" if data.startswith("phantom") else "trained", "data": data, "seed": seed}
    )
    if recipe:
        training["recipe"] = recipe
    else:  # a sitting of its own: the run is no longer the recipe's
        training.pop("recipe", None)


def refresh_references(pipe, dataset) -> None:
    """The reference centroids (Algorithm 2, lines 2-3) and the OOD statistics, of the networks as
    a stage has left them."""
    pipe.centroids = compute_centroids(pipe, m=10)
    pipe.config["ood"] = ood_statistics(pipe, dataset)


@dataclasses.dataclass
class Sitting:
    """One `whatif train` command of a recipe."""

    stage: str
    steps: int  # the step the stage trains to
    batch_size: int
    hp: Hyper
    why: str = ""

    def record(self) -> dict:
        """As the checkpoint's history records the sitting (less its number)."""
        return {"stage": self.stage, "to_step": self.steps, "batch_size": self.batch_size, **self.hp.record(self.stage)}


@dataclasses.dataclass
class Recipe:
    """A run as data (`recipes/*.toml`): preset, data, seed and the sittings in order, each with
    at most one line of why; `shipped` says where shipped weights differ from a run of it."""

    path: str
    preset: str
    data: str
    seed: int
    sittings: list[Sitting]
    shipped: dict


RECIPE_KEYS = {"preset", "data", "seed", "sitting", "shipped"}
SITTING_KEYS = {"stage", "steps", "batch_size", "why"}


def load_recipe(path: str | Path) -> Recipe:
    try:
        raw = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise TrainingError(f"--recipe {path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise TrainingError(f"--recipe {path}: {exc}") from None
    unknown = sorted(set(raw) - RECIPE_KEYS)
    if unknown or not {"preset", "data", "sitting"} <= set(raw):
        raise TrainingError(
            f"--recipe {path}: takes preset, data, seed, [[sitting]] and [shipped]; got {', '.join(sorted(raw))}"
        )
    sittings = []
    for k, s in enumerate(raw["sitting"], 1):
        where = f"--recipe {path}, sitting {k}: "
        if not {"stage", "steps", "batch_size"} <= set(s) or s["stage"] not in STAGES:
            raise TrainingError(f"{where}needs stage (one of {', '.join(STAGES)}), steps and batch_size")
        if "\n" in s.get("why", ""):
            raise TrainingError(f"{where}why is one line")
        try:
            hp = Hyper.from_options({key: v for key, v in s.items() if key not in SITTING_KEYS}, where)
        except ValueError as exc:
            raise TrainingError(str(exc)) from None
        sittings.append(Sitting(s["stage"], int(s["steps"]), int(s["batch_size"]), hp, s.get("why", "")))
    return Recipe(str(path), raw["preset"], raw["data"], int(raw.get("seed", 0)), sittings, raw.get("shipped", {}))


def recorded_sittings(out: Path) -> list[dict]:
    """The sittings the run's checkpoint records, in the order they ran, as `Sitting.record` has them."""
    config = out / "checkpoint" / "config.json"
    if not config.is_file():
        return []
    stages = json.loads(config.read_text()).get("training", {}).get("stages", {})
    runs = [{"stage": name, **run} for name, st in stages.items() for run in st.get("runs", [])]
    return [{k: v for k, v in run.items() if k != "sitting"} for run in sorted(runs, key=lambda r: r.get("sitting", 0))]


def train_recipe(
    path: str | Path, out: str | Path, data: str | None = None, device: str = "auto", precision: str = "auto"
) -> dict:
    """Run the recipe's sittings in `out`, skipping those its checkpoint records as done: a rerun
    after an interruption continues (the interrupted sitting from its last saved state). `device`
    and `precision` are the machine's, not the recipe's: as `train` takes them, for every sitting."""
    where = rank_device(device)  # a device or precision the machine lacks: refused before any sitting
    training_precision(precision, where)
    recipe = load_recipe(path)
    out = Path(out)
    done = recorded_sittings(out)
    if done != [s.record() for s in recipe.sittings[: len(done)]]:
        raise TrainingError(f"{out} holds sittings other than the first {len(done)} of {path}; choose another --out")
    t0 = time.perf_counter()
    todo = recipe.sittings[len(done) :]
    for k, s in enumerate(todo, len(done) + 1):
        print(f"sitting {k}/{len(recipe.sittings)}: {s.stage} to step {s.steps}" + (f" ({s.why})" if s.why else ""))
        resume = (out / "run.json").is_file()
        train(
            s.stage,
            recipe.preset,
            data or recipe.data,
            out,
            s.steps,
            s.batch_size,
            resume,
            recipe.seed,
            s.hp,
            recipe=str(path),
            device=device,
            precision=precision,
        )
    return {"skipped": len(done), "ran": len(todo), "seconds": time.perf_counter() - t0}
