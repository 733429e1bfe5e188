"""Render one phantom radiograph: (identity seed, findings, render seed, size) -> pixels and masks.

Deterministic: the same arguments give the same bytes on every run and in every process. The
identity seed fixes the patient and the acquisition; the render seed fixes the noise field
and the details of each finding (each finding has its own stream, so the presence of one
does not move another). Rendering the same identity and render seed with other findings is
the ground-truth counterfactual.
"""

from __future__ import annotations

import dataclasses
import functools
import io
from collections.abc import Iterable

import numpy as np
from PIL import Image, PngImagePlugin

from model.labels import CHEXPERT_LABELS

from .anatomy import build_scene, composite
from .findings import Finding, FindingError, sort_findings
from .identity import STREAM_FINDING, STREAM_NOISE, Identity, seed_rng
from .lesions import DRAW, DRAW_ORDER
from .lung_masks import load_lung_masks

MIN_SIZE, MAX_SIZE = 32, 2048


@dataclasses.dataclass
class PhantomImage:
    """One rendered phantom radiograph and its ground truth.

    Attributes:
        image: uint8 (S, S) pixels, white = attenuating, the patient's right on the left.
        findings: the findings drawn, fully resolved, in CheXpert order.
        masks: per drawn label, bool (S, S): the pixels that finding changed.
        anatomy: bool (S, S) masks after findings: "right_lung", "left_lung", "heart".
        identity_seed, render_seed: what reproduces it.
    """

    image: np.ndarray
    findings: list[Finding]
    masks: dict[str, np.ndarray]
    anatomy: dict[str, np.ndarray]
    identity_seed: int
    render_seed: int

    def png_bytes(self) -> bytes:
        """PNG with provenance in text chunks, marked as synthetic."""
        info = PngImagePlugin.PngInfo()
        info.add_text("Software", "whatif-cxr phantom")
        info.add_text("Comment", "SYNTHETIC phantom radiograph, not a patient image; not for clinical use")
        info.add_text("whatif:identity_seed", str(self.identity_seed))
        info.add_text("whatif:render_seed", str(self.render_seed))
        buf = io.BytesIO()
        # compress_level 3: files ~10% larger than the default 6, encoding about twice as fast.
        Image.fromarray(self.image, mode="L").save(buf, format="PNG", pnginfo=info, compress_level=3)
        return buf.getvalue()


@functools.lru_cache(maxsize=64)
def cached_identity(seed: int) -> Identity:
    return Identity.sample(seed, load_lung_masks())


def check_size(size: int) -> int:
    if not isinstance(size, (int, np.integer)) or isinstance(size, bool):
        raise ValueError(f"size must be an integer, got {size!r}")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"size must be between {MIN_SIZE} and {MAX_SIZE} pixels, got {size}")
    return int(size)


def render(
    identity_seed: int,
    findings: Iterable[Finding] = (),
    render_seed: int = 0,
    size: int = 256,
) -> PhantomImage:
    """Render identity `identity_seed` with `findings` (each label at most once).

    Findings with a missing side, zone or severity are completed from the render seed
    (`Finding.resolve`); the returned `findings` say what was drawn.
    """
    size = check_size(size)
    findings = list(findings)
    labels = [f.label for f in findings]
    if len(set(labels)) != len(labels):
        raise FindingError(f"each label may appear once, got {labels}")
    resolved = []
    for f in findings:
        if not f.is_resolved:
            f = f.resolve(seed_rng(render_seed, STREAM_FINDING, CHEXPERT_LABELS.index(f.label), 1))
        resolved.append(f)
    resolved = sort_findings(resolved)

    ident = cached_identity(int(identity_seed))
    scene = build_scene(ident, size)
    by_label = {f.label: f for f in resolved}
    masks: dict[str, np.ndarray] = {}
    for label in DRAW_ORDER:
        f = by_label.get(label)
        if f is None:
            continue
        before = scene.snapshot()
        DRAW[label](scene, f, seed_rng(render_seed, STREAM_FINDING, CHEXPERT_LABELS.index(label)))
        masks[label] = scene.changed_since(before)

    noise = seed_rng(render_seed, STREAM_NOISE).standard_normal((size, size), dtype=np.float32)
    pixels = np.round(composite(scene, noise) * 255.0).astype(np.uint8)
    anatomy = {
        "right_lung": scene.lungs[0] >= 0.5,
        "left_lung": scene.lungs[1] >= 0.5,
        "heart": scene.heart >= 0.5,
    }
    return PhantomImage(pixels, resolved, masks, anatomy, int(identity_seed), int(render_seed))


def cardiothoracic_ratio(anatomy: dict[str, np.ndarray]) -> float:
    """Widest heart width over widest thoracic width (outer lung edges), measured on the masks."""
    heart_cols = np.nonzero(anatomy["heart"].any(axis=0))[0]
    lung_cols = np.nonzero((anatomy["right_lung"] | anatomy["left_lung"]).any(axis=0))[0]
    # Row-wise widths are what a reader measures; the rotation is small, so columns suffice.
    return float((heart_cols[-1] - heart_cols[0] + 1) / (lung_cols[-1] - lung_cols[0] + 1))
