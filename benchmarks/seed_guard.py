"""Choosing seed optimisation's step size and guard (`SeedOptConfig.lr`, `guard`, `guard_by`) on
validation phantoms, every variant scored on the same requests.

For each validation identity of `whatif eval --validation` (never the reported ones) and each
target of the paper's Table 2 and "no finding", the pipeline's steps are run once up to the
seeds: the DDIM inversion of the input's z^n (the starting seed) and that seed optimised by
Algorithm 2 at each `--lr`. All seeds are sampled in one batch and decoded with the detail
restoration, and each sample gets the findings head's target score on its z^n and L_P (Eq. 18)
of its final image. A guard's verdict is then a comparison between two of them, exactly as the
pipeline makes it (checked against one pipeline call per identity), so these policies are
scored on one run:

  none          the starting seed (no seed optimisation)
  opt@LR        the optimised seed, unguarded
  head@LR       the guard judged by the findings head (`guard_by="head"`)
  lp@LR         the guard judged by L_P of the final images (`guard_by="lp"`)

Prints per policy the mean target AUROC (the evaluation classifier, as in `whatif eval`), tail
and head AUROC and their gap, the mean SSIM to the true counterfactual, and per-target AUROC.

About 2 min per identity on 2 cores with two step sizes:

    .venv/bin/python benchmarks/seed_guard.py --checkpoint model/weights/default --n 16 --lr 0.005 0.01
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import torch
from tqdm import tqdm

from model.labels import NO_FINDING
from model.pipeline import CounterfactualPipeline
from model.preprocess import to_model_input
from model.seed_optimization import SeedOptConfig, keep_optimized, optimize_seed, prototype_loss
from model.vae import ssim
from training.evaluate import EVAL_IDENTITY_BASE, TARGETS, VALIDATION_OFFSET, auroc_summary, eval_case, target_aurocs


@torch.no_grad()
def samples(pipe: CounterfactualPipeline, image: np.ndarray, text: str, lrs: list[float], base: SeedOptConfig) -> dict:
    """The starting seed's sample and one optimised sample per step size, with what each guard reads."""
    s = pipe.sampling
    x = to_model_input(image, pipe.resolution, [])
    condition, labels = pipe.condition_for(text)
    dist = pipe.vae.encode(x)
    z_id, z_path = pipe.vae.split(dist.mean)
    recon = pipe.vae.decode(pipe.transformer(dist.mean))
    cond, uncond = pipe.conditioning(condition, labels)
    z_start = pipe.diffusion.invert(z_path, uncond, s["steps"])[:1]
    centroid = pipe.centroid_for(labels, None, [])
    render = pipe._render(z_id, cond, uncond, s["guidance"], pipe.diffusion.timesteps(s["steps"])[0])
    seeds = [z_start]
    for lr in lrs:
        with torch.enable_grad():
            seeds.append(optimize_seed(z_start.clone(), render, centroid, pipe.contrastive.encode_image, dataclasses.replace(base, lr=lr)).seed)
    zs = pipe.diffusion.sample(torch.cat(seeds), cond, uncond, s["steps"], s["guidance"])
    xs = pipe.compose(z_id, zs, x, recon, s["detail"])
    return {
        "images": xs,
        "head": pipe.target_score(zs, labels).tolist(),
        "lp": prototype_loss(pipe.contrastive.encode_image(xs), centroid).tolist(),
    }


def choice(policy: str, lr_index: int, r: dict) -> int:
    """Which sample a policy returns: 0 the starting seed's, lr_index the optimised one's."""
    if policy == "none":
        return 0
    if policy == "opt":
        return lr_index
    score = r["head"] if policy == "head" else [-v for v in r["lp"]]
    return lr_index if keep_optimized(score[lr_index], score[0]) else 0


@torch.no_grad()
def measure(pipe: CounterfactualPipeline, n: int, lrs: list[float]) -> dict[str, dict]:
    base = SeedOptConfig(**pipe.config["seed_optimization"])
    policies = [("none", 0)] + [(f"{p}@{lr:g}", i + 1) for i, lr in enumerate(lrs) for p in ("opt", "head", "lp")]
    probs = {(p, t): [] for p, _ in policies for t in TARGETS}
    sims = {(p, t): [] for p, _ in policies for t in TARGETS}
    for k in tqdm(range(n), desc="identities"):
        identity = EVAL_IDENTITY_BASE + VALIDATION_OFFSET + k
        for target in TARGETS:
            src, true, text, _ = eval_case(identity, k, target, pipe.resolution)
            r = samples(pipe, src.image, text, lrs, base)
            tr = torch.from_numpy(true.image.astype(np.float32) / 127.5 - 1)[None, None]
            p_all = torch.sigmoid(pipe.eval_classifier(r["images"])).numpy()
            s_all = [float(ssim(r["images"][i : i + 1], tr)) for i in range(len(r["images"]))]
            for name, i in policies:
                j = choice(name.split("@")[0], i, r)
                probs[(name, target)].append(p_all[j])
                sims[(name, target)].append(s_all[j])
            if target == NO_FINDING:  # the same image as the pipeline's own guarded call
                cfg = dataclasses.replace(base, lr=lrs[0], guard=True, guard_by="lp")
                direct = pipe(src.image, text, seed=k, seed_opt=cfg).image
                here = (r["images"][choice("lp", 1, r), 0].numpy() + 1) / 2
                if not np.allclose(direct, here, atol=1e-3):
                    raise AssertionError("benchmark and pipeline disagree on the guarded image")
    results = {}
    for name, _ in policies:
        a = target_aurocs({t: probs[(name, t)] for t in TARGETS})
        summary = auroc_summary(a)
        results[name] = {
            "auroc": summary["mean_auroc"],
            "tail": summary["tail_auroc"],
            "head": summary["head_auroc"],
            "ssim": float(np.mean([v for t in TARGETS for v in sims[(name, t)]])),
            "per_target": a,
        }
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", help="checkpoint directory (default: the embedded model)")
    ap.add_argument("--n", type=int, default=8, help="validation identities (default 8)")
    ap.add_argument("--lr", type=float, nargs="+", default=[0.005, 0.01], help="seed-optimisation step sizes to compare")
    args = ap.parse_args()
    if args.n < 2:
        raise SystemExit("--n must be at least 2")
    pipe = CounterfactualPipeline.from_pretrained(args.checkpoint)
    results = measure(pipe, args.n, sorted(set(args.lr)))
    print("| policy | mean AUROC | tail | head | gap | SSIM | " + " | ".join(TARGETS) + " |")
    print("| --- " * (6 + len(TARGETS)) + "|")
    for name, r in results.items():
        per = " | ".join(f"{r['per_target'][t]:.2f}" for t in TARGETS)
        print(f"| {name} | {r['auroc']:.3f} | {r['tail']:.3f} | {r['head']:.3f} | {r['head'] - r['tail']:.3f} | {r['ssim']:.3f} | {per} |")


if __name__ == "__main__":
    main()
