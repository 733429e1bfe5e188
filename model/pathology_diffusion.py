"""Text-conditioned latent diffusion on the pathology channel z^n (paper section 3.3, Eqs. 11-16).

A diffusers `UNet2DConditionModel` (1 channel in and out) cross-attends to per-token text
features. Training uses the DDPM forward process (Algorithm 1, lines 29-34); sampling is DDIM
with classifier-free guidance, written out below so that seed optimisation can differentiate
through it. `invert` runs the same deterministic DDIM backwards (clean z^n -> seed), so that a
counterfactual can start from the input's own pathology channel instead of pure noise (not in
the paper; `SamplingConfig.start`).
`clip_sample` is off: latents are not in [-1, 1]; they are standardised with `latent_shift` /
`latent_scale`, measured on the training set.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .modeling import PretrainedModule, StrictConfig


@dataclasses.dataclass
class DiffusionConfig(StrictConfig):
    latent_size: int = 64  # side of z^n
    block_out_channels: tuple[int, ...] = (64, 128, 256)
    cross_attention_levels: tuple[bool, ...] = (False, True, True)  # which UNet levels attend to text
    layers_per_block: int = 1
    attention_head_dim: int = 8
    norm_num_groups: int = 8
    cross_attention_dim: int = 128  # = the text encoder's per-token width
    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    latent_shift: float = 0.0  # z^n standardisation, set from data before stage 2
    latent_scale: float = 1.0


class PathologyDiffusion(PretrainedModule):
    """The denoiser M of the pathology channel z^n (section 3.3) with its DDPM/DDIM schedules.

    Args (`DiffusionConfig`):
        latent_size: side of z^n (the VAE latent's side).
        block_out_channels: the UNet's channels per level.
        cross_attention_levels: which levels cross-attend to the text (one entry per level).
        layers_per_block, attention_head_dim, norm_num_groups: the UNet's blocks.
        cross_attention_dim: width of the text tokens attended to (= the contrastive model's
            text_width).
        num_train_timesteps, beta_start, beta_end, beta_schedule: the DDPM noise schedule
            (Algorithm 1, lines 29-34); DDIM sampling uses the same betas.
        latent_shift, latent_scale: z^n standardisation (model space = (z^n - shift) * scale),
            measured on the training set before stage 2.
    """

    config_class = DiffusionConfig

    def __init__(self, config: DiffusionConfig):
        super().__init__(config)
        from diffusers import DDPMScheduler, UNet2DConditionModel

        c = config
        if len(c.cross_attention_levels) != len(c.block_out_channels):
            raise ValueError("cross_attention_levels needs one entry per block_out_channels entry")
        down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in c.cross_attention_levels)
        up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(c.cross_attention_levels))
        self.unet = UNet2DConditionModel(
            sample_size=c.latent_size,
            in_channels=1,
            out_channels=1,
            layers_per_block=c.layers_per_block,
            block_out_channels=tuple(c.block_out_channels),
            down_block_types=down,
            up_block_types=up,
            cross_attention_dim=c.cross_attention_dim,
            attention_head_dim=c.attention_head_dim,
            norm_num_groups=c.norm_num_groups,
        )
        self.train_scheduler = DDPMScheduler(
            num_train_timesteps=c.num_train_timesteps,
            beta_start=c.beta_start,
            beta_end=c.beta_end,
            beta_schedule=c.beta_schedule,
            clip_sample=False,
            prediction_type="epsilon",
        )
        self.register_buffer("alphas_cumprod", self.train_scheduler.alphas_cumprod.clone().float(), persistent=False)

    # --- conditioning -------------------------------------------------------------------------
    # --- latent standardisation -------------------------------------------------------------
    def to_model_space(self, z_path: torch.Tensor) -> torch.Tensor:
        return (z_path - self.config.latent_shift) * self.config.latent_scale

    def from_model_space(self, z: torch.Tensor) -> torch.Tensor:
        return z / self.config.latent_scale + self.config.latent_shift

    # --- training (Algorithm 1, stage 2) -----------------------------------------------------
    def training_loss(
        self,
        z_path: torch.Tensor,
        cond: torch.Tensor,
        generator: torch.Generator | None = None,
        weight: torch.Tensor | None = None,
    ):
        """L_G (Eq. 16): noise z^n to a random step, predict the noise.

        `weight` (B, 1, h, w), broadcast over z^n's channels, makes it a weighted mean of the
        squared error (sum(w e^2) / sum(w)): not in the paper, which weighs every latent pixel
        alike; None is Eq. 16 exactly.
        """
        z0 = self.to_model_space(z_path)
        # Drawn in float32 on the generator's device (a CPU generator on a GPU model, say) and
        # moved: a seed draws the same noise and steps on every device and precision.
        where = generator.device if generator is not None else z0.device
        noise = torch.randn(z0.shape, generator=generator, device=where).to(z0)
        t = torch.randint(0, self.config.num_train_timesteps, (z0.shape[0],), generator=generator, device=where)
        t = t.to(z0.device)
        zt = self.train_scheduler.add_noise(z0, noise, t)
        pred = self.unet(zt, t, encoder_hidden_states=cond).sample
        if weight is None:
            return F.mse_loss(pred, noise)
        if (
            weight.dim() != 4
            or weight.shape[0] != z0.shape[0]
            or weight.shape[-2:] != z0.shape[-2:]
            or weight.shape[1] not in (1, z0.shape[1])
        ):
            raise ValueError(
                f"weight must be (B, 1 or C, h, w) matching z^n {tuple(z0.shape)}, got {tuple(weight.shape)}"
            )
        w = weight.to(pred.dtype).expand_as(pred)
        return (w * (pred - noise) ** 2).sum() / w.sum().clamp_min(1e-12)

    # --- sampling ---------------------------------------------------------------------------
    def timesteps(self, steps: int) -> list[int]:
        """DDIM timesteps ("leading" spacing, offset 1); the last step lands on the clean estimate
        (set_alpha_to_one), which `ddim_step` with t_prev None computes."""
        from diffusers import DDIMScheduler

        sched = DDIMScheduler.from_config(
            self.train_scheduler.config, clip_sample=False, set_alpha_to_one=True, steps_offset=1
        )
        sched.set_timesteps(steps)
        return [int(t) for t in sched.timesteps]

    def eps(self, zt: torch.Tensor, t: int, cond: torch.Tensor, uncond: torch.Tensor, guidance: float) -> torch.Tensor:
        """Classifier-free guided noise prediction: eps_u + w (eps_c - eps_u)."""
        b = zt.shape[0]
        tt = torch.full((2 * b,), t, device=zt.device, dtype=torch.long)
        ctx = torch.cat([uncond.expand(b, -1, -1), cond.expand(b, -1, -1)])
        e = self.unet(torch.cat([zt, zt]), tt, encoder_hidden_states=ctx).sample
        e_u, e_c = e.chunk(2)
        return e_u + guidance * (e_c - e_u)

    def predict_x0(self, zt: torch.Tensor, t: int, eps: torch.Tensor) -> torch.Tensor:
        a = self.alphas_cumprod[t]
        return (zt - (1 - a).sqrt() * eps) / a.sqrt()

    def ddim_step(self, zt, t: int, t_prev: int | None, eps):
        """One deterministic DDIM update (eta = 0); t_prev None -> the clean estimate."""
        x0 = self.predict_x0(zt, t, eps)
        if t_prev is None:
            return x0
        a_prev = self.alphas_cumprod[t_prev]
        return a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps

    def sample(
        self,
        z_T: torch.Tensor,
        cond: torch.Tensor,
        uncond: torch.Tensor,
        steps: int,
        guidance: float,
        grad_steps: int = 0,
        callback: Callable[[int, int], None] | None = None,
    ) -> torch.Tensor:
        """DDIM from seed z_T (model space) to z^n (data space).

        `grad_steps`: how many of the first UNet calls keep their graph (0: none, all: `steps`).
        The DDIM arithmetic stays differentiable throughout, so with `grad_steps=1` the gradient
        reaches z_T through every update but through one UNet call only (SDO's gradient shortcut).
        """
        ts = self.timesteps(steps)
        z = z_T
        for i, t in enumerate(ts):
            t_prev = ts[i + 1] if i + 1 < len(ts) else None
            if i < grad_steps:
                e = self.eps(z, t, cond, uncond, guidance)
            else:
                with torch.no_grad():
                    e = self.eps(z, t, cond, uncond, guidance)
            z = self.ddim_step(z, t, t_prev, e)
            if callback:
                callback(i + 1, len(ts))
        return self.from_model_space(z)

    def invert(self, z_path: torch.Tensor, uncond: torch.Tensor, steps: int) -> torch.Tensor:
        """DDIM inversion: z^n (data space) -> the seed z_T (model space) from which `sample` with
        the unconditional model (guidance 1) returns to about z^n.

        Not in the paper. The deterministic DDIM update (eta = 0) read backwards, as in DDIM
        (Song et al., 2021, section 4.3) and null-text inversion (Mokady et al., 2023): at each
        step the noise is predicted at the current, less noisy latent, the usual approximation.
        Sampling from this seed with the target text keeps what z^n carries of the patient where
        a random seed replaces it (measured in docs/experiments.md).
        """
        ts = self.timesteps(steps)[::-1]  # ascending: 1, ..., the first sampling step
        z = self.to_model_space(z_path)
        a_prev = torch.ones((), device=z.device, dtype=z.dtype)
        ctx = uncond.expand(z.shape[0], -1, -1)
        for t in ts:
            tt = torch.full((z.shape[0],), t, device=z.device, dtype=torch.long)
            e = self.unet(z, tt, encoder_hidden_states=ctx).sample
            x0 = (z - (1 - a_prev).sqrt() * e) / a_prev.sqrt()
            a = self.alphas_cumprod[t]
            z = a.sqrt() * x0 + (1 - a).sqrt() * e
            a_prev = a
        return z
