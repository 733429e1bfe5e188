"""Small drawing primitives on coordinate grids, all with compact support.

Every primitive is exactly zero outside a bounded region. That is what makes the phantom's
finding masks exact: a finding changes a pixel only where one of its primitives is non-zero.
"""

from __future__ import annotations

import numpy as np


def smoothstep(x: np.ndarray) -> np.ndarray:
    """0 for x <= 0, 1 for x >= 1, C1-smooth in between."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def inside(signed: np.ndarray, edge: float) -> np.ndarray:
    """Soft indicator of `signed <= 0` (negative inside) with a ramp of width `edge`."""
    return smoothstep(0.5 - signed / edge)


def bump(r2: np.ndarray) -> np.ndarray:
    """(1 - r^2)^2 for r < 1, else 0: a smooth blob of unit radius given squared radius."""
    t = np.clip(1.0 - r2, 0.0, None)
    return t * t


def ellipse_sdf(u, v, cu, cv, a, b, tilt=0.0):
    """Approximate signed distance to a tilted ellipse (negative inside), in frame units."""
    c, s = np.cos(tilt), np.sin(tilt)
    du, dv = u - cu, v - cv
    x = (du * c + dv * s) / a
    y = (-du * s + dv * c) / b
    return (np.sqrt(x * x + y * y) - 1.0) * min(a, b)


def ellipse_half_width(a: float, b: float, tilt: float) -> float:
    """Horizontal half-extent of an ellipse with semi-axes a, b rotated by `tilt`."""
    return float(np.sqrt((a * np.cos(tilt)) ** 2 + (b * np.sin(tilt)) ** 2))


def polyline_distance(u: np.ndarray, v: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Distance from each (u, v) to a polyline through `points` (k, 2)."""
    d2 = np.full(u.shape, np.inf, dtype=u.dtype)
    for (u0, v0), (u1, v1) in zip(points[:-1], points[1:]):
        du, dv = u1 - u0, v1 - v0
        length2 = du * du + dv * dv + 1e-12
        t = np.clip(((u - u0) * du + (v - v0) * dv) / length2, 0.0, 1.0)
        pu, pv = u - (u0 + t * du), v - (v0 + t * dv)
        np.minimum(d2, pu * pu + pv * pv, out=d2)
    return np.sqrt(d2)


def line_band(u, v, points, width, edge) -> np.ndarray:
    """Soft band of half-width `width` around a polyline, computed only in its bounding box."""
    out = np.zeros(u.shape, dtype=np.float32)
    pts = np.asarray(points, dtype=np.float32)
    pad = width + edge
    sel = (
        (u >= pts[:, 0].min() - pad)
        & (u <= pts[:, 0].max() + pad)
        & (v >= pts[:, 1].min() - pad)
        & (v <= pts[:, 1].max() + pad)
    )
    if sel.any():
        d = polyline_distance(u[sel], v[sel], pts)
        out[sel] = inside(d - width, edge)
    return out


def bezier(p0, p1, p2, n: int = 16) -> np.ndarray:
    """Points of a quadratic Bezier curve, (n, 2)."""
    t = np.linspace(0.0, 1.0, n)[:, None]
    p0, p1, p2 = (np.asarray(p, dtype=np.float64) for p in (p0, p1, p2))
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2


def soft_ellipse(u, v, cu, cv, a, b, tilt, edge) -> np.ndarray:
    """Soft indicator of a tilted ellipse, computed only in its bounding box (for speed)."""
    out = np.zeros(u.shape, dtype=np.float32)
    r = max(a, b) + edge
    sel = (np.abs(u - cu) <= r) & (np.abs(v - cv) <= r)
    if sel.any():
        out[sel] = inside(ellipse_sdf(u[sel], v[sel], cu, cv, a, b, tilt), edge)
    return out
