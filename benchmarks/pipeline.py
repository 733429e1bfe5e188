"""Counterfactual pipeline speed on this machine: per stage, end to end, and per seed-optimisation variant.

Targets (issue "Model library"): for the CPU default preset on the 2-core machine, a
seed-optimised counterfactual in at most 20 s median, and time with optimisation over time
without at most 4. Measured here, never asserted in tests:

    .venv/bin/python benchmarks/pipeline.py --presets tiny phantom-128 --repeats 3

Uses an untrained checkpoint of each preset (timings do not depend on the weights; the final
L_P of an untrained model says how well each variant optimises, not image quality). Prints a
Markdown table; `--json FILE` writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from model.pipeline import CounterfactualPipeline
from model.seed_optimization import SeedOptConfig
from training.centroids import compute_centroids
from training.phantom.renderer import render

# SeedOptConfig() is the recommended setting (x0, normalized steps, the findings-head guard); the
# others change one thing from it, and "Adam, lr 0.1, no guard" is Algorithm 2 as the paper runs it.
VARIANTS = {
    "recommended (x0, normalized, guard)": SeedOptConfig(),
    "x0 + 4 seeds": SeedOptConfig(batch_seeds=4),
    "x0, no norm reg.": SeedOptConfig(norm_weight=0.0),
    "Adam, lr 0.1, no guard": SeedOptConfig(optimizer="adam", lr=0.1, guard=False),
    "shortcut (4 steps)": SeedOptConfig(method="shortcut", shortcut_steps=4),
    "full (4 steps)": SeedOptConfig(method="full", shortcut_steps=4),
}
TARGETS = ["moderate left pleural effusion", "small right pneumothorax", "moderate cardiomegaly"]


def bench_preset(name: str, repeats: int) -> dict:
    torch.manual_seed(0)
    pipe = CounterfactualPipeline.from_preset(name)
    pipe.centroids = compute_centroids(pipe, m=10)
    images = [render(2_000_000 + i, [], 0, pipe.resolution).image for i in range(repeats)]
    sampling, _ = pipe.check_inputs()
    steps = sampling.steps
    out: dict = {"preset": name, "steps": steps, "stages": {}, "end_to_end": {}, "variants": {}}

    def median_time(fn, n=repeats):
        ts = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return statistics.median(ts)

    with torch.no_grad():
        out["stages"]["encode"] = median_time(lambda: pipe.encode(images[0]))
        encoded = pipe.encode(images[0])
        request = pipe.condition("moderate edema")
        z_T = pipe.starting_seed(encoded, request, sampling, seed=0)
        out["stages"][f"sampling ({steps} DDIM steps)"] = median_time(lambda: pipe.sample(z_T, request, sampling))
        z_path = pipe.sample(z_T, request, sampling)
        out["stages"]["compose (T + D)"] = median_time(
            lambda: pipe.compose(encoded.z_id, z_path, encoded.x, encoded.recon, sampling.detail)
        )
    for method, k in (("x0", 1), ("shortcut", 4), ("full", 4)):
        first_t = pipe.diffusion.timesteps(steps)[0]
        render_fn = pipe.renderer(encoded.z_id, request.cond, request.uncond, sampling.guidance, first_t)

        def one_iter():
            zz = z_T.clone().requires_grad_(True)
            pipe.contrastive.encode_image(render_fn(zz, method, k)).sum().backward()

        out["stages"][f"one optimisation iteration ({method})"] = median_time(one_iter)

    for label, opt in (("without seed optimisation", False), ("with seed optimisation (default)", True)):
        ts = []
        for i in range(repeats):
            t = time.perf_counter()
            pipe(images[i], TARGETS[i % len(TARGETS)], seed=i, optimize_seed=opt)
            ts.append(time.perf_counter() - t)
        out["end_to_end"][label] = statistics.median(ts)

    for vname, cfg in VARIANTS.items():
        ts, lps, iters = [], [], []
        for i in range(repeats):
            t = time.perf_counter()
            r = pipe(images[i], TARGETS[i % len(TARGETS)], seed=i, seed_opt=cfg)
            ts.append(time.perf_counter() - t)
            lps.append(r.lp_history[-1] / r.lp_history[0])
            iters.append(len(r.lp_history) - 1)
        out["variants"][vname] = {
            "seconds": statistics.median(ts),
            "final_lp_ratio": statistics.median(lps),
            "iterations": statistics.median(iters),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", nargs="+", default=["tiny", "phantom-128"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    results = [bench_preset(p, args.repeats) for p in args.presets]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats}\n")
    for r in results:
        print(f"### {r['preset']}\n\n| stage | seconds |\n| --- | ---: |")
        for k, v in r["stages"].items():
            print(f"| {k} | {v:.3f} |")
        for k, v in r["end_to_end"].items():
            print(f"| end to end, {k} | {v:.2f} |")
        ratio = r["end_to_end"]["with seed optimisation (default)"] / r["end_to_end"]["without seed optimisation"]
        print(f"| ratio with / without | {ratio:.2f} |\n")
        print(
            "| seed-optimisation variant | end to end s | final L_P "
            "/ initial | iterations |\n| --- | ---: | ---: | ---: |"
        )
        for k, v in r["variants"].items():
            print(f"| {k} | {v['seconds']:.2f} | {v['final_lp_ratio']:.3f} | {v['iterations']:.0f} |")
        print()
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
