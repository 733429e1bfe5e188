"""What seed optimisation can see: how well E_CXR tells the findings apart on held-out phantoms.

Seed optimisation (paper Algorithm 2, Eq. 18) moves the seed so that E_CXR of the generated image
nears the centroid mu_z of m references of the target. It can only pull toward a finding that
E_CXR separates from the patient's own anatomy. On the validation identities (never trained on,
never reported), per target of the paper's Table 2 and "no finding":

  nearest centroid   the fraction of true counterfactuals whose E_CXR feature is nearest to their
                     own target's centroid (the checkpoint's centroids, 12 candidates; chance 0.08)
  shift / spread     the mean distance the finding moves the feature, ||E(x_with) - E(x_without)||,
                     over the mean distance of the identities' clean features to their mean: below
                     1, the finding moves E_CXR less than the patient does, and L_P mostly pulls
                     toward the references' anatomy

    whatif diagnose seed-signal --checkpoint model/weights/default --n 8
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from model.labels import NO_FINDING
from model.pipeline import CounterfactualPipeline
from model.preprocess import to_model_input
from training.evaluate import TAIL, TARGETS, validation_cases

from . import common_arguments

QUESTION = "how well E_CXR, which seed optimisation's L_P reads, tells the findings apart"
RUNTIME = "about 6 s for --n 8"


@torch.no_grad()
def measure(pipe: CounterfactualPipeline, n: int) -> dict:
    res = pipe.resolution
    centroids = torch.stack([pipe.centroids[t] for t in TARGETS])
    feats = {t: [] for t in TARGETS}
    for case in validation_cases(
        n, res
    ):  # the true counterfactual: the identity with the target (none for "no finding")
        feats[case.target].append(pipe.contrastive.encode_image(to_model_input(case.truth.image, res))[0])
    clean = torch.stack(feats[NO_FINDING])
    spread = float((clean - clean.mean(0)).norm(dim=1).mean())
    table = {}
    for i, t in enumerate(TARGETS):
        f = torch.stack(feats[t])
        table[t] = {
            "nearest_centroid": float((torch.cdist(f, centroids).argmin(1) == i).float().mean()),
            "shift_over_spread": float((f - clean).norm(dim=1).mean()) / spread if t != NO_FINDING else float("nan"),
        }
    mean = {
        key: float(np.nanmean([v[key] for v in table.values()])) for key in ("nearest_centroid", "shift_over_spread")
    }
    tail = float(np.mean([table[t]["nearest_centroid"] for t in TAIL]))
    return {"n": n, "table": table, "mean": mean, "tail_nearest_centroid": tail}


def add_arguments(ap) -> None:
    common_arguments(ap, n=8)
    ap.add_argument("--json", default=None, help="also write the numbers here")


def run(args) -> None:
    result = measure(CounterfactualPipeline.from_pretrained(args.checkpoint), args.n)
    print(f"| target (n={args.n}) | nearest centroid | shift / spread |")
    print("| --- | ---: | ---: |")
    for t, v in [*result["table"].items(), ("mean", result["mean"])]:
        print(f"| {t}{' (tail)' if t in TAIL else ''} | {v['nearest_centroid']:.2f} | {v['shift_over_spread']:.2f} |")
    print(
        f"nearest centroid: tail {result['tail_nearest_centroid']:.2f}, mean "
        f"{result['mean']['nearest_centroid']:.2f} (chance {1 / len(TARGETS):.2f})"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
