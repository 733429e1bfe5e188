"""Seed optimisation: the paper's long-tail module (Algorithm 2), with the fast variants.

L_P (Eq. 18) = || mu_z - E_CXR(I_G) ||^2, mu_z the centroid of the E_CXR features of m
reference images of the target finding(s) (Algorithm 2, lines 2-3). The seed z_T of the
pathology diffusion is updated by gradient steps to lower L_P (lines 5-13); the UNet, T, the
decoder and E_CXR stay frozen (section 3.2).

How I_G is obtained from z_T while optimising (`method`):
  "x0"       one guided UNet call at the first DDIM timestep and the scheduler's proper
             x0-prediction (InitNO's single-call loss). Algorithm 2 line 7 writes
             z_0 <- z_T - e_hat, which is this estimate without the alpha terms.
  "shortcut" `shortcut_steps` DDIM steps; only the first UNet call keeps its graph, the DDIM
             arithmetic of the rest stays differentiable (SDO's gradient shortcut).
  "full"     the gradient through every UNet call of `shortcut_steps` DDIM steps.
How the seed moves (`optimizer`; line 12 names no optimiser):
  "adam"       Adam. It divides each element's step by that element's own gradient scale, so
               every element of the seed moves by about lr at each step, whatever its share of
               the gradient.
  "normalized" gradient descent with each seed's step scaled to an RMS of lr: the same step
               length, along the gradient itself, so the seed changes where L_P asks for it (not
               in the paper; measured in docs/experiments.md).
Options that apply to all: `batch_seeds` seeds optimised as one batch, the best kept;
`norm_weight` * (mean(z_T^2) - 1)^2 keeps the seed in N(0, I)'s typical set (ReNO);
early stop when the best L_P has not improved by `min_delta` (relative) in `patience` steps
(section 4.1: "stops if L_P does not significantly decrease in the last five epochs").
The final image always comes from full DDIM sampling of the best seed.

`guard` (not in the paper): L_P measures closeness to the references in E_CXR's feature space,
and where E_CXR tells a finding poorly from its neighbours a seed that lowers L_P can draw the
finding less. With the guard on, the pipeline samples z^n from both the optimised seed and the
seed it started from and keeps the optimised one only if the findings head (the model's own
classifier on z^n, trained in stage 1 for L_cls, Eq. 6) scores the target at least as high on it
(`keep_optimized`). It never consults the evaluation classifier, which scores the results. One
more DDIM sampling per request.

`SeedOptConfig()` is the recommended setting (the phantom-128 default's); the paper's literal
Algorithm 2 is in `model/presets/paper-256.json`.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import torch

from .modeling import StrictConfig


@dataclasses.dataclass
class SeedOptConfig(StrictConfig):
    """Settings of Algorithm 2 as run by the pipeline; the defaults are the recommended ones.

    Args:
        method: how I_G is rendered from z_T while optimising: x0 | shortcut | full.
        optimizer: how the seed moves: normalized (RMS step lr along the gradient) | adam.
        max_iters: N, Algorithm 2's iterations (line 5).
        lr: the step size of line 12.
        batch_seeds: seeds optimised as one batch; the one with the lowest L_P is kept.
        norm_weight: weight of (mean(z_T^2) - 1)^2, which keeps the seed Gaussian-like (0: none).
        patience: stop when the best L_P has not improved for this many iterations ...
        min_delta: ... by at least this relative amount.
        shortcut_steps: DDIM steps of the "shortcut" and "full" methods.
        guard: keep the optimised seed only if the findings head scores its sample at least as
            high as the starting seed's (one more DDIM sampling).
    """

    method: str = "x0"  # x0 | shortcut | full
    optimizer: str = "normalized"  # normalized | adam
    max_iters: int = 20
    lr: float = 0.005
    batch_seeds: int = 1
    norm_weight: float = 0.1
    patience: int = 5
    min_delta: float = 0.01  # relative improvement that counts
    shortcut_steps: int = 4
    guard: bool = True  # keep the optimised seed only if the findings head prefers its sample

    def __post_init__(self):
        if self.method not in ("x0", "shortcut", "full"):
            raise ValueError(f"unknown seed optimisation method {self.method!r}; use x0, shortcut or full")
        if self.optimizer not in ("adam", "normalized"):
            raise ValueError(f"unknown seed optimiser {self.optimizer!r}; use adam or normalized")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.max_iters < 1 or self.batch_seeds < 1:
            raise ValueError("max_iters and batch_seeds must be at least 1")


class NormalizedGradientDescent(torch.optim.Optimizer):
    """z <- z - lr * g / rms(g), the RMS taken per seed (over all but the first dimension): each
    seed moves by lr in RMS per step, in the direction of its own gradient."""

    def __init__(self, params, lr: float):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                dims = tuple(range(1, p.grad.dim()))
                rms = p.grad.pow(2).mean(dim=dims, keepdim=True).sqrt().clamp_min(1e-12)
                p.sub_(group["lr"] * p.grad / rms)


@dataclasses.dataclass
class SeedOptResult:
    seed: torch.Tensor  # (1, 1, h, w): the best seed, model space
    history: list[float]  # best-so-far L_P of the kept seed after each iteration (first: before any update)
    iterations: int
    seconds: float


def prototype_loss(features: torch.Tensor, centroid: torch.Tensor) -> torch.Tensor:
    """L_P (Eq. 18): squared distance of each E_CXR feature (B, D) to the references' centroid, (B,)."""
    return ((features - centroid) ** 2).sum(dim=-1)


def keep_optimized(optimized_score: float, initial_score: float) -> bool:
    """The guard's rule: the optimised seed stays unless its sample's findings-head probability of
    the target is below the starting seed's (ties keep it: L_P, the paper's objective, preferred it
    while optimising)."""
    return optimized_score >= initial_score


def optimize_seed(
    z_T: torch.Tensor,
    render: Callable[[torch.Tensor, str, int], torch.Tensor],
    centroid: torch.Tensor,
    encode: Callable[[torch.Tensor], torch.Tensor],
    config: SeedOptConfig,
    callback: Callable[[int, int, float], None] | None = None,
) -> SeedOptResult:
    """Optimise seeds `z_T` (B, 1, h, w) so that `encode(render(z_T))` nears `centroid`
    (Algorithm 2, lines 5-13). `render(z, method, steps)` maps seeds to images differentiably by
    the chosen method (lines 6-9)."""
    (result,) = optimize_seeds(
        z_T,
        [0] * len(z_T),
        lambda z, method, steps, rows: render(z, method, steps),
        centroid,
        encode,
        config,
        [callback] if callback else None,
    )
    return result


def optimize_seeds(
    z_T: torch.Tensor,
    owners: Sequence[int],
    render: Callable[[torch.Tensor, str, int, torch.Tensor], torch.Tensor],
    centroids: torch.Tensor,
    encode: Callable[[torch.Tensor], torch.Tensor],
    config: SeedOptConfig,
    callbacks: Sequence[Callable[[int, int, float], None]] | None = None,
) -> list[SeedOptResult]:
    """Algorithm 2 for several requests in one batch: seed row b of `z_T` (B, 1, h, w) belongs to
    request `owners[b]` (0, 1, ...), whose centroid is row `owners[b]` of `centroids` (R, D).
    `render(z, method, steps, rows)` renders the seeds `z` of rows `rows` (a LongTensor into z_T).

    Each request keeps its own best seed, history and early stop (lines 5-13 per request); a
    request that stops leaves the batch. Every update is per seed (the loss is a sum over seeds,
    the optimisers act per element or per seed), so a request's result is what it would be alone,
    up to the float rounding of a larger batch. -> one `SeedOptResult` per request."""
    t0 = time.perf_counter()
    owner = torch.as_tensor(list(owners), dtype=torch.long)
    requests = int(owner.max()) + 1
    z = z_T.detach().clone().requires_grad_(True)
    opt = (
        torch.optim.Adam([z], lr=config.lr)
        if config.optimizer == "adam"
        else NormalizedGradientDescent([z], lr=config.lr)
    )
    best_loss = torch.full((z.shape[0],), float("inf"), dtype=torch.float64)  # L_P in any model dtype, exactly
    best_seed = z.detach().clone()
    history: list[list[float]] = [[] for _ in range(requests)]
    stale, iterations = [0] * requests, [0] * requests
    active = set(range(requests))
    for it in range(config.max_iters + 1):
        rows = torch.nonzero(torch.isin(owner, torch.tensor(sorted(active))))[:, 0]
        images = render(z[rows.to(z.device)], config.method, config.shortcut_steps, rows)
        feats = encode(images)
        lp = prototype_loss(feats, centroids[owner[rows].to(centroids.device)])  # line 11, one value per seed
        with torch.no_grad():
            current_lp = lp.detach().cpu().double()
            improved = current_lp < best_loss[rows]
            best_loss[rows] = torch.where(improved, current_lp, best_loss[rows])
            moved = rows[improved].to(z.device)
            best_seed[moved] = z.detach()[moved]
        for r in sorted(active):
            current = float(best_loss[owner == r].min())
            if history[r] and current > history[r][-1] * (1 - config.min_delta):
                stale[r] += 1
            else:
                stale[r] = 0
            history[r].append(current)
            iterations[r] = it
            if callbacks:
                callbacks[r](it, config.max_iters, current)
            if it == config.max_iters or stale[r] >= config.patience:
                active.discard(r)
        if not active:
            break
        # Only the seeds of requests still running move; the others' best seeds are kept above.
        going = torch.isin(owner[rows], torch.tensor(sorted(active))).to(z.device)
        norm = ((z[rows.to(z.device)] ** 2).mean(dim=(1, 2, 3)) - 1.0) ** 2
        loss = ((lp + config.norm_weight * norm) * going).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - t0
    results = []
    for r in range(requests):
        mine = torch.nonzero(owner == r)[:, 0]
        keep = int(mine[torch.argmin(best_loss[mine])])
        results.append(SeedOptResult(best_seed[keep : keep + 1], history[r], iterations[r], seconds))
    return results
