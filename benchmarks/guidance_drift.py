"""How far guided sampling moves the patient's z^n when nothing is asked to change.

Sampling starts from the DDIM inversion of the input's own z^n (`start="inversion"`), so what the
counterfactual keeps of the patient depends on two things, measured here on clean renders of the
validation identities of `whatif eval --validation` (no findings, never trained on):

  round trip   invert with the unconditional model, sample back at guidance 1: how much of z^n the
               inversion itself loses
  no finding   the same seed sampled with the text "no finding" at the checkpoint's guidance: the
               drift that classifier-free guidance adds where the request asks for no change

Both as |z' - z|^2 / |z - mean(z)|^2, averaged over the identities (0: z^n kept exactly). A stage 2
whose conditional branch departs further from its unconditional one everywhere (the focused L_G
of `--diffusion-focus`, say) shows it in the second number. Fast (n=16: about 35 s per checkpoint on 2 cores).

    .venv/bin/python benchmarks/guidance_drift.py --checkpoint model/weights/default --n 16
"""

from __future__ import annotations

import argparse

import torch

from model.pipeline import CounterfactualPipeline
from model.preprocess import to_model_input
from training.evaluate import EVAL_IDENTITY_BASE, VALIDATION_OFFSET
from training.phantom.renderer import render


@torch.no_grad()
def measure(pipe: CounterfactualPipeline, n: int) -> dict:
    d, res = pipe.diffusion, pipe.resolution
    steps, guidance = pipe.sampling["steps"], pipe.sampling["guidance"]
    none, uncond = pipe.conditioning(*pipe.condition_for("no finding"))
    trip, drift = [], []
    for k in range(n):
        img = render(EVAL_IDENTITY_BASE + VALIDATION_OFFSET + k, [], k, res).image
        z = pipe.vae.split(pipe.vae.encode(to_model_input(img, res)).mean)[1]
        z_T = d.invert(z, uncond, steps)
        spread = float(((z - z.mean()) ** 2).mean())
        trip.append(float(((d.sample(z_T, uncond, uncond, steps, 1.0) - z) ** 2).mean()) / spread)
        drift.append(float(((d.sample(z_T, none, uncond, steps, guidance) - z) ** 2).mean()) / spread)
    return {"n": n, "guidance": guidance, "round_trip": sum(trip) / n, "no_finding_drift": sum(drift) / n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", action="append", default=None, help="checkpoint directory, repeatable (default: the embedded default model)")
    ap.add_argument("--n", type=int, default=16, help="validation identities")
    args = ap.parse_args()
    print(f"| checkpoint (n={args.n}) | round trip | no-finding drift (guidance) |")
    print("| --- | ---: | ---: |")
    for ck in args.checkpoint or [None]:
        r = measure(CounterfactualPipeline.from_pretrained(ck), args.n)
        print(f"| {ck or 'default'} | {r['round_trip']:.4f} | {r['no_finding_drift']:.3f} ({r['guidance']:g}) |")


if __name__ == "__main__":
    main()
