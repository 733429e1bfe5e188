"""How each finding is drawn: one function per CheXpert label, each with the signs that define it.

Every function edits the layers of a `Scene` (see `anatomy.py`) using primitives with compact
support, and draws its random details (where in the zone, the shape of a patch) from its own
generator, seeded by (render seed, label): adding or removing one finding never moves another.

Severity words map to sizes and densities in `SEVERITY_SCALE`. Sides are the patient's.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

from .anatomy import Scene, heart_axes, heart_layer, rib_density
from .findings import Finding
from .lung_masks import CANONICAL, load_lung_masks
from .shapes import bezier, bump, inside, line_band, smoothstep, soft_ellipse

SEVERITY_SCALE = {"mild": 0.0, "moderate": 0.5, "severe": 1.0}
# Cardiothoracic ratio of an enlarged heart by severity (normal is below 0.5).
CARDIOMEGALY_CTR = {"mild": 0.55, "moderate": 0.61, "severe": 0.67}


def _sev(finding: Finding) -> float:
    return SEVERITY_SCALE.get(finding.severity or "moderate", 0.5)


def _sides(finding: Finding) -> list[str]:
    side = finding.side
    return ["right", "left"] if side == "bilateral" else [side]


def _zone_weight(scene: Scene, side: str, zone: str | None, spill: float = 0.0) -> np.ndarray:
    """Soft vertical band of a lung zone (thirds of the lung's height), widened by `spill`."""
    g = scene.geometry[side]
    if zone is None:
        return np.ones_like(scene.v)
    lo, hi = g.zone_band(zone)
    ramp = 0.04 + spill
    return smoothstep((scene.v - lo + spill) / ramp) * smoothstep((hi + spill - scene.v) / ramp)


def _point_in_zone(scene: Scene, side: str, zone: str | None, rng: np.random.Generator, margin=0.05):
    """A random body-frame point well inside the lung `side`, in `zone` (rejection sampling)."""
    bank = load_lung_masks()
    ident = scene.identity
    m = bank.masks[ident.mask_index, 0 if side == "right" else 1]
    g = scene.geometry[side]
    lo, hi = g.zone_band(zone) if zone else (g.top, g.bottom)
    er = ndimage.binary_erosion(m >= 128, iterations=max(1, int(margin / (2 * ident.lung_half_width) * CANONICAL)))
    rows, cols = np.nonzero(er)
    uu, vv = ident.canonical_to_body(cols.astype(float), rows.astype(float))
    ok = (vv >= lo) & (vv <= hi)
    if not ok.any():
        ok = np.ones_like(vv, bool)
    i = rng.choice(np.nonzero(ok)[0])
    return float(uu[i]), float(vv[i])


def _shrunk_lung(scene: Scene, side: str, scale: float, anchor: tuple[float, float]) -> np.ndarray:
    """The lung mask scaled by `scale` toward `anchor`: what a collapsed or thickened-over lung keeps."""
    ident = scene.identity
    k = 0 if side == "right" else 1
    au, av = anchor
    uu = au + (scene.u - au) / scale
    vv = av + (scene.v - av) / scale
    cx, cy = ident.body_to_canonical(uu, vv)
    m = load_lung_masks().masks[ident.mask_index, k].astype(np.float32) / 255.0
    return ndimage.map_coordinates(m, [cy, cx], order=1, mode="constant", cval=0.0, prefilter=False)


def _fill(scene: Scene, o: np.ndarray) -> None:
    """Replace alveolar air by fluid or tissue: opacities combine like independent absorbers."""
    scene.opac[:] = 1.0 - (1.0 - scene.opac) * (1.0 - np.clip(o, 0.0, 1.0))


def _blobs(scene: Scene, centres, radii, rng) -> np.ndarray:
    out = np.zeros_like(scene.u)
    for (cu, cv), r in zip(centres, radii):
        stretch = rng.uniform(0.7, 1.3)
        r2 = ((scene.u - cu) / (r * stretch)) ** 2 + ((scene.v - cv) / (r / stretch)) ** 2
        out = np.maximum(out, bump(r2) * rng.uniform(0.7, 1.0))
    return out


# --- the findings -------------------------------------------------------------------------


def pleural_effusion(scene: Scene, f: Finding, rng: np.random.Generator) -> None:
    """Dependent fluid: basal opacity with a meniscus rising laterally; blunted costophrenic angle."""
    s = _sev(f)
    for side in _sides(f):
        g = scene.geometry[side]
        lung = scene.lung(side)
        depth = g.height * (0.1 + 0.38 * s) * rng.uniform(0.9, 1.1)
        lat = np.clip((scene.u - g.medial) / (g.lateral - g.medial), 0.0, 1.0)
        # Meniscus: the fluid climbs the lateral chest wall (higher laterally), Damoiseau's line.
        level = g.bottom - depth * (0.55 + 0.6 * lat**1.5)
        fluid = smoothstep((scene.v - level) / 0.035) * lung
        _fill(scene, 0.97 * fluid)
        scene.extra += 0.12 * fluid


def cardiomegaly(scene: Scene, f: Finding, rng: np.random.Generator) -> None:
    """Enlarged cardiac silhouette: cardiothoracic ratio above 0.5, mostly to the patient's left."""
    ident = scene.identity
    ctr = CARDIOMEGALY_CTR[f.severity or "moderate"] + rng.uniform(-0.015, 0.015)
    cu, cv, a0, b0, tilt = scene.heart_shape
    a, b = heart_axes(ident, ctr)
    # Grow to the left and down: the apex moves out, the right border stays near the spine.
    cu = cu + (a - a0) * 0.45
    cv = cv + (b - b0) * 0.3
    scene.heart_shape = (cu, cv, a, b, tilt)
    scene.heart[:] = heart_layer(scene.u, scene.v, cu, cv, a, b, tilt, scene.px)


def pneumothorax(scene: Scene, f: Finding, rng: np.random.Generator) -> None:
    """Air in the pleural space: a visceral pleural line, no lung markings beyond it."""
    s = _sev(f)
    for side in _sides(f):
        g = scene.geometry[side]
        lung = scene.lung(side)
        scale = 1.0 - (0.1 + 0.32 * s) * rng.uniform(0.9, 1.1)
        # The lung falls toward its hilum and base: the rim of air is apical and lateral.
        anchor = (g.medial + 0.15 * (g.lateral - g.medial), g.bottom)
        kept = _shrunk_lung(scene, side, scale, anchor)
        rim = lung * (1.0 - kept)
        line = np.clip(4.0 * kept * (1.0 - kept), 0.0, 1.0) * lung
        scene.markings *= 1.0 - rim
        scene.extra += 0.35 * line - 0.08 * rim


def consolidation(scene: Scene, f: Finding, rng: np.random.Generator) -> None:
    """Dense lobar airspace opacity in one zone, with air bronchograms inside it."""
    s = _sev(f)
    for side in _sides(f):
        g = scene.geometry[side]
        lung = scene.lung(side)
        zone_w = _zone_weight(scene, side, f.zone, spill=0.03 * s)
        cu, cv = _point_in_zone(scene, side, f.zone, rng)
        reach = (0.16 + 0.14 * s) * abs(g.lateral - g.medial) / 0.55
        region = bump(((scene.u - cu) / reach) ** 2 + ((scene.v - cv) / (reach * 0.8)) ** 2)
        o = np.clip(2.2 * region, 0, 1) * zone_w * lung
        hu, hv = g.hilum
        phi = np.arctan2(scene.v - hv, scene.u - hu)
        r = np.hypot(scene.u - hu, scene.v - hv)
        bronch = np.clip((np.cos(17 * phi + 2 * np.sin(9 * r + rng.uniform(0, 6))) - 0.93) / 0.07, 0, 1)
        _fill(scene, 0.9 * o)
        scene.extra += (0.1 - 0.22 * bronch) * np.clip(o - 0.3, 0, 1)


def pneumonia(scene: Scene, f: Finding, rng: np.random.Generator) -> None:
    """Patchy, ill-defined airspace opacities scattered through a zone."""
    s = _sev(f)
    for side in _sides(f):
        lung = scene.lung(side)
        n = int(3 + 4 * s)
        centres = [_point_in_zone(scene, side, f.zone, rng) for _ in range(n)]
        radii = rng.uniform(0.05, 0.09 + 0.04 * s, size=n)
        patches = _blobs(scene, centres, radii, rng)
        _fill(scene, (0.5 + 0.25 * s) * patches * lung)


def atelectasis(scene: Scene, f: Finding, rng: np.random.Generator) -> None:
    """Linear (plate-like) opacities, and with severity a wedge of collapse with volume loss."""
    s = _sev(f)
    for side in _sides(f):
        g = scene.geometry[side]
        lung = scene.lung(side)
        lo, hi = g.zone_band(f.zone or "lower")
        width = abs(g.lateral - g.medial)
        plates = np.zeros_like(scene.u)
        for _ in range(1 + int(2 * s + rng.random())):
            vv = rng.uniform(lo + 0.2 * (hi - lo), hi - 0.1 * (hi - lo))
            u0 = g.medial + (g.lateral - g.medial) * rng.uniform(0.15, 0.35)
            u1 = g.medial + (g.lateral - g.medial) * rng.uniform(0.7, 0.9)
            tiltv = rng.uniform(-0.03, 0.03)
            pts = bezier((u0, vv), ((u0 + u1) / 2, vv + tiltv + 0.01), (u1, vv - tiltv))
            plates = np.maximum(plates, line_band(scene.u, scene.v, pts, 0.008 + 0.006 * s, 3 * scene.px))
        o = plates
        if s > 0:
            # Collapse: a dense wedge against the mediastinum, its size growing with severity.
            cu = g.medial + (g.lateral - g.medial) * 0.2
            wedge = bump(
                ((scene.u - cu) / (0.1 + 0.12 * s) / width * 0.55) ** 2 + ((scene.v - hi) / (0.12 + 0.1 * s)) ** 2
            )
            o = np.maximum(o, np.clip(1.8 * wedge, 0, 1) * s)
        _fill(scene, 0.85 * o * lung)


def edema(scene: Scene, f: Finding, rng: np.random.Generator) -> None:
    """Bilateral perihilar (bat-wing) haze, indistinct vessels and Kerley B lines at the bases."""
    s = _sev(f)
    for side in ("right", "left"):
        g = scene.geometry[side]
        lung = scene.lung(side)
        hu, hv = g.hilum
        reach = 0.28 + 0.16 * s
        haze = bump(((scene.u - hu) / reach) ** 2 + ((scene.v - hv) / (reach * 1.1)) ** 2)
        _fill(scene, (0.35 + 0.35 * s) * haze * lung)
        scene.markings *= 1.0 - 0.6 * haze * lung
        # Kerley B lines: short horizontal septal lines reaching the lateral pleura at the bases.
        kerley = np.zeros_like(scene.u)
        inward = 1.0 if side == "right" else -1.0
        for _ in range(3 + int(4 * s)):
            vv = rng.uniform(g.bottom - 0.3 * g.height, g.bottom - 0.05 * g.height)
            u0 = g.lateral + inward * 0.01
            kerley = np.maximum(
                kerley, line_band(scene.u, scene.v, [(u0, vv), (u0 + inward * 0.05, vv)], 0.003, 2 * scene.px)
            )
        scene.extra += 0.22 * kerley * lung


def lung_lesion(scene: Scene, f: Finding, rng: np.random.Generator) -> None:
    """A nodule (mild) or mass (severe): round, dense, lobulated edge."""
    s = _sev(f)
    for side in _sides(f):
        cu, cv = _point_in_zone(scene, side, f.zone, rng, margin=0.08)
        radius = 0.025 + 0.07 * s**1.3 + rng.uniform(0, 0.01)
        phi = np.arctan2(scene.v - cv, scene.u - cu)
        lob = 1.0 + 0.12 * np.sin(3 * phi + rng.uniform(0, 6)) + 0.08 * np.sin(5 * phi + rng.uniform(0, 6))
        r2 = ((scene.u - cu) ** 2 + (scene.v - cv) ** 2) / (radius * lob) ** 2
        ball = np.sqrt(np.clip(1.0 - r2, 0.0, 1.0))
        ball = smoothstep(ball * radius / (1.5 * scene.px))  # anti-aliased edge, solid core
        _fill(scene, ball)
        scene.extra += 0.12 * ball


def fracture(scene: Scene, f: Finding, rng: np.random.Generator) -> None:
    """Rib fracture: a lucent break through the cortex, stepped off with severity."""
    ident = scene.identity
    s = _sev(f)
    for side in _sides(f):
        g = scene.geometry[side]
        lo, hi = g.zone_band(f.zone or "middle")
        sgn = -1.0 if side == "right" else 1.0
        # Find a rib crossing inside the zone at a lateral position.
        su = rng.uniform(0.5, 0.85)
        u0 = sgn * su * ident.lung_half_width
        col = np.linspace(lo, hi, 200, dtype=np.float32)
        prof = rib_density(np.full_like(col, u0), col, ident, scene.px)
        v0 = float(col[int(np.argmax(prof))])
        win_u = np.abs(scene.u - u0) < 0.07
        win = win_u & (np.abs(scene.v - v0) < 0.07)
        if not win.any():
            continue
        uu, vv = scene.u[win], scene.v[win]
        step = (0.004 + 0.016 * s) * (uu * sgn > abs(u0))  # lateral fragment displaced
        ribs = rib_density(uu, vv, ident, scene.px, offset=-step.astype(np.float32))
        gap = inside(np.abs(uu - u0) - (0.006 + 0.004 * s), 2 * scene.px)
        ribs = ribs * (1.0 - 0.9 * gap)
        scene.ribs[win] = ribs


def lung_opacity(scene: Scene, f: Finding, rng: np.random.Generator) -> None:
    """Ill-defined hazy (ground-glass) opacity: vessels stay visible through it."""
    s = _sev(f)
    for side in _sides(f):
        lung = scene.lung(side)
        zone_w = _zone_weight(scene, side, f.zone, spill=0.05)
        centres = [_point_in_zone(scene, side, f.zone, rng) for _ in range(2)]
        radii = rng.uniform(0.12, 0.18 + 0.08 * s, size=2)
        haze = _blobs(scene, centres, radii, rng) * zone_w
        _fill(scene, (0.3 + 0.25 * s) * haze * lung)


def enlarged_cardiomediastinum(scene: Scene, f: Finding, rng: np.random.Generator) -> None:
    """Widened superior mediastinum above the heart."""
    ident = scene.identity
    s = _sev(f)
    widen = 0.05 + 0.06 * s
    mw = ident.mediastinum_half_width + widen
    top = ident.lung_top + 0.05
    bottom = ident.heart_center[1] - 0.05
    band = (
        inside(np.abs(scene.u - 0.01) - mw, 0.03)
        * smoothstep((scene.v - top) / 0.08)
        * smoothstep((bottom - scene.v) / 0.12)
    )
    lung = np.minimum(scene.lungs[0] + scene.lungs[1], 1.0)
    _fill(scene, band * lung)
    scene.medi += 0.08 * band


def pleural_other(scene: Scene, f: Finding, rng: np.random.Generator) -> None:
    """Pleural thickening: a smooth soft-tissue band along the chest wall (an apical cap when upper)."""
    s = _sev(f)
    for side in _sides(f):
        g = scene.geometry[side]
        lung = scene.lung(side)
        thick = 0.015 + 0.025 * s
        anchor = ((g.medial + g.lateral) / 2, (g.top + g.bottom) / 2)
        kept = _shrunk_lung(scene, side, 1.0 - thick / (abs(g.lateral - g.medial) / 2), anchor)
        band = lung * (1.0 - kept) * _zone_weight(scene, side, f.zone, spill=0.02)
        lateral_half = smoothstep((scene.u - g.medial) / (g.lateral - g.medial) * 4 - 1.5)
        _fill(scene, 0.9 * band * lateral_half)


DEVICE_RATES = {"ett": 0.45, "ngt": 0.4, "line": 0.6, "pacer": 0.2}


def device_kinds(rng: np.random.Generator) -> list[str]:
    """Which devices a "Support Devices" finding shows; the first draws of its generator.

    The report calls this with a fresh generator of the same seed, so it names exactly the
    devices that were drawn.
    """
    kinds = [d for d, p in DEVICE_RATES.items() if rng.random() < p]
    return kinds or ["line"]


def support_devices(scene: Scene, f: Finding, rng: np.random.Generator) -> None:
    """Tubes and lines: endotracheal tube, nasogastric tube, central line or PICC, pacemaker."""
    ident = scene.identity
    sgn = -1.0 if f.side == "right" else 1.0
    gl = scene.geometry["left"]
    devices = device_kinds(rng)
    u, v, px = scene.u, scene.v, scene.px
    opaque = np.zeros_like(u)
    if "ett" in devices:
        tip = ident.carina_v - rng.uniform(0.05, 0.1)
        tube = line_band(u, v, [(0.0, -1.2), (0.0, tip)], 0.018, 2 * px)
        lumen = line_band(u, v, [(0.0, -1.2), (0.0, tip)], 0.01, 2 * px)
        opaque = np.maximum(
            opaque, 0.5 * (tube - lumen) + 0.35 * line_band(u, v, [(-0.004, -1.2), (-0.004, tip)], 0.004, px)
        )
    if "ngt" in devices:
        pts = np.concatenate(
            [
                bezier((0.02, -1.2), (0.03, 0.0), (0.03, gl.bottom)),
                bezier((0.03, gl.bottom), (0.2, gl.bottom + 0.05), (0.3, gl.bottom + 0.12)),
            ]
        )
        opaque = np.maximum(opaque, 0.6 * line_band(u, v, pts, 0.007, 2 * px))
    if "line" in devices:
        entry = (sgn * (ident.lung_half_width + 0.25), ident.lung_top + rng.uniform(0.0, 0.08))
        svc = (-0.05, ident.carina_v + rng.uniform(0.05, 0.15))
        pts = bezier(entry, (sgn * 0.1, ident.lung_top - 0.02), svc, n=24)
        opaque = np.maximum(opaque, 0.55 * line_band(u, v, pts, 0.005, 2 * px))
    if "pacer" in devices:
        cu, cv = sgn * (ident.lung_half_width * 0.7), ident.lung_top + 0.1
        can = soft_ellipse(u, v, cu, cv, 0.07, 0.05, 0.0, 2 * px)
        hcu, hcv, a, b, _ = scene.heart_shape
        lead = bezier((cu, cv), (0.0, ident.carina_v), (hcu + 0.4 * a, hcv + 0.5 * b), n=24)
        opaque = np.maximum(opaque, np.maximum(1.4 * can, 0.7 * line_band(u, v, lead, 0.005, 2 * px)))
    scene.extra += opaque


DRAW: dict[str, Callable[[Scene, Finding, np.random.Generator], None]] = {
    "Enlarged Cardiomediastinum": enlarged_cardiomediastinum,
    "Cardiomegaly": cardiomegaly,
    "Fracture": fracture,
    "Edema": edema,
    "Atelectasis": atelectasis,
    "Consolidation": consolidation,
    "Pneumonia": pneumonia,
    "Lung Opacity": lung_opacity,
    "Lung Lesion": lung_lesion,
    "Pneumothorax": pneumothorax,
    "Pleural Effusion": pleural_effusion,
    "Pleural Other": pleural_other,
    "Support Devices": support_devices,
}
# Drawing order: structures first, then parenchyma, then pleura, devices on top.
DRAW_ORDER: tuple[str, ...] = tuple(DRAW)
