"""A phantom identity: the patient's anatomy and the acquisition, drawn from one integer seed.

Everything that is "the same person on the same day" lives here, and nothing that a finding
changes: lung shape (a real lung-mask pair), chest and heart size, the positions of hila,
ribs, clavicles and spine, soft tissue and breast shadows, and the acquisition (body size in
the field, rotation, shift, exposure, gamma, noise level, heel effect). Two renders with the
same identity seed are the same patient; their pixels differ only where findings differ.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from .lung_masks import CANONICAL, LungMaskBank, load_lung_masks

# Seeds of the independent random streams; see `seed_rng`.
STREAM_IDENTITY = 0x1D
STREAM_NOISE = 0x0153
STREAM_FINDING = 0xF1D
STREAM_REPORT = 0x4E9
STREAM_CASE = 0xCA5E


def seed_rng(*keys: int) -> np.random.Generator:
    """A generator for one stream: (seed, stream tag, ...) -> independent, reproducible draws."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys])))


@dataclasses.dataclass(frozen=True)
class LungGeometry:
    """Where one lung lies in the body frame (u to the viewer's right, v down; both ~[-1, 1])."""

    top: float  # apex (smallest v)
    bottom: float  # lowest point: the costophrenic recess
    medial: float  # u of the medial edge at mid-height
    lateral: float  # u of the lateral edge at its widest
    hilum: tuple[float, float]  # (u, v)

    @property
    def height(self) -> float:
        return self.bottom - self.top

    def zone_band(self, zone: str) -> tuple[float, float]:
        """Upper, middle and lower zones are thirds of the lung's height, as radiologists use them."""
        k = {"upper": 0, "middle": 1, "lower": 2}[zone]
        return self.top + k * self.height / 3, self.top + (k + 1) * self.height / 3


@dataclasses.dataclass(frozen=True)
class Identity:
    """Anatomy and acquisition of one phantom patient. Build with `Identity.sample(seed)`."""

    seed: int
    mask_index: int  # which real lung pair (LungMaskBank index)
    female: bool
    # lungs: the box of both lungs in the body frame
    lung_half_width: float
    lung_top: float
    lung_bottom: float
    # heart: tilted ellipse; ctr is the cardiothoracic ratio it is built to
    ctr: float
    heart_center: tuple[float, float]
    heart_aspect: float  # vertical / horizontal semi-axis
    heart_tilt: float  # radians
    aortic_knob: tuple[float, float, float]  # u, v, radius
    carina_v: float
    mediastinum_half_width: float
    spine_half_width: float
    body_half_width: float
    neck_half_width: float
    rib_count: int
    rib_arch: float
    rib_thickness: float
    clavicle_tilt: float
    stomach_bubble: bool
    marking_phase: float
    marking_freq: tuple[int, int]
    # acquisition
    zoom: float
    rotation: float  # radians
    shift: tuple[float, float]
    exposure: float
    gamma: float
    noise_sigma: float
    heel: float
    soft_tissue: float

    @classmethod
    def sample(cls, seed: int, bank: LungMaskBank | None = None) -> Identity:
        bank = bank if bank is not None else load_lung_masks()
        r = seed_rng(seed, STREAM_IDENTITY)
        u = r.uniform
        mask_index = int(r.integers(len(bank)))
        half_w = u(0.56, 0.66)
        aspect = float(np.clip(bank.aspect[mask_index], 0.68, 1.1))
        top = u(-0.74, -0.64)
        bottom = top + 2 * half_w * aspect * u(0.95, 1.05)
        ctr = u(0.37, 0.47)
        height = bottom - top
        return cls(
            seed=int(seed),
            mask_index=mask_index,
            female=bool(r.random() < 0.5),
            lung_half_width=half_w,
            lung_top=top,
            lung_bottom=bottom,
            ctr=ctr,
            heart_center=(u(0.11, 0.16), bottom - height * u(0.2, 0.25)),
            heart_aspect=u(0.62, 0.74),
            heart_tilt=u(0.25, 0.45),
            aortic_knob=(u(0.08, 0.12), top + height * u(0.25, 0.3), u(0.04, 0.055)),
            carina_v=top + height * u(0.3, 0.36),
            mediastinum_half_width=u(0.08, 0.1),
            spine_half_width=u(0.05, 0.065),
            body_half_width=half_w + u(0.14, 0.24),
            neck_half_width=u(0.16, 0.22),
            rib_count=int(r.integers(9, 11)),
            rib_arch=u(0.3, 0.45),
            rib_thickness=u(0.32, 0.42),
            clavicle_tilt=u(0.05, 0.16),
            stomach_bubble=bool(r.random() < 0.6),
            marking_phase=u(0, 2 * math.pi),
            marking_freq=(int(r.integers(24, 34)), int(r.integers(38, 52))),
            zoom=u(1.08, 1.22),
            rotation=math.radians(u(-3.5, 3.5)),
            shift=(u(-0.04, 0.04), u(-0.03, 0.05)),
            exposure=u(1.5, 1.9),
            gamma=u(0.85, 1.15),
            noise_sigma=u(0.008, 0.022),
            heel=u(-0.06, 0.06),
            soft_tissue=u(0.85, 1.0),
        )

    def lung(self, side: str, bank: LungMaskBank | None = None) -> LungGeometry:
        """Geometry of the patient's `side` ("right" or "left") lung, from its real mask."""
        bank = bank if bank is not None else load_lung_masks()
        return _lung_geometry(self, 0 if side == "right" else 1, bank)

    def canonical_to_body(self, cx: np.ndarray | float, cy: np.ndarray | float):
        """Canonical mask pixel (column, row) -> body frame (u, v)."""
        w = 2 * self.lung_half_width
        return (np.asarray(cx) + 0.5) / CANONICAL * w - self.lung_half_width, (np.asarray(cy) + 0.5) / CANONICAL * (
            self.lung_bottom - self.lung_top
        ) + self.lung_top

    def body_to_canonical(self, uu: np.ndarray, vv: np.ndarray):
        w = 2 * self.lung_half_width
        return (uu + self.lung_half_width) / w * CANONICAL - 0.5, (vv - self.lung_top) / (
            self.lung_bottom - self.lung_top
        ) * CANONICAL - 0.5


def _lung_geometry(ident: Identity, channel: int, bank: LungMaskBank) -> LungGeometry:
    m = bank.masks[ident.mask_index, channel] >= 128
    rows = np.nonzero(m.any(axis=1))[0]
    cols_any = np.nonzero(m.any(axis=0))[0]
    r0, r1 = rows[0], rows[-1]
    mid = (r0 + r1) // 2
    mid_cols = np.nonzero(m[mid])[0] if m[mid].any() else cols_any
    if channel == 0:  # patient's right lung, viewer's left: lateral edge is the smallest column
        lateral_c, medial_c = cols_any[0], mid_cols[-1]
    else:
        lateral_c, medial_c = cols_any[-1], mid_cols[0]
    (lat_u, med_u), (top_v, bot_v) = ident.canonical_to_body(
        np.array([lateral_c, medial_c], float), np.array([r0, r1], float)
    )
    hilum_u = med_u + (lat_u - med_u) * 0.22
    hilum_v = top_v + (bot_v - top_v) * (0.47 if channel == 0 else 0.43)  # left hilum sits higher
    return LungGeometry(float(top_v), float(bot_v), float(med_u), float(lat_u), (float(hilum_u), float(hilum_v)))
