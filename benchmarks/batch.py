"""Several counterfactuals per forward pass (`CounterfactualPipeline.batch`) against one at a time:
jobs per second for B = 1, 2, 4, 8 on this machine (issue "GPUs for real", point 3).

    .venv/bin/python benchmarks/batch.py --sizes 1 4 --repeats 2

B different phantoms and requests with seed optimisation on (the default), the embedded model
unless --checkpoint. "one at a time" runs the same B requests through `__call__`. Run it on an
otherwise idle machine. Prints a Markdown table; `--json FILE` writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from model.pipeline import CounterfactualPipeline, Request
from training.phantom.renderer import render

TARGETS = [
    "moderate left pleural effusion",
    "small right pneumothorax",
    "mild cardiomegaly",
    "right lower lobe pneumonia",
]


def requests(b: int, size: int) -> list[Request]:
    return [Request(render(100 + k, [], k, size).image, TARGETS[k % len(TARGETS)], seed=k) for k in range(b)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--checkpoint")
    ap.add_argument("--json")
    args = ap.parse_args()
    pipe = CounterfactualPipeline.from_pretrained(args.checkpoint)
    rows = []
    for b in args.sizes:
        reqs = requests(b, pipe.resolution)
        batched, single = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            pipe.batch(reqs)
            batched.append(time.perf_counter() - t)
            t = time.perf_counter()
            for r in reqs:
                pipe(r.image, r.target, seed=r.seed)
            single.append(time.perf_counter() - t)
        rows.append({"B": b, "batch_s": statistics.median(batched), "single_s": statistics.median(single)})
    print(f"{os.cpu_count()} CPU cores, {pipe.config.get('preset', '?')} checkpoint\n")
    print("| B | one batch (s) | jobs/s batched | one at a time (s) | jobs/s one at a time | speed-up |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        jb, js = r["B"] / r["batch_s"], r["B"] / r["single_s"]
        print(f"| {r['B']} | {r['batch_s']:.2f} | {jb:.2f} | {r['single_s']:.2f} | {js:.2f} | {jb / js:.2f}x |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
