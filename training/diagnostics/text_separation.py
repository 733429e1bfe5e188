"""What stage 2 is conditioned on: how far apart the text tower puts the targets' condition texts.

The pathology diffusion cross-attends to the contrastive model's per-token text features. For
each target of the paper's Table 2 and "no finding", the request of the first validation case
(as `whatif eval` words it), refined to its condition text as the pipeline does, is encoded twice:

  pooled   the contrastive feature (the end token through the projection), cosine between texts
  tokens   the per-token features that cross-attention reads, flattened and centred over the
           targets, cosine between texts: what tells the denoiser one request from another

and the nearest other target is printed with its cosine. Two targets whose token features are
near alike can only be told apart by the denoiser from small differences.

    whatif diagnose text-separation --checkpoint model/weights/default
"""

from __future__ import annotations

import torch

from model.pipeline import CounterfactualPipeline
from training.evaluate import TAIL, TARGETS, validation_cases

QUESTION = "how far apart the text tower puts the targets' condition texts, which stage 2 reads"
RUNTIME = "about 5 s"


def nearest(sim: torch.Tensor) -> list[tuple[int, float]]:
    """For each row of a square cosine matrix, the most similar other row and its cosine."""
    off = sim.clone()
    off.fill_diagonal_(-float("inf"))
    values, index = off.max(dim=1)
    return [(int(i), float(v)) for i, v in zip(index, values)]


@torch.no_grad()
def measure(pipe: CounterfactualPipeline) -> list[dict]:
    texts = [pipe.condition_for(case.text)[0] for case in validation_cases(1, pipe.resolution)]
    pooled = pipe.contrastive.encode_text(texts)
    tokens = pipe.contrastive.text_tokens(texts).flatten(1)
    tokens = torch.nn.functional.normalize(tokens - tokens.mean(0), dim=1)
    rows = []
    for k, ((jp, cp), (jt, ct)) in enumerate(zip(nearest(pooled @ pooled.T), nearest(tokens @ tokens.T))):
        rows.append({"target": TARGETS[k], "text": texts[k], "pooled": (TARGETS[jp], cp), "tokens": (TARGETS[jt], ct)})
    return rows


def add_arguments(ap) -> None:
    ap.add_argument("--checkpoint", help="checkpoint directory (default: the embedded model)")


def run(args) -> None:
    pipe = CounterfactualPipeline.from_pretrained(args.checkpoint)
    print("| target | condition text | nearest (pooled) | cosine | nearest (tokens) | cosine |")
    print("| --- | --- | --- | ---: | --- | ---: |")
    for r in measure(pipe):
        name = r["target"] + (" (tail)" if r["target"] in TAIL else "")
        print(
            f"| {name} | {r['text']} | {r['pooled'][0]} | {r['pooled'][1]:.3f} "
            f"| {r['tokens'][0]} | {r['tokens'][1]:.3f} |"
        )
