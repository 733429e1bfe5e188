"""Choosing the fine-detail setting (`sampling.detail`, model/detail.py) on validation phantoms.

For each validation identity of `whatif eval --validation` (never the reported ones) and each
target of the paper's Table 2 and "no finding", one counterfactual without seed optimisation at
the checkpoint's guidance and start, with the detail restoration off; every TAU is then applied
to that same decoded image, exactly as the pipeline would (checked against one pipeline call
per identity). Prints, per TAU, the mean target AUROC (the evaluation classifier, as in
`whatif eval`), the mean SSIM to the true counterfactual, tail and head AUROC, and per target
AUROC / SSIM.

    whatif diagnose detail --checkpoint model/weights/default --n 8 --tau 0 0.05 0.1 0.2 0.3
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from model.detail import restore_detail
from model.labels import NO_FINDING
from model.pipeline import CounterfactualPipeline
from model.vae import ssim
from training.evaluate import TARGETS, auroc_summary, target_aurocs, validation_cases

from . import common_arguments

QUESTION = "how much of the input's fine detail to restore (sampling.detail): SSIM against AUROC per TAU"
RUNTIME = "about 16 s per identity (32 s for --n 2)"


@torch.no_grad()
def measure(pipe: CounterfactualPipeline, n: int, taus: list[float]) -> dict[float, dict]:
    res = pipe.resolution
    probs = {(tau, t): [] for tau in taus for t in TARGETS}
    sims = {(tau, t): [] for tau in taus for t in TARGETS}
    for case in tqdm(validation_cases(n, res), total=n * len(TARGETS), desc="requests"):
        k, target, src, true, text = case.seed, case.target, case.source, case.truth, case.text
        out = pipe(src.image, text, seed=k, optimize_seed=False, detail=0.0)
        enc = pipe.encode(src.image)
        x, recon = enc.x, enc.recon
        cf = torch.from_numpy(out.model_image)[None, None] * 2 - 1  # the generator's own decoding
        tr = torch.from_numpy(true.image.astype(np.float32) / 127.5 - 1)[None, None]
        if target == NO_FINDING and taus[-1] > 0:  # the same as the pipeline's own restoration
            direct = pipe(src.image, text, seed=k, optimize_seed=False, detail=taus[-1]).model_image
            here = (restore_detail(cf, x, recon, taus[-1])[0, 0].numpy() + 1) / 2
            if not np.allclose(direct, here, atol=1e-4):
                raise AssertionError("benchmark and pipeline disagree on the restored image")
        for tau in taus:
            y = restore_detail(cf, x, recon, tau)
            probs[(tau, target)].append(torch.sigmoid(pipe.eval_classifier(y))[0].numpy())
            sims[(tau, target)].append(float(ssim(y, tr)))
    results = {}
    for tau in taus:
        a = target_aurocs({t: probs[(tau, t)] for t in TARGETS})
        s = {t: float(np.mean(sims[(tau, t)])) for t in TARGETS}
        summary = auroc_summary(a)
        results[tau] = {
            "auroc": summary["mean_auroc"],
            "ssim": float(np.mean(list(s.values()))),
            "tail": summary["tail_auroc"],
            "head": summary["head_auroc"],
            "per_target": {t: (a[t], s[t]) for t in TARGETS},
        }
    return results


def add_arguments(ap) -> None:
    common_arguments(ap, n=8)
    ap.add_argument(
        "--tau", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.2, 0.3], help="detail settings to compare"
    )


def run(args) -> None:
    pipe = CounterfactualPipeline.from_pretrained(args.checkpoint)
    taus = sorted(set(args.tau))
    for tau, r in measure(pipe, args.n, taus).items():
        per = " ".join(f"{t[:8]}={a:.2f}/{s:.2f}" for t, (a, s) in r["per_target"].items())
        print(
            f"detail {tau:<5g} AUROC {r['auroc']:.3f} SSIM {r['ssim']:.3f} "
            f"tail {r['tail']:.3f} head {r['head']:.3f} | {per}"
        )
