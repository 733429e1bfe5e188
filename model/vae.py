"""The disentangling VAE: image -> latent of n channels (n-1 identity, the last pathology) -> image.

Paper (section 3.1): 256x256 -> (n=4, 64, 64). The encoder downsamples by 2 per entry of
`channel_mult` after the first, so two entries after the first give H/4.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from .modeling import PretrainedModule, StrictConfig


@dataclasses.dataclass
class VAEConfig(StrictConfig):
    in_channels: int = 1  # grey radiographs
    latent_channels: int = 4  # n; channel n-1 is the pathology channel z^n
    base_channels: int = 32  # width of the first stage
    channel_mult: tuple[int, ...] = (1, 2, 2)  # one stage each; len-1 downsamplings by 2
    num_res_blocks: int = 1  # residual blocks per stage
    norm_groups: int = 8  # GroupNorm groups


def _norm(ch: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(groups, ch), ch)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int):
        super().__init__()
        self.block = nn.Sequential(
            _norm(cin, groups),
            nn.SiLU(),
            nn.Conv2d(cin, cout, 3, padding=1),
            _norm(cout, groups),
            nn.SiLU(),
            nn.Conv2d(cout, cout, 3, padding=1),
        )
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x):
        return self.skip(x) + self.block(x)


class Encoder(nn.Module):
    def __init__(self, c: VAEConfig):
        super().__init__()
        chans = [c.base_channels * m for m in c.channel_mult]
        layers: list[nn.Module] = [nn.Conv2d(c.in_channels, chans[0], 3, padding=1)]
        cin = chans[0]
        for i, ch in enumerate(chans):
            for _ in range(c.num_res_blocks):
                layers.append(ResBlock(cin, ch, c.norm_groups))
                cin = ch
            if i < len(chans) - 1:
                layers.append(nn.Conv2d(cin, cin, 3, stride=2, padding=1))
        layers += [_norm(cin, c.norm_groups), nn.SiLU(), nn.Conv2d(cin, 2 * c.latent_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class Decoder(nn.Module):
    def __init__(self, c: VAEConfig):
        super().__init__()
        chans = [c.base_channels * m for m in c.channel_mult][::-1]
        layers: list[nn.Module] = [nn.Conv2d(c.latent_channels, chans[0], 3, padding=1)]
        cin = chans[0]
        for i, ch in enumerate(chans):
            for _ in range(c.num_res_blocks):
                layers.append(ResBlock(cin, ch, c.norm_groups))
                cin = ch
            if i < len(chans) - 1:
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(cin, cin, 3, padding=1)]
        layers += [_norm(cin, c.norm_groups), nn.SiLU(), nn.Conv2d(cin, c.in_channels, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, f):
        return self.net(f)


@dataclasses.dataclass
class LatentDistribution:
    mean: torch.Tensor
    logvar: torch.Tensor

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """z = mean + std * eps. eps is drawn in float32 on the generator's device (a CPU generator
        on a GPU model, say) and moved: a seed draws the same eps on every device and precision."""
        where = generator.device if generator is not None else self.mean.device
        noise = torch.randn(self.mean.shape, generator=generator, device=where).to(self.mean)
        return self.mean + torch.exp(0.5 * self.logvar) * noise

    def kl(self) -> torch.Tensor:
        """KL(q(z|x) || N(0, I)), mean over the batch (L_KL of Algorithm 1, line 18)."""
        return 0.5 * torch.mean(torch.sum(self.mean**2 + self.logvar.exp() - 1.0 - self.logvar, dim=(1, 2, 3)))


class DisentangledVAE(PretrainedModule):
    """Encoder E_VAE and decoder D_VAE (section 3.1). `encode(x)` -> q(z|x); `decode(f)` -> x_hat.

    Args (`VAEConfig`):
        in_channels: image channels (1, grey radiographs).
        latent_channels: n, the latent's channels; the last is the pathology channel z^n, the
            others the identity channels z^{1:n-1}.
        base_channels: width of the first stage.
        channel_mult: one stage per entry, base_channels * entry wide; the encoder halves the
            side after each stage but the last (the latent's side is R / 2**(len - 1)).
        num_res_blocks: residual blocks per stage.
        norm_groups: GroupNorm groups.
    """

    config_class = VAEConfig

    def __init__(self, config: VAEConfig):
        super().__init__(config)
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)

    def encode(self, x: torch.Tensor) -> LatentDistribution:
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return LatentDistribution(mean, torch.clamp(logvar, -20.0, 10.0))

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        # tanh keeps the output in the image contract's [-1, 1].
        return torch.tanh(self.decoder(f))

    @staticmethod
    def split(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z -> (identity z^{1:n-1}, pathology z^n)."""
        return z[:, :-1], z[:, -1:]

    @staticmethod
    def join(z_id: torch.Tensor, z_path: torch.Tensor) -> torch.Tensor:
        return torch.cat([z_id, z_path], dim=1)

    def forward(self, x):
        return self.decode(self.encode(x).mean)


def ssim(x: torch.Tensor, y: torch.Tensor, window: int = 7) -> torch.Tensor:
    """Mean SSIM of images in [-1, 1] (uniform window), for L_recon (Eq. 4) and evaluation."""
    x, y = (x + 1) / 2, (y + 1) / 2
    c1, c2 = 0.01**2, 0.03**2
    pad = window // 2
    mu_x = F.avg_pool2d(x, window, 1, pad, count_include_pad=False)
    mu_y = F.avg_pool2d(y, window, 1, pad, count_include_pad=False)
    sxx = F.avg_pool2d(x * x, window, 1, pad, count_include_pad=False) - mu_x**2
    syy = F.avg_pool2d(y * y, window, 1, pad, count_include_pad=False) - mu_y**2
    sxy = F.avg_pool2d(x * y, window, 1, pad, count_include_pad=False) - mu_x * mu_y
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return s.mean()
