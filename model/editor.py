"""The paired editor: renders the generated pathology change onto the patient's own pixels.

Not in the paper. The paper decodes the counterfactual whole, D_VAE(T({z^{1:n-1}, z^n*})) (Eq. 3),
so the decoder redraws every pixel of the patient, and its pathology channel alone did not carry
side, zone and severity faithfully (docs/experiments.md). The editor keeps the paper's generator
for *what* to draw (z^n* from the text-conditioned diffusion and Algorithm 2's seed) and learns
*how the patient's image changes* from exact pairs: on the phantom, the same patient and
acquisition with and without a finding (BiomedJourney-style paired training; on real data the
pairs are a patient's longitudinal studies, as in MIMIC-CXR).

Input, on the model grid: the image x, the generator's decoding of the target pathology in x's
identity (`raw`, Eq. 3 without detail restoration) and of x's own pathology (`recon`), the edit
region's prior (`model.regions.request_prior`: where the request's anatomy lies on this input),
and the request as a vector (`request_vector`: +1 for each added label, -1 for each removed one,
the severity, the side and the lung zone). Output: the change, zero outside the prior.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .labels import CHEXPERT_LABELS, NO_FINDING
from .layers import double_conv
from .modeling import PretrainedModule, StrictConfig

# Severity words -> the scalar the editor reads (the phantom's SEVERITY_SCALE; unknown: moderate).
SEVERITY_VALUE = {"mild": 0.0, "small": 0.0, "moderate": 0.5, "severe": 1.0, "large": 1.0}


@dataclasses.dataclass
class EditorConfig(StrictConfig):
    base_channels: int = 16  # channels of the U-Net's first level, doubled at each level down
    depth: int = 4  # U-Net levels (depth - 1 halvings), below the half-resolution stem
    fine_channels: int = 8  # the full-resolution head that adds the change's fine edges
    norm_groups: int = 4  # GroupNorm groups; divides base_channels
    label_count: int = len(CHEXPERT_LABELS)
    image_size: int = 128  # the model grid it works on


# The request's location, after its labels and severity: the side, then the lung zone (thirds).
SIDES = ("right", "left")
ZONES = ("upper", "middle", "lower")
ZONE_OF = {
    "upper": "upper",
    "apical": "upper",
    "middle": "middle",
    "perihilar": "middle",
    "lower": "lower",
    "basal": "lower",
}


def request_size(label_count: int = len(CHEXPERT_LABELS)) -> int:
    """The length of `request_vector`: the labels, the severity, the sides and the zones."""
    return label_count + 1 + len(SIDES) + len(ZONES)


def request_vector(findings: Sequence, label_count: int = len(CHEXPERT_LABELS)) -> torch.Tensor:
    """(request_size(label_count),): +1 per added label, -1 per removed one; the severity of the
    added ones (their mean, `SEVERITY_VALUE`; moderate where none is given); then 1 for each side
    and lung zone a named finding lies in ("bilateral": both sides; none stated: all zeros). The
    prior already confines the change to that anatomy; the vector tells the editor *which part*
    of a wide prior (a whole hemithorax, both lungs) the finding fills."""
    v = torch.zeros(request_size(label_count))
    severities = []
    for f in findings:
        if f.label == NO_FINDING or f.status == "uncertain":
            continue
        v[CHEXPERT_LABELS.index(f.label)] = 1.0 if f.status == "present" else -1.0
        if f.status == "present":
            severities.append(SEVERITY_VALUE.get(f.severity, 0.5))
        for side in SIDES:
            if f.side in (side, "bilateral"):
                v[label_count + 1 + SIDES.index(side)] = 1.0
        for zone in f.zones:
            v[label_count + 1 + len(SIDES) + ZONES.index(ZONE_OF[zone])] = 1.0
    v[label_count] = sum(severities) / len(severities) if severities else 0.5
    return v


class PairedEditor(PretrainedModule):
    """(x, raw, recon, prior, request) -> the change to add to x, (B, 1, R, R), zero outside the prior.

    Args (`EditorConfig`):
        base_channels, depth, norm_groups: the U-Net (widths base * 2**level).
        label_count: length of the request vector's label part (CheXpert's 14; `request_size`).
        image_size: the grid side; inputs must have it.
    """

    config_class = EditorConfig
    in_channels = 5  # x, raw, raw - recon (the generator's own change), prior, x * prior

    def __init__(self, config: EditorConfig):
        super().__init__(config)
        c, d = config.base_channels, config.depth
        if d < 2 or config.image_size % 2**d:
            raise ValueError(f"editor depth {d}: need 2 or more levels and image_size divisible by {2**d}")
        if c % config.norm_groups:
            raise ValueError(f"editor base_channels {c} must divide by norm_groups {config.norm_groups}")
        widths = [c * 2**i for i in range(d)]
        # The U-Net runs at half resolution (a 2-core CPU trains it in under an hour); a small
        # full-resolution head then sharpens its change with the inputs' own edges.
        self.down = nn.ModuleList([double_conv(self.in_channels, widths[0], config.norm_groups)])
        self.down.extend(double_conv(widths[i - 1], widths[i], config.norm_groups) for i in range(1, d))
        self.up = nn.ModuleList(
            double_conv(widths[i + 1] + widths[i], widths[i], config.norm_groups) for i in reversed(range(d - 1))
        )
        # The request scales and shifts every level's features (FiLM), so one network draws each finding.
        self.film = nn.ModuleList(nn.Linear(request_size(config.label_count), 2 * w) for w in widths)
        f = config.fine_channels
        self.fine = nn.Sequential(
            nn.Conv2d(widths[0] + self.in_channels, f, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(f, f, 3, padding=1),
            nn.SiLU(),
        )
        self.head = nn.Conv2d(f, 1, 1)
        nn.init.zeros_(self.head.weight)  # an untrained editor changes nothing
        nn.init.zeros_(self.head.bias)

    def forward(
        self, x: torch.Tensor, raw: torch.Tensor, recon: torch.Tensor, prior: torch.Tensor, request: torch.Tensor
    ) -> torch.Tensor:
        if x.shape[-1] != self.config.image_size:
            raise ValueError(f"the editor works on {self.config.image_size} px grids, got {x.shape[-1]}")
        full = torch.cat([x, raw, raw - recon, prior, x * prior], dim=1)
        h = F.avg_pool2d(full, 2)
        skips = []
        for i, (block, film) in enumerate(zip(self.down, self.film)):
            h = block(h if i == 0 else F.max_pool2d(h, 2))
            scale, shift = film(request).chunk(2, dim=1)
            h = h * (1 + scale[..., None, None]) + shift[..., None, None]
            skips.append(h)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            h = block(torch.cat([F.interpolate(h, scale_factor=2, mode="nearest"), skip], dim=1))
        h = F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False)
        return self.head(self.fine(torch.cat([h, full], dim=1))) * prior
