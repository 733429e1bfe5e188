"""How far the validation protocol resolves a difference in AUROC.

`whatif eval --validation --n 8` scores 8 identities x 12 targets, and a setting is kept or dropped
on differences of 0.01-0.03 in its mean or tail AUROC. This runs the same cases (the checkpoint's
sampling settings, without seed optimisation) and reports the mean, tail and head AUROC with their
standard deviation over resamples of the identities (`training.evaluate.identity_bootstrap`). Two
settings whose difference is within about one of these SDs are not told apart by the protocol.
About 2.5 min for n=8 on 2 cores.

    .venv/bin/python benchmarks/auroc_spread.py --checkpoint model/weights/default --n 8
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from tqdm import tqdm

from model.pipeline import CounterfactualPipeline
from training.evaluate import (
    EVAL_IDENTITY_BASE,
    TARGETS,
    VALIDATION_OFFSET,
    auroc_summary,
    eval_case,
    identity_bootstrap,
    target_aurocs,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", default=None, help="checkpoint directory (default: the embedded default)")
    ap.add_argument("--n", type=int, default=8, help=f"validation identities (at most {VALIDATION_OFFSET})")
    ap.add_argument("--draws", type=int, default=500, help="bootstrap resamples")
    args = ap.parse_args()
    if not 2 <= args.n <= VALIDATION_OFFSET:
        ap.error(f"--n must be between 2 and {VALIDATION_OFFSET}")
    pipe = CounterfactualPipeline.from_pretrained(args.checkpoint)
    probs: dict[str, list[np.ndarray]] = {t: [] for t in TARGETS}
    with tqdm(total=args.n * len(TARGETS), desc="counterfactuals", unit="image") as bar:
        for k in range(args.n):
            for target in TARGETS:
                src, _, text, _ = eval_case(EVAL_IDENTITY_BASE + VALIDATION_OFFSET + k, k, target, pipe.resolution)
                out = pipe(src.image, text, seed=k, optimize_seed=False)
                with torch.no_grad():
                    cf = torch.from_numpy(out.image)[None, None] * 2 - 1
                    probs[target].append(torch.sigmoid(pipe.eval_classifier(cf))[0].numpy())
                bar.update()
    point = auroc_summary(target_aurocs(probs))
    spread = identity_bootstrap(probs, draws=args.draws)
    print(f"| n={args.n}, {args.draws} resamples | AUROC | SD over identities |")
    print("| --- | ---: | ---: |")
    point["gap"] = point["head_auroc"] - point["tail_auroc"]
    for key, name in (("mean_auroc", "mean"), ("tail_auroc", "tail"), ("head_auroc", "head"), ("gap", "head - tail")):
        print(f"| {name} | {point[key]:.3f} | {spread[key]:.3f} |")


if __name__ == "__main__":
    main()
