"""GPU speed of the paper-256 preset (issue 28, point 4): inference and one training step per stage.

    .venv/bin/python benchmarks/gpu.py --out gpu.json                           # on a GPU machine
    .venv/bin/python benchmarks/gpu.py --device cpu --preset tiny --quick       # checks this script, ~1 min

Untrained weights of the preset (`CounterfactualPipeline.from_preset`): a step costs the same
whatever the weights hold. Measured, never asserted:

- inference, with and without seed optimisation, at batch 1, 4 and 16, in each of `--precisions`
  (fp32; bf16 autocast, `model.device.autocast`). Batch B is B jobs (B images, each its own target
  and seed) run as one `CounterfactualPipeline.batch`: its inversions, Algorithm 2 and DDIM once
  for all jobs, what a worker batching jobs runs (issue 28, point 3). Seed optimisation runs with
  its early stop off, all `max_iters` iterations
  (the worst case): an untrained model's L_P says nothing about when a trained one would stop.
  Also `pipe(...)` end to end at batch 1: the issue's target, one seed-optimised counterfactual
  in at most 10 s on an A100/H100-class GPU.
- one training step of each stage (`training.stages`, `training.editor_stage`) at the largest
  batch of `--train-batches` that fits in memory (tried largest first; on the CPU the first one
  is used), under `auto` precision (bf16 autocast on CUDA, fp32 on the CPU). The stage's own step
  function is timed (its `run_loop` is replaced by a timing loop, so nothing is saved); the
  phantom batches are rendered once in the warm-up and cached, so a step times the model, not
  the renderer.

Warm-up runs are excluded; CUDA is synchronised before each clock read. Peak memory is
`torch.cuda.max_memory_allocated` over the timed runs on a GPU, the process's peak RSS (VmHWM,
reset before each row where Linux allows) on the CPU. Prints one Markdown table; `--out` writes
the rows and the machine as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np
import torch

from model.device import DeviceError, autocast, resolve_device, resolve_precision
from model.pipeline import CounterfactualPipeline, Request
from training import editor_stage as editor_module
from training import stages as stages_module
from training.centroids import compute_centroids
from training.options import STAGES, Hyper
from training.phantom.renderer import render

TARGETS = ["moderate left pleural effusion", "small right pneumothorax", "moderate cardiomegaly"]


# --- clocks and memory ------------------------------------------------------------------------
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        with contextlib.suppress(OSError):  # "5" resets VmHWM (Linux >= 4.0); elsewhere the peak is the process's
            Path("/proc/self/clear_refs").write_text("5")


def peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def timed(fn, device: torch.device, warmup: int, repeats: int) -> dict:
    """Median seconds of `repeats` calls of `fn` after `warmup` untimed ones, and the peak memory."""
    for _ in range(warmup):
        fn()
    sync(device)
    reset_peak(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return {"seconds": statistics.median(times), "all_seconds": times, "peak_bytes": peak_bytes(device)}


# --- inference --------------------------------------------------------------------------------
def run_batch(pipe: CounterfactualPipeline, images: list[np.ndarray], seed_opt, optimize: bool, seed: int = 0) -> None:
    """B jobs as one batch (`CounterfactualPipeline.batch`), each with its own image, target and seed."""
    requests = [
        Request(im, TARGETS[i % len(TARGETS)], seed=seed + i, optimize_seed=optimize) for i, im in enumerate(images)
    ]
    failed = [out for out in pipe.batch(requests, seed_opt=seed_opt) if isinstance(out, Exception)]
    if failed:
        raise failed[0]


def bench_inference(pipe, device, precisions, batches, warmup, repeats) -> list[dict]:
    images = [render(4_000_000 + i, [], 0, pipe.resolution).image for i in range(max(batches))]
    seed_opt = dataclasses.replace(pipe.seed_optimization, patience=pipe.seed_optimization.max_iters + 1)
    rows = []

    def measure(part: str, precision: str, batch: int, fn) -> None:
        row = {"part": part, "precision": precision, "batch": batch}
        try:
            with autocast(device, precision):
                row.update(timed(fn, device, warmup, repeats))
        except torch.cuda.OutOfMemoryError:
            row["error"] = "out of memory"
        finally:
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        rows.append(row)
        print_progress(row)

    for precision in precisions:
        for optimize in (False, True):
            label = "with seed optimisation" if optimize else "without seed optimisation"
            measure(
                f"inference, `pipe(...)` end to end, {label}",
                precision,
                1,
                lambda: pipe(images[0], TARGETS[0], seed=0, optimize_seed=optimize, seed_opt=seed_opt),
            )
            for b in batches:
                measure(
                    f"inference, batch of jobs, {label}",
                    precision,
                    b,
                    lambda b=b: run_batch(pipe, images[:b], seed_opt, optimize),
                )
    return rows


# --- training ---------------------------------------------------------------------------------
class Cached(torch.utils.data.Dataset):
    """The first `n` items of `data`, rendered once: a step then times the model, not the renderer."""

    def __init__(self, data, n: int):
        self.data, self.n, self._items, self._views = data, n, {}, {}

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        if i not in self._items:
            self._items[i] = self.data[i]
        return self._items[i]

    def other_view(self, i: int) -> torch.Tensor:  # stage 0's identity positives
        if i not in self._views:
            self._views[i] = self.data.other_view(i)
        return self._views[i]

    def __getattr__(self, name):  # the rest (counterfactual_batch, text, request, seed, size) as the data has it
        if name == "data":
            raise AttributeError(name)
        return getattr(self.data, name)


def stage_runner(stage: str, res: int, n: int):
    """`run(pipe, out, steps, batch_size)` for `stage`, on cached phantom data of `n` items, as
    `training.train.run_stage` builds it."""
    from training import train as t

    spec = f"phantom:{n}"
    hp = Hyper()
    if stage == "stage0":
        data, extra = (
            Cached(t.make_dataset(spec, res), n),
            Cached(t.make_dataset(spec, res, t.EVAL_CLASSIFIER_SEED_OFFSET), n),
        )
        return lambda pipe, out, steps, bs: stages_module.stage0(pipe, data, extra, out, steps, bs, hp, False, 0)
    if stage in ("stage1", "stage2"):
        data = Cached(t.make_dataset(spec, res), n)
        fn = getattr(stages_module, stage)
        return lambda pipe, out, steps, bs: fn(pipe, data, out, steps, bs, hp, False, 0)
    if stage == "classifier":
        data = Cached(t.classifier_data(spec, res, None), n)
        return lambda pipe, out, steps, bs: stages_module.classifier_stage(pipe, data, out, steps, bs, hp, False, 0)
    if stage == "segmenter":
        data = Cached(t.segmenter_data(spec, res), n)
        return lambda pipe, out, steps, bs: stages_module.segmenter_stage(pipe, data, out, steps, bs, hp, False, 0)
    data = Cached(t.editor_data(spec, res), n)  # the editor draws its batches from a pool of n pairs
    return lambda pipe, out, steps, bs: editor_module.editor_stage(pipe, data, out, steps, bs, hp, False, 0)


def bench_stage(pipe, stage: str, batch: int, device, precision: str, warmup: int, repeats: int) -> dict:
    """One training step of `stage` at `batch`: the stage's own step function, timed."""
    result: dict = {}

    def timing_loop(out, name, steps, modules, optimizers, step_fn, resume, save_every=200, rank=0):
        result.update(timed(_steps(step_fn), device, warmup, repeats))
        return {"final": {}, "seconds": 0.0, "start_step": 0, "earlier_seconds_counted": True}

    run = stage_runner(stage, pipe.resolution, min(batch, 64) if stage == "editor" else batch)
    with (
        mock.patch.object(stages_module, "run_loop", timing_loop),
        mock.patch.object(editor_module, "run_loop", timing_loop),
        tempfile.TemporaryDirectory() as out,
        autocast(device, precision),
    ):
        run(pipe, Path(out), warmup + repeats, batch)
    return result


def _steps(step_fn):
    counter = iter(range(10**9))
    return lambda: step_fn(next(counter))


def bench_training(pipe, device, precision, stages, train_batches, warmup, repeats) -> list[dict]:
    rows = []
    for stage in stages:
        tried = []
        for batch in train_batches:
            try:
                r = bench_stage(pipe, stage, batch, device, precision, warmup, repeats)
            except torch.cuda.OutOfMemoryError:
                tried.append(batch)
                r = None
            except Exception as exc:  # a stage that does not run on this device yet: say so, go on
                error = f"{type(exc).__name__}: {str(exc)[:200]}"
                rows.append({"part": f"training step, {stage}", "precision": precision, "batch": batch, "error": error})
                print_progress(rows[-1])
                break
            finally:
                for p in (q for m in pipe.components.values() for q in m.parameters()):
                    p.grad = None
                gc.collect()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            if r is not None:
                note = f"out of memory at {', '.join(map(str, tried))}" if tried else ""
                if device.type == "cuda" and not tried and batch == train_batches[0]:
                    note = "the largest batch tried"
                rows.append(
                    {"part": f"training step, {stage}", "precision": precision, "batch": batch, "note": note, **r}
                )
                print_progress(rows[-1])
                break
        else:
            error = f"out of memory at every batch tried ({', '.join(map(str, tried))})"
            rows.append({"part": f"training step, {stage}", "precision": precision, "batch": None, "error": error})
    for m in pipe.components.values():  # the stages leave their networks frozen; a failed one may not
        m.eval().requires_grad_(False)
    return rows


# --- report -----------------------------------------------------------------------------------
def print_progress(row: dict) -> None:
    what = f"{row['part']}, {row['precision']}, batch {row['batch']}"
    tail = row["error"] if "error" in row else f"{row['seconds']:.3f} s"
    print(f"  {what}: {tail}", file=sys.stderr, flush=True)


def table(rows: list[dict], device: torch.device) -> str:
    memory = "peak GPU memory" if device.type == "cuda" else "peak RSS"
    out = [
        f"| what | precision | batch | seconds | per image | {memory} | note |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['part']} | {r['precision']} | {r['batch'] or ''} | | | | {r['error']} |")
            continue
        per = r["seconds"] / r["batch"]
        mem = f"{r['peak_bytes'] / 2**30:.2f} GiB"
        cells = [r["part"], r["precision"], r["batch"], f"{r['seconds']:.3f}", f"{per:.3f}", mem, r.get("note", "")]
        out.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(out)


def machine(device: torch.device) -> dict:
    info = {"torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        info.update(gpu=torch.cuda.get_device_name(device), cuda=torch.version.cuda)
    else:
        info.update(cpu=platform.processor() or platform.machine())
    return info


NO_GPU_HINT = (
    ". This benchmark is for a machine with a GPU; `--device cpu --preset tiny --quick` checks the script on a CPU"
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda, cuda:<index> or cpu (default cuda)")
    ap.add_argument("--preset", default="paper-256")
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 4, 16], help="jobs per inference batch")
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    ap.add_argument(
        "--train-batches",
        nargs="+",
        type=int,
        help="training batches to try, largest first (default: 256 ... 1 on a GPU, 4 on the CPU)",
    )
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="one timed run each; on the CPU training batch 2")
    ap.add_argument("--no-training", action="store_true")
    ap.add_argument("--out", help="write the rows and the machine as JSON")
    args = ap.parse_args()
    try:
        device = resolve_device(args.device)
        precisions = [resolve_precision(p, device) for p in args.precisions]
        train_precision = resolve_precision("auto", device)
    except DeviceError as exc:
        hint = "" if args.device.strip().lower() == "cpu" else NO_GPU_HINT
        sys.exit(f"benchmarks/gpu.py: {exc}{hint}")
    if args.quick:
        args.repeats = 1
    train_batches = args.train_batches or (
        [256, 128, 64, 32, 16, 8, 4, 2, 1] if device.type == "cuda" else [2 if args.quick else 4]
    )
    train_batches = sorted(set(train_batches), reverse=True)

    t0 = time.perf_counter()
    torch.manual_seed(0)
    pipe = CounterfactualPipeline.from_preset(args.preset)
    pipe.centroids = compute_centroids(pipe, m=2)  # on the CPU: the values do not change a step's cost
    pipe.to(device)
    print(f"{args.preset} on {device} ({machine(device)})", file=sys.stderr)
    rows = bench_inference(pipe, device, precisions, args.batches, args.warmup, args.repeats)
    if not args.no_training:
        rows += bench_training(pipe, device, train_precision, args.stages, train_batches, args.warmup, args.repeats)
    seconds = time.perf_counter() - t0

    dry = "" if device.type == "cuda" else " (CPU dry run of the GPU benchmark: not GPU numbers)"
    command = " ".join(["benchmarks/gpu.py", *sys.argv[1:]])
    print(f"\n`{command}`: preset {args.preset}, {device}{dry},")
    print(f"median of {args.repeats} after {args.warmup} warm-up, {seconds:.0f} s in all\n")
    print(table(rows, device))
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                {
                    "preset": args.preset,
                    "device": str(device),
                    "machine": machine(device),
                    "args": vars(args),
                    "rows": rows,
                },
                indent=2,
            )
            + "\n"
        )


if __name__ == "__main__":
    main()
