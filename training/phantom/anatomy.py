"""The normal chest of one identity as separate tissue layers, and how they make a radiograph.

A `Scene` holds the layers of one patient at one image size: body soft tissue, the two lungs,
vessel markings, heart, mediastinum, ribs and other bone, and two layers findings write into
(`opac`, the share of alveolar air replaced by fluid or tissue, and `extra`, attenuation added
or, when negative, removed). `composite` turns layers into intensities pixel by pixel, so a
finding that changes no layer at a pixel cannot change that pixel: the basis of exact masks.

Geometry is drawn on a rotated and shifted coordinate grid (the body frame) rather than by
resampling a finished image, so positioning never blurs anatomy or leaks a finding's edge.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image
from scipy import ndimage

from .identity import STREAM_IDENTITY, Identity, LungGeometry, seed_rng
from .lung_masks import LungMaskBank, load_lung_masks
from .shapes import bezier, bump, ellipse_half_width, inside, line_band, smoothstep, soft_ellipse

LAYERS = ("body", "lungs", "markings", "heart", "medi", "ribs", "bone", "opac", "extra")


@dataclasses.dataclass
class Scene:
    """Tissue layers of one identity at `size` x `size` pixels (float32)."""

    identity: Identity
    size: int
    u: np.ndarray  # body-frame coordinates of each pixel centre
    v: np.ndarray
    px: float  # one pixel in body-frame units
    lungs: np.ndarray  # (2, S, S): patient's right, left
    body: np.ndarray
    markings: np.ndarray
    heart: np.ndarray
    medi: np.ndarray
    ribs: np.ndarray
    bone: np.ndarray
    opac: np.ndarray
    extra: np.ndarray
    geometry: dict[str, LungGeometry]
    heart_shape: tuple[float, float, float, float, float]  # cu, cv, a, b, tilt

    def snapshot(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name).copy() for name in LAYERS}

    def changed_since(self, snap: dict[str, np.ndarray]) -> np.ndarray:
        """Pixels where any layer differs from `snap`: exactly what composite can change."""
        changed = np.zeros((self.size, self.size), dtype=bool)
        for name in LAYERS:
            diff = getattr(self, name) != snap[name]
            changed |= diff.any(axis=0) if diff.ndim == 3 else diff
        return changed

    def lung(self, side: str) -> np.ndarray:
        return self.lungs[0 if side == "right" else 1]


def body_grid(ident: Identity, size: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Pixel centres -> body frame: undo the shift, rotation and zoom of the acquisition."""
    x = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    xx, yy = np.meshgrid(x, x)
    xx -= ident.shift[0]
    yy -= ident.shift[1]
    c, s = np.cos(ident.rotation), np.sin(ident.rotation)
    u = (c * xx + s * yy) / ident.zoom
    v = (-s * xx + c * yy) / ident.zoom
    return u.astype(np.float32), v.astype(np.float32), 2.0 / (size * ident.zoom)


def heart_layer(u, v, cu, cv, a, b, tilt, px) -> np.ndarray:
    # Flatten the heart's lower border where it sits on the diaphragm: an ellipse cut below.
    return soft_ellipse(u, v, cu, cv, a, b, tilt, 3 * px)


def heart_axes(ident: Identity, ctr: float) -> tuple[float, float]:
    """Semi-axes of the heart ellipse whose width gives cardiothoracic ratio `ctr`.

    CTR = widest heart diameter / widest inner thoracic diameter; the thorax here is the
    box of both lungs, 2 * lung_half_width wide.
    """
    unit = ellipse_half_width(1.0, ident.heart_aspect, ident.heart_tilt)
    a = ctr * ident.lung_half_width / unit
    return a, a * ident.heart_aspect


def rib_density(u, v, ident: Identity, px: float, offset=0.0) -> np.ndarray:
    """Posterior and anterior ribs of both sides (float32). `offset` shifts v (fracture step-off)."""
    lw = ident.lung_half_width
    s = np.abs(u) / lw
    vv = v + offset
    span = (ident.lung_bottom - ident.lung_top) * 1.02
    n = ident.rib_count
    # Posterior ribs: arches whose highest point is a third of the way out from the spine.
    g = ident.rib_arch * ((s - 0.3) ** 2 - 0.09)
    q = np.clip((vv - g - (ident.lung_top - 0.06)) / span, 0.0, 1.2)
    t = n * q**0.85
    spacing = span / n
    frac = t - np.floor(t)
    d = np.abs(frac - ident.rib_thickness / 2) * spacing - ident.rib_thickness / 2 * spacing
    band = inside(d, 2.0 * px)
    cortex = np.exp(-((d / (1.2 * px)) ** 2))
    lateral = smoothstep((s - 0.07) / 0.06) * smoothstep((1.12 - s) / 0.08)
    count = smoothstep((t - 0.5) * 4) * smoothstep((n + 0.3 - t) * 2)
    posterior = (0.6 * band + 0.35 * cortex) * lateral * count
    # Anterior ribs: fainter, running down and in from the lateral chest wall.
    ga = 0.32 * (1.0 - s)
    qa = np.clip((vv - ga - (ident.lung_top + 0.06)) / span, 0.0, 1.2)
    ta = (n - 3) * qa
    fa = ta - np.floor(ta)
    da = np.abs(fa - 0.2) * spacing - 0.2 * spacing
    anterior = 0.3 * inside(da, 3 * px) * smoothstep((s - 0.35) / 0.15) * smoothstep((1.05 - s) / 0.08)
    anterior *= smoothstep((ta - 0.3) * 4) * smoothstep((n - 3.2 - ta) * 2)
    return (posterior + anterior).astype(np.float32)


def build_scene(ident: Identity, size: int, bank: LungMaskBank | None = None) -> Scene:
    """All layers of the normal chest of `ident` at `size` x `size`."""
    bank = bank if bank is not None else load_lung_masks()
    u, v, px = body_grid(ident, size)
    f32 = np.float32

    # Lungs: the real mask pair, sampled on the body grid (bilinear, exactly 0 outside).
    cx, cy = ident.body_to_canonical(u, v)
    lungs = np.empty((2, size, size), f32)
    for k in range(2):
        m = bank.masks[ident.mask_index, k].astype(f32) / 255.0
        lungs[k] = ndimage.map_coordinates(m, [cy, cx], order=1, mode="constant", cval=0.0, prefilter=False)
    geometry = {side: ident.lung(side, bank) for side in ("right", "left")}

    # Body: soft tissue, thicker in the middle; neck above the shoulders.
    top = ident.lung_top
    bw = ident.neck_half_width + (ident.body_half_width - ident.neck_half_width) * smoothstep((v - (top - 0.2)) / 0.2)
    au = np.abs(u)
    body = inside(au - bw, 0.06) * (0.42 + 0.42 * np.sqrt(np.clip(1 - (u / bw) ** 2, 0, 1)))
    if ident.female:
        for sgn in (-1.0, 1.0):
            gl = geometry["right" if sgn < 0 else "left"]
            cu = sgn * 0.55 * ident.lung_half_width
            cv = gl.bottom - 0.12
            breast = soft_ellipse(u, v, cu, cv, 0.34, 0.24, 0.0, 0.03) * smoothstep((v - cv + 0.02) / 0.12)
            body = body + 0.16 * breast
    body = (body * ident.soft_tissue).astype(f32)

    # Heart, aortic knob, mediastinum and trachea.
    a, b = heart_axes(ident, ident.ctr)
    heart_shape = (ident.heart_center[0], ident.heart_center[1], a, b, ident.heart_tilt)
    heart = heart_layer(u, v, *heart_shape, px)
    ku, kv, kr = ident.aortic_knob
    medi = 0.3 * soft_ellipse(u, v, ku, kv, kr, kr * 1.2, 0.0, 2 * px)
    mw = ident.mediastinum_half_width
    medi += 0.3 * inside(np.abs(u - 0.01) - mw, 0.03) * smoothstep((ident.heart_center[1] + 0.1 - v) / 0.1)
    trachea = line_band(u, v, [(0.0, -1.2), (0.0, ident.carina_v)], 0.026, 3 * px)
    for g in geometry.values():
        trachea = np.maximum(trachea, line_band(u, v, [(0.0, ident.carina_v), g.hilum], 0.011, 3 * px))
    medi -= 0.2 * trachea
    if ident.stomach_bubble:
        gl = geometry["left"]
        bub = soft_ellipse(u, v, gl.medial + 0.18, gl.bottom + 0.07, 0.09, 0.05, 0.0, 3 * px)
        bub *= 1.0 - lungs[1]
        medi -= 0.35 * bub
    medi = medi.astype(f32)

    # Bone: spine with vertebral end plates, clavicles; ribs separately (fractures edit them).
    spine = inside(au - ident.spine_half_width, 3 * px) * (0.75 + 0.25 * np.cos(2 * np.pi * v / 0.075) ** 8)
    bone = 0.3 * spine
    for sgn in (-1.0, 1.0):
        pts = bezier(
            (sgn * 0.06, top + 0.12),
            (sgn * 0.3, top + 0.08),
            (sgn * (ident.lung_half_width + 0.12), top + 0.04 - ident.clavicle_tilt),
        )
        bone = bone + 0.4 * line_band(u, v, pts, 0.022, 3 * px)
    bone = bone.astype(f32)
    ribs = rib_density(u, v, ident, px)

    # Vessel markings radiating from each hilum, fading to the periphery.
    markings = np.zeros((size, size), f32)
    # Low-frequency texture breaks the regularity of the radial pattern.
    coarse = seed_rng(ident.seed, STREAM_IDENTITY, 7).standard_normal((24, 24)).astype(f32)
    texture = np.asarray(Image.fromarray(coarse, mode="F").resize((size, size), Image.BILINEAR))
    texture = 0.3 + 0.7 * smoothstep(0.5 + 0.6 * texture)
    f1, f2 = ident.marking_freq
    ph = ident.marking_phase
    for k, side in enumerate(("right", "left")):
        hu, hv = geometry[side].hilum
        sel = lungs[k] > 0
        du, dv = u[sel] - hu, v[sel] - hv
        r = np.sqrt(du * du + dv * dv)
        phi = np.arctan2(dv, du)
        c1 = 0.5 + 0.5 * np.cos(f1 * phi + 2.5 * np.sin(7 * r + ph))
        c2 = 0.5 + 0.5 * np.cos(f2 * phi + 3.0 * np.sin(11 * r + 1.7 * ph))
        c1 *= c1  # sharpen the stripes into thin vessels: c**10 and c**12 by squaring
        c1 = c1 * (c1 * c1) ** 2
        c2 = (c2 * c2 * c2) ** 4
        m1, m2 = c1, c2
        m = (m1 + 0.7 * m2) * np.exp(-r / 0.3) * texture[sel] + 0.7 * bump(r * r / 0.09**2)
        markings[sel] = m.astype(f32)

    zeros = np.zeros((size, size), f32)
    return Scene(
        identity=ident,
        size=size,
        u=u,
        v=v,
        px=px,
        lungs=lungs,
        body=body,
        markings=markings,
        heart=heart,
        medi=medi,
        ribs=ribs,
        bone=bone,
        opac=zeros.copy(),
        extra=zeros,
        geometry=geometry,
        heart_shape=heart_shape,
    )


def attenuation(scene: Scene) -> np.ndarray:
    """Projected attenuation: tissue adds, aerated lung removes. Pointwise in the layers."""
    lung = np.minimum(scene.lungs[0] + scene.lungs[1], 1.0)
    # The lower lobes lie behind the heart: less aerated lung is seen through it.
    aerated = lung * (1.0 - scene.opac) * (1.0 - 0.5 * scene.heart)
    return (
        scene.body
        + 0.38 * scene.heart
        + scene.medi
        + 0.26 * scene.ribs
        + scene.bone
        - 0.6 * aerated
        + 0.22 * scene.markings * aerated
        + 0.1 * lung * scene.opac
        + scene.extra
    )


def composite(scene: Scene, noise: np.ndarray) -> np.ndarray:
    """Radiograph intensities in [0, 1] (white = attenuating), with acquisition effects.

    Exposure, gamma, heel effect and noise are identity properties applied pixel by pixel;
    `noise` is a fixed standard-normal field from the render seed, so two renders that share
    identity and render seed differ only where their layers differ.
    """
    ident = scene.identity
    att = np.maximum(attenuation(scene), 0.0)
    img = 1.0 - np.exp(-ident.exposure * att)
    img = np.power(img, ident.gamma)
    rows = (np.arange(scene.size, dtype=np.float32) + 0.5) / scene.size * 2 - 1
    img = img * (1.0 + ident.heel * rows[:, None])
    img = img + ident.noise_sigma * np.sqrt(img + 0.02) * noise
    return np.clip(img, 0.0, 1.0).astype(np.float32)
