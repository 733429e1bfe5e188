"""How far the validation protocol resolves a difference in AUROC.

`whatif eval --validation --n 8` scores 8 identities x 12 targets, and a setting is kept or dropped
on differences of 0.01-0.03 in its mean or tail AUROC. This runs the same cases (the checkpoint's
sampling settings, without seed optimisation) and reports the mean, tail and head AUROC with their
standard deviation over resamples of the identities (`training.evaluate.identity_bootstrap`). Two
settings whose difference is within about one of these SDs are not told apart by the protocol.
    whatif diagnose auroc-spread --checkpoint model/weights/default --n 8
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from model.pipeline import CounterfactualPipeline
from training.evaluate import TARGETS, auroc_summary, identity_bootstrap, target_aurocs, validation_cases

from . import common_arguments

QUESTION = "how far does the validation protocol resolve a difference in AUROC?"
RUNTIME = "about 14 s per identity (28 s for --n 2)"


def add_arguments(ap) -> None:
    common_arguments(ap, n=8)
    ap.add_argument("--draws", type=int, default=500, help="bootstrap resamples")


def run(args) -> None:
    pipe = CounterfactualPipeline.from_pretrained(args.checkpoint)
    probs: dict[str, list[np.ndarray]] = {t: [] for t in TARGETS}
    for case in tqdm(
        validation_cases(args.n, pipe.resolution), total=args.n * len(TARGETS), desc="counterfactuals", unit="image"
    ):
        out = pipe(case.source.image, case.text, seed=case.seed, optimize_seed=False)
        with torch.no_grad():
            cf = torch.from_numpy(out.image)[None, None] * 2 - 1
            probs[case.target].append(torch.sigmoid(pipe.eval_classifier(cf))[0].numpy())
    point = auroc_summary(target_aurocs(probs))
    spread = identity_bootstrap(probs, draws=args.draws)
    print(f"| n={args.n}, {args.draws} resamples | AUROC | SD over identities |")
    print("| --- | ---: | ---: |")
    point["gap"] = point["head_auroc"] - point["tail_auroc"]
    for key, name in (("mean_auroc", "mean"), ("tail_auroc", "tail"), ("head_auroc", "head"), ("gap", "head - tail")):
        print(f"| {name} | {point[key]:.3f} | {spread[key]:.3f} |")
