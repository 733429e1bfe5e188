"""Stage 1's ceiling on held-out phantoms: what the VAE + T can do before any diffusion.

Whatever the diffusion and the seed optimisation do, a counterfactual is D(T({z^{1:n-1}, z^n}))
with the identity channels of the input. This measures the two things that bound it, on the
validation identities (never trained on, never reported), per finding of the paper's Table 2:

  recon SSIM     D(T(E(x))) against x, x = the identity with the finding
  p clean / true / recon   the evaluation classifier's p(finding) on the identity without the
                 finding, with it (the true counterfactual), and on the reconstruction of the latter
  oracle swap    the *true* pathology channel: z^n of the image with the finding, put into the
                 identity channels of the same identity without it; then the evaluation
                 classifier's AUROC for the finding (swaps made for it against swaps made for
                 the other findings), p(finding) before and after, and SSIM to the true
                 counterfactual

  cross swap     the same, with z^n taken from the *next* identity with the same finding: a z^n
                 that knows nothing of this patient, as a generated one; its SSIM falling far
                 below the oracle's means z^n still carries identity (texture, noise, anatomy)

A finding the oracle swap does not carry cannot be carried by any generated z^n either.
`--run DIR` reads the stage-1 weights of a training run in progress (DIR/state/stage1) over
DIR/checkpoint, to follow a long run without stopping it.

    whatif diagnose disentanglement --checkpoint model/weights/default --n 8
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from model.labels import CHEXPERT_LABELS, PAPER_TABLE2_LABELS
from model.pipeline import CounterfactualPipeline
from model.vae import ssim
from training.evaluate import TAIL, auroc, validation_cases

from . import common_arguments

QUESTION = "stage 1's ceiling: what VAE + T carry of a finding before any diffusion (oracle and cross swaps)"
RUNTIME = "about 12 s for --n 8"


def load(checkpoint: str | None, run: str | None) -> CounterfactualPipeline:
    if run is None:
        return CounterfactualPipeline.from_pretrained(checkpoint)
    from training.state import load_state

    pipe = CounterfactualPipeline.from_pretrained(Path(run) / "checkpoint")
    meta = load_state(
        Path(run) / "state" / "stage1",
        {"vae": pipe.vae, "transformer": pipe.transformer, "head": pipe.findings_head},
        {},
    )
    print(f"stage-1 weights of {run} at step {meta['step']}")
    return pipe


def _t(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img.astype(np.float32) / 127.5 - 1.0)[None, None]


@torch.no_grad()
def measure(pipe: CounterfactualPipeline, n: int) -> dict:
    vae, T, clf = pipe.vae, pipe.transformer, pipe.eval_classifier
    res = pipe.resolution
    rows: dict[str, dict[str, list]] = {
        lab: {
            "recon": [],
            "swap": [],
            "p_before": [],
            "p_true": [],
            "p_recon": [],
            "probs": [],
            "cross": [],
            "cross_probs": [],
        }
        for lab in PAPER_TABLE2_LABELS
    }
    # Each case with its successor on the next identity, same finding: what a z^n made without
    # this patient gives (the cross swap). One identity more than reported, for the last one's.
    by_identity: dict[int, dict[str, np.ndarray]] = {}
    for case in validation_cases(n + 1, res, targets=PAPER_TABLE2_LABELS):
        by_identity.setdefault(case.index, {"clean": case.source.image})[case.target] = case.truth.image
    for k in range(n):
        clean = _t(by_identity[k]["clean"])
        z_clean = vae.encode(clean).mean
        for lab in PAPER_TABLE2_LABELS:
            true = _t(by_identity[k][lab])
            z_true = vae.encode(true).mean
            z_other = vae.encode(_t(by_identity[k + 1][lab])).mean
            cross = vae.decode(T(vae.join(vae.split(z_clean)[0], vae.split(z_other)[1]))).clamp(-1, 1)
            recon = vae.decode(T(z_true)).clamp(-1, 1)
            swap = vae.decode(T(vae.join(vae.split(z_clean)[0], vae.split(z_true)[1]))).clamp(-1, 1)
            r = rows[lab]
            r["recon"].append(float(ssim(recon, true)))
            r["swap"].append(float(ssim(swap, true)))
            li = CHEXPERT_LABELS.index(lab)
            r["p_before"].append(float(torch.sigmoid(clf(clean))[0, li]))
            r["p_true"].append(float(torch.sigmoid(clf(true))[0, li]))
            r["p_recon"].append(float(torch.sigmoid(clf(recon))[0, li]))
            r["probs"].append(torch.sigmoid(clf(swap))[0].numpy())
            r["cross"].append(float(ssim(cross, true)))
            r["cross_probs"].append(torch.sigmoid(clf(cross))[0].numpy())
    table = {}
    for lab in PAPER_TABLE2_LABELS:
        li = CHEXPERT_LABELS.index(lab)
        pos = [p[li] for p in rows[lab]["probs"]]
        neg = [p[li] for other in PAPER_TABLE2_LABELS if other != lab for p in rows[other]["probs"]]
        r = rows[lab]
        cpos = [p[li] for p in rows[lab]["cross_probs"]]
        cneg = [p[li] for other in PAPER_TABLE2_LABELS if other != lab for p in rows[other]["cross_probs"]]
        table[lab] = {
            "cross_ssim": float(np.mean(r["cross"])),
            "cross_auroc": auroc(cpos, cneg),
            "recon_ssim": float(np.mean(r["recon"])),
            "swap_ssim": float(np.mean(r["swap"])),
            "swap_auroc": auroc(pos, neg),
            "p_before": float(np.mean(r["p_before"])),
            "p_true": float(np.mean(r["p_true"])),
            "p_recon": float(np.mean(r["p_recon"])),
            "p_after": float(np.mean(pos)),
        }
    mean = {key: float(np.mean([v[key] for v in table.values()])) for key in next(iter(table.values()))}
    tail = float(np.mean([table[lab]["swap_auroc"] for lab in TAIL]))
    head = float(np.mean([v["swap_auroc"] for lab, v in table.items() if lab not in TAIL]))
    return {"n": n, "table": table, "mean": mean, "tail_auroc": tail, "head_auroc": head}


def add_arguments(ap) -> None:
    common_arguments(ap, n=8)
    ap.add_argument("--run", default=None, help="a training run directory: use its latest stage-1 state")
    ap.add_argument("--json", default=None, help="also write the numbers here")


def run(args) -> None:
    result = measure(load(args.checkpoint, args.run), args.n)
    print(
        f"| finding (n={args.n}) | recon SSIM | oracle-swap SSIM | oracle-swap AUROC "
        "| cross-swap SSIM | cross-swap AUROC | p clean | p true | p recon | p swap |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for lab, v in [*result["table"].items(), ("mean", result["mean"])]:
        print(
            f"| {lab} | {v['recon_ssim']:.3f} | {v['swap_ssim']:.3f} | "
            f"{v['swap_auroc']:.3f} | {v['cross_ssim']:.3f} | {v['cross_auroc']:.3f} "
            f"| {v['p_before']:.2f} | {v['p_true']:.2f} | {v['p_recon']:.2f} | {v['p_after']:.2f} |"
        )
    print(f"oracle-swap AUROC: tail {result['tail_auroc']:.3f}, head {result['head_auroc']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
