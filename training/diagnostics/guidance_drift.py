"""How far guided sampling moves the patient's z^n when nothing is asked to change.

Sampling starts from the DDIM inversion of the input's own z^n (`start="inversion"`), so what the
counterfactual keeps of the patient depends on two things, measured here on clean renders of the
validation identities of `whatif eval --validation` (no findings, never trained on):

  round trip   invert with the unconditional model, sample back at guidance 1: how much of z^n the
               inversion itself loses
  no finding   the same seed sampled with the text "no finding" at the checkpoint's guidance: the
               drift that classifier-free guidance adds where the request asks for no change

Both as |z' - z|^2 / |z - mean(z)|^2, averaged over the identities (0: z^n kept exactly). A stage 2
whose conditional branch departs further from its unconditional one everywhere shows it in the
second number.

    whatif diagnose guidance-drift --checkpoint model/weights/default --n 16
"""

from __future__ import annotations

import torch

from model.labels import NO_FINDING
from model.pipeline import CounterfactualPipeline
from training.evaluate import validation_cases

from . import common_arguments

QUESTION = "how far guided sampling moves the patient's z^n when nothing is asked to change"
RUNTIME = "about 31 s per checkpoint for --n 16"


@torch.no_grad()
def measure(pipe: CounterfactualPipeline, n: int) -> dict:
    d, res = pipe.diffusion, pipe.resolution
    steps, guidance = pipe.sampling.steps, pipe.sampling.guidance
    request = pipe.condition("no finding")
    none, uncond = request.cond, request.uncond
    trip, drift = [], []
    for case in validation_cases(n, res, targets=(NO_FINDING,)):
        z = pipe.encode(case.truth.image).z_path  # the identity with no finding
        z_T = d.invert(z, uncond, steps)
        spread = float(((z - z.mean()) ** 2).mean())
        trip.append(float(((d.sample(z_T, uncond, uncond, steps, 1.0) - z) ** 2).mean()) / spread)
        drift.append(float(((d.sample(z_T, none, uncond, steps, guidance) - z) ** 2).mean()) / spread)
    return {"n": n, "guidance": guidance, "round_trip": sum(trip) / n, "no_finding_drift": sum(drift) / n}


def add_arguments(ap) -> None:
    common_arguments(ap, n=16)
    ap.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="CHECKPOINT",
        help="another checkpoint to measure beside it (repeatable)",
    )


def run(args) -> None:
    print(f"| checkpoint (n={args.n}) | round trip | no-finding drift (guidance) |")
    print("| --- | ---: | ---: |")
    for ck in [args.checkpoint, *args.compare]:
        r = measure(CounterfactualPipeline.from_pretrained(ck), args.n)
        print(f"| {ck or 'default'} | {r['round_trip']:.4f} | {r['no_finding_drift']:.3f} ({r['guidance']:g}) |")
