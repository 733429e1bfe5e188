"""Restoring the input's fine detail that the autoencoder cannot carry.

The paper decodes the counterfactual from the composed latent, so its image is only as sharp as
the VAE's reconstruction: film grain, fine rib and vessel edges and device outlines that the
4x-downsampled latent does not hold are lost everywhere, also far from the finding. The same
image then differs from its own input where nothing was asked to change.

Latent-shift counterfactuals (Cohen et al., "Gifsplanation via Latent Shift", MIDL 2021) avoid
this by adding the change to the input rather than replacing it: x + D(z') - D(z). Here that is

    x_cf' = D(z_cf) + w * (x - D(z)),   w = exp(-|D(z_cf) - D(z)| / tau)

`x - D(z)` is the detail the reconstruction lost. The gate `w` fades it out where the model
changed the image by more than about `tau`: there the input's detail belongs to anatomy the
finding now covers or removes (lung markings under an effusion, say), and keeping it would draw
the old lung through the new fluid. `tau` is on the model's intensity scale [-1, 1]; 0 turns the
restoration off and gives the paper's image.

Not part of the paper's method; measured on validation phantoms in docs/experiments.md.
"""

from __future__ import annotations

import torch

# Differences on [-1, 1] are at most 2; at tau = 2 the gate is already above exp(-1) everywhere.
MAX_DETAIL = 2.0


def restore_detail(x_cf: torch.Tensor, x: torch.Tensor, recon: torch.Tensor, tau: float) -> torch.Tensor:
    """The counterfactual `x_cf` with the detail of input `x` that its reconstruction `recon` lost,
    gated off where `x_cf` departs from `recon`. All three on [-1, 1], same shape."""
    if not 0.0 <= tau <= MAX_DETAIL:
        raise ValueError(f"detail must be between 0 and {MAX_DETAIL}, got {tau}")
    if tau == 0:
        return x_cf
    gate = torch.exp(-(x_cf - recon).abs() / tau)
    return (x_cf + gate * (x - recon)).clamp(-1, 1)
