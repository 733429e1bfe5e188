"""Several counterfactuals per forward pass (`CounterfactualPipeline.batch`) against one at a time:
jobs per second for B = 1, 2, 4, 8 on this machine (issue "GPUs for real", point 3).

    .venv/bin/python benchmarks/batch.py --sizes 1 4 --repeats 2
    .venv/bin/python benchmarks/batch.py --sizes 4 --repeats 1 --worker

B different phantoms and requests with seed optimisation on (the default), the embedded model
unless --checkpoint. "one at a time" runs the same B requests through `__call__`. `--worker`
measures the worker's task instead (`worker.tasks.counterfactual`: the stored input read, the
result files written): B jobs queued in a blob store as the API leaves them, run as one batch
(WHATIF_BATCH_SIZE=B, the first job's message takes the others) against each job's message in
turn (WHATIF_BATCH_SIZE=1). Run it on an otherwise idle machine. Prints a Markdown table;
`--json FILE` writes the numbers.
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


def worker_run(reqs: list[Request], batch_size: int, checkpoint: str | None) -> float:
    """Seconds for the worker to run the B jobs of `reqs`, queued in a fresh blob store."""
    import io
    import tempfile

    import numpy as np
    from PIL import Image

    from worker.blobs import BlobStore
    from worker.settings import WorkerSettings
    from worker.tasks import counterfactual

    with tempfile.TemporaryDirectory() as tmp:
        s = WorkerSettings(blob_dir=tmp, checkpoint=checkpoint, device="cpu", batch_size=batch_size)
        store = BlobStore(tmp, s.blob_ttl_s)
        ids = []
        for k, r in enumerate(reqs):
            job = store.new_id()
            buf = io.BytesIO()
            Image.fromarray(np.round(np.asarray(r.image) * 255).astype(np.uint8)).save(buf, format="PNG")
            store.put(job, "input.png", buf.getvalue())
            params = {"target": r.target, "seed": r.seed, "optimize_seed": True, "candidates": 1, "mask": False}
            params.update(dict.fromkeys(("steps", "guidance", "start", "detail")))
            meta = {"owner": "b", "notes": [], "created_at": time.time() + k, "state": "queued", "delivery": 1}
            store.put_meta(job, {**meta, "params": params})
            ids.append((job, params))
        t = time.perf_counter()
        for job, params in ids:
            if store.get_meta(job)["state"] == "queued":  # else taken into an earlier job's batch
                counterfactual(None, s, job, {**params, "delivery": 1})
        seconds = time.perf_counter() - t
        assert all(store.get_meta(job)["state"] == "succeeded" for job, _ in ids)
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--checkpoint")
    ap.add_argument("--json")
    ap.add_argument("--worker", action="store_true", help="time the worker's task, not the pipeline alone")
    args = ap.parse_args()
    pipe = CounterfactualPipeline.from_pretrained(args.checkpoint)
    if args.worker:
        from worker.runtime import pipeline

        pipeline(args.checkpoint, "cpu")  # the worker's model, loaded once as at worker start, not timed
    rows = []
    for b in args.sizes:
        reqs = requests(b, pipe.resolution)
        batched, single = [], []
        for _ in range(args.repeats):
            if args.worker:
                batched.append(worker_run(reqs, b, args.checkpoint))
                single.append(worker_run(reqs, 1, args.checkpoint))
                continue
            t = time.perf_counter()
            pipe.batch(reqs)
            batched.append(time.perf_counter() - t)
            t = time.perf_counter()
            for r in reqs:
                pipe(r.image, r.target, seed=r.seed)
            single.append(time.perf_counter() - t)
        rows.append({"B": b, "batch_s": statistics.median(batched), "single_s": statistics.median(single)})
    what = "the worker's task" if args.worker else "the pipeline"
    print(f"{os.cpu_count()} CPU cores, {pipe.config.get('preset', '?')} checkpoint, {what}\n")
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
