"""`whatif augment` throughput on this machine: counterfactuals per minute with 1 and 2 worker
processes (issue "Long-tail augmentation": 2 workers at least 1.6x 1 on the 2-core CPU).

    .venv/bin/python benchmarks/augment.py --items 24

Each setting makes the same items (phantom head images x tail targets, the embedded default,
seed optimisation on) into a fresh directory; the time counts from the first item to the last
(model loading included, as a user waits for it). Run it on an otherwise idle machine. Prints a
Markdown table; `--json FILE` writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

from training.longtail.run import AugmentOptions, augment

TARGETS = "Pneumonia,Lung Lesion"


def measure(workers: int, images: int, checkpoint: str | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        opts = AugmentOptions(
            data=f"phantom:{images}:90210",
            targets=TARGETS,
            out=os.path.join(tmp, "out"),
            checkpoint=checkpoint,
            keep_failed=True,
            workers=workers,
            progress=False,
        )
        t = time.perf_counter()
        summary = augment(opts)
        seconds = time.perf_counter() - t
    return {
        "workers": workers,
        "items": summary.made,
        "seconds": round(seconds, 1),
        "per_min": summary.made / seconds * 60,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=24, help="about this many counterfactuals per setting")
    ap.add_argument("--checkpoint", help="checkpoint directory (default: the embedded model)")
    ap.add_argument("--json", help="write the numbers here")
    args = ap.parse_args()
    rows = [measure(w, max(1, args.items // 2), args.checkpoint) for w in (1, 2)]
    print(f"{os.cpu_count()} CPU cores\n")
    print("| workers | counterfactuals | seconds | per minute | vs 1 worker |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        speedup = r["per_min"] / rows[0]["per_min"]
        print(f"| {r['workers']} | {r['items']} | {r['seconds']} | {r['per_min']:.1f} | {speedup:.2f}x |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
