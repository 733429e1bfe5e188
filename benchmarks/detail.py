"""Choosing the fine-detail setting (`sampling.detail`, model/detail.py) on validation phantoms.

For each validation identity of `whatif eval --validation` (never the reported ones) and each
target of the paper's Table 2 and "no finding", one counterfactual without seed optimisation at
the checkpoint's guidance and start, with the detail restoration off; every TAU is then applied
to that same decoded image, exactly as the pipeline would (checked against one pipeline call
per identity). Prints, per TAU, the mean target AUROC (the evaluation classifier, as in
`whatif eval`), the mean SSIM to the true counterfactual, tail and head AUROC, and per target
AUROC / SSIM.

About 25 s per identity on 2 cores:

    .venv/bin/python benchmarks/detail.py --checkpoint model/weights/default --n 8 --tau 0 0.05 0.1 0.2 0.3
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from tqdm import tqdm

from model.detail import restore_detail
from model.labels import CHEXPERT_LABELS, NO_FINDING, PAPER_TABLE2_LABELS
from model.pipeline import CounterfactualPipeline
from model.preprocess import to_model_input
from model.vae import ssim
from training.evaluate import EVAL_IDENTITY_BASE, TAIL, TARGETS, VALIDATION_OFFSET, _finding, _target_text, auroc
from training.phantom.renderer import render


@torch.no_grad()
def measure(pipe: CounterfactualPipeline, n: int, taus: list[float]) -> dict[float, dict]:
    res = pipe.resolution
    probs = {(tau, t): [] for tau in taus for t in TARGETS}
    sims = {(tau, t): [] for tau in taus for t in TARGETS}
    for k in tqdm(range(n), desc="identities"):
        identity = EVAL_IDENTITY_BASE + VALIDATION_OFFSET + k
        for target in TARGETS:
            if target == NO_FINDING:  # as in training/evaluate.py: remove a finding
                src_f, true, text = [_finding(TARGETS[k % len(PAPER_TABLE2_LABELS)])], render(identity, [], k, res), "no finding"
            else:
                src_f = []
                true = render(identity, [_finding(target)], k, res)
                text = _target_text(true.findings[0])
            src = render(identity, src_f, k, res)
            out = pipe(src.image, text, seed=k, optimize_seed=False, detail=0.0)
            x = to_model_input(src.image, res, [])
            recon = pipe.vae.decode(pipe.transformer(pipe.vae.encode(x).mean))
            cf = torch.from_numpy(out.image)[None, None] * 2 - 1
            tr = torch.from_numpy(true.image.astype(np.float32) / 127.5 - 1)[None, None]
            if target == NO_FINDING and taus[-1] > 0:  # the same as the pipeline's own restoration
                direct = pipe(src.image, text, seed=k, optimize_seed=False, detail=taus[-1]).image
                here = (restore_detail(cf, x, recon, taus[-1])[0, 0].numpy() + 1) / 2
                if not np.allclose(direct, here, atol=1e-4):
                    raise AssertionError("benchmark and pipeline disagree on the restored image")
            for tau in taus:
                y = restore_detail(cf, x, recon, tau)
                probs[(tau, target)].append(torch.sigmoid(pipe.eval_classifier(y))[0].numpy())
                sims[(tau, target)].append(float(ssim(y, tr)))
    results = {}
    for tau in taus:
        a = {}
        for t in TARGETS:
            li = CHEXPERT_LABELS.index(t)
            a[t] = auroc([p[li] for p in probs[(tau, t)]], [p[li] for u in TARGETS if u != t for p in probs[(tau, u)]])
        s = {t: float(np.mean(sims[(tau, t)])) for t in TARGETS}
        results[tau] = {
            "auroc": float(np.mean(list(a.values()))),
            "ssim": float(np.mean(list(s.values()))),
            "tail": float(np.mean([a[t] for t in TAIL])),
            "head": float(np.mean([a[t] for t in PAPER_TABLE2_LABELS if t not in TAIL])),
            "per_target": {t: (a[t], s[t]) for t in TARGETS},
        }
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="checkpoint directory (default: the embedded model)")
    ap.add_argument("--n", type=int, default=8, help="validation identities (default 8)")
    ap.add_argument("--tau", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.2, 0.3], help="detail settings to compare")
    args = ap.parse_args()
    if args.n < 2:
        raise SystemExit("--n must be at least 2")
    pipe = CounterfactualPipeline.from_pretrained(args.checkpoint)
    taus = sorted(set(args.tau))
    for tau, r in measure(pipe, args.n, taus).items():
        per = " ".join(f"{t[:8]}={a:.2f}/{s:.2f}" for t, (a, s) in r["per_target"].items())
        print(f"detail {tau:<5g} AUROC {r['auroc']:.3f} SSIM {r['ssim']:.3f} tail {r['tail']:.3f} head {r['head']:.3f} | {per}")


if __name__ == "__main__":
    main()
