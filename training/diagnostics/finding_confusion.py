"""Which finding the generator draws for each request: where a low target AUROC comes from.

For each validation identity of `whatif eval --validation` (never the reported ones) and each
target of the paper's Table 2 and "no finding", the evaluation classifier (the judge of `whatif
eval`) scores three images:

  truth    the true counterfactual the phantom renders (what a perfect model would return)
  oracle   stage 1 alone: the true counterfactual's encoded z^n swapped into the input's identity
           channels, through T and the decoder with the detail restoration (no diffusion)
  gen@G    the pipeline's counterfactual at guidance G, without seed optimisation

For each of them it prints the target AUROC (as `whatif eval`), and per target the judge's mean
probability of every target's label: a row whose largest entry is off the diagonal is a request
drawn as another finding. The oracle tells stage 1's share of a low AUROC from stage 2's (what it
found on the default: docs/experiments.md). `--out` writes the matrices as a heat map.

    whatif diagnose finding-confusion --checkpoint model/weights/default --n 16 --out /tmp/confusion.png
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from model.labels import CHEXPERT_LABELS
from model.pipeline import CounterfactualPipeline
from training.evaluate import TARGETS, auroc_summary, target_aurocs, validation_cases

from . import common_arguments

QUESTION = "which finding the generator draws for each request, and whether stage 1 or stage 2 lost it"
RUNTIME = "about 15 s per identity and guidance (29 s for --n 2)"

LABELS = [CHEXPERT_LABELS.index(t) for t in TARGETS]
# Column heads, as radiologists abbreviate (two of the labels begin "Pneumo").
SHORT = dict(
    zip(TARGETS, ("Atel", "Cardio", "Consol", "Edema", "ECM", "Fx", "Lesion", "Opac", "Eff", "PNA", "PTX", "None"))
)


@torch.no_grad()
def measure(pipe: CounterfactualPipeline, n: int, guidances: list[float]) -> dict[str, dict[str, list[np.ndarray]]]:
    """Per source ("truth", "oracle", "gen@G") and target: the judge's 14 probabilities per identity."""
    judge = lambda img: torch.sigmoid(pipe.eval_classifier(img))[0].numpy()  # noqa: E731
    sources = ["truth", "oracle", *(f"gen@{g:g}" for g in guidances)]
    probs = {s: {t: [] for t in TARGETS} for s in sources}
    for case in tqdm(validation_cases(n, pipe.resolution), total=n * len(TARGETS), desc="requests"):
        k, target, src, true, text = case.seed, case.target, case.source, case.truth, case.text
        enc, enc_true = pipe.encode(src.image), pipe.encode(true.image)
        probs["truth"][target].append(judge(enc_true.x))
        oracle = pipe.compose(enc.z_id, enc_true.z_path, enc.x, enc.recon, pipe.sampling.detail)
        probs["oracle"][target].append(judge(oracle))
        for g in guidances:
            out = pipe(src.image, text, seed=k, optimize_seed=False, guidance=g)
            probs[f"gen@{g:g}"][target].append(judge(torch.from_numpy(out.image)[None, None] * 2 - 1))
    return probs


def matrix(by_target: dict[str, list[np.ndarray]]) -> np.ndarray:
    """(targets, targets): row = request, column = the judge's mean probability of that label."""
    return np.stack([np.mean(by_target[t], axis=0)[LABELS] for t in TARGETS])


def table(name: str, by_target: dict[str, list[np.ndarray]]) -> str:
    a = target_aurocs(by_target)
    s = auroc_summary(a)
    m = matrix(by_target)
    lines = [
        f"{name}: mean AUROC {s['mean_auroc']:.3f}, tail {s['tail_auroc']:.3f}, head {s['head_auroc']:.3f}",
        "",
        "| request | AUROC | " + " | ".join(SHORT[t] for t in TARGETS) + " |",
        "| --- " * (2 + len(TARGETS)) + "|",
    ]
    for i, t in enumerate(TARGETS):
        lines.append(f"| {t} | {a[t]:.3f} | " + " | ".join(f"{v:.2f}" for v in m[i]) + " |")
    return "\n".join(lines)


def heat_map(probs: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(probs), figsize=(4.2 * len(probs), 4.6), squeeze=False)
    for ax, (name, by_target) in zip(axes[0], probs.items()):
        ax.imshow(matrix(by_target), vmin=0, vmax=1, cmap="magma")
        ax.set_title(f"{name} (mean AUROC {auroc_summary(target_aurocs(by_target))['mean_auroc']:.2f})", fontsize=9)
        ax.set_xticks(range(len(TARGETS)), [SHORT[t] for t in TARGETS], rotation=90, fontsize=7)
        ax.set_yticks(range(len(TARGETS)), list(TARGETS) if ax is axes[0][0] else [], fontsize=7)
        ax.set_xlabel("judge's label", fontsize=8)
    axes[0][0].set_ylabel("request", fontsize=8)
    fig.suptitle("Evaluation classifier's mean probability per request (SYNTHETIC phantoms)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def add_arguments(ap) -> None:
    common_arguments(ap, n=8)
    ap.add_argument(
        "--guidance", type=float, nargs="+", help="guidance scales to sample at (default: the checkpoint's)"
    )
    ap.add_argument("--out", type=Path, help="also write the matrices as a PNG heat map")


def run(args) -> None:
    pipe = CounterfactualPipeline.from_pretrained(args.checkpoint)
    probs = measure(pipe, args.n, args.guidance or [pipe.sampling.guidance])
    print("\n\n".join(table(name, by_target) for name, by_target in probs.items()))
    if args.out:
        heat_map(probs, args.out)
        print(f"\nheat map: {args.out}")
