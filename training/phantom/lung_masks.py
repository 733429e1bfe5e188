"""Real lung fields for phantom identities: the 517 lung masks shipped with torchxrayvision.

The masks (v7labs, `torchxrayvision/data/semantic_masks_v7labs_lungs.zip`) are drawn on real
frontal radiographs of many patients, so lung shape, size, asymmetry and the height of each
hemidiaphragm vary the way they do in people. Each usable mask is split into its two lungs,
cropped to the box around both and resampled to a canonical square frame; the box's aspect
ratio is kept so that tall and broad chests stay tall and broad.

Reading and resampling the zip takes some seconds, so the result is cached as a compressed
`.npz` (no pickle) under `$WHATIF_CACHE_DIR` (default `~/.cache/whatif-cxr`), keyed by the
zip's SHA-256: a different torchxrayvision release gets its own cache file.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.util
import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from .cache import cache_dir, save_npz_atomic

CANONICAL = 128  # side of the canonical frame each lung pair is resampled to
_WORK = 256  # masks are reduced to at most this side before components are found
_CACHE_VERSION = 2


@dataclasses.dataclass(frozen=True)
class LungMaskBank:
    """All usable lung pairs. `masks[i, 0]` is the patient's right lung (the viewer's left).

    Attributes:
        masks: uint8 (N, 2, CANONICAL, CANONICAL), 0..255 soft masks in the box of both lungs.
        aspect: float32 (N,), height / width of that box in the source image.
        names: source file names inside the zip, for provenance.
        n_source: number of masks in the zip (usable or not).
    """

    masks: np.ndarray
    aspect: np.ndarray
    names: tuple[str, ...]
    n_source: int

    def __len__(self) -> int:
        return int(self.masks.shape[0])


def data_path(name: str) -> Path:
    """Path of a data file shipped in the installed torchxrayvision package.

    Found without importing torchxrayvision (which would import torch and torchvision).
    """
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "torchxrayvision is not installed; it ships the real lung masks and label statistics "
            "the phantom uses (pip install torchxrayvision)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / name
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from the installed torchxrayvision package")
    return path


@functools.lru_cache(maxsize=1)
def load_lung_masks() -> LungMaskBank:
    """The lung-mask bank, from the cache when present, else built from the zip and cached."""
    zpath = data_path("semantic_masks_v7labs_lungs.zip")
    digest = hashlib.sha256(zpath.read_bytes()).hexdigest()[:16]
    cpath = cache_dir() / f"lung_masks_v{_CACHE_VERSION}_{CANONICAL}_{digest}.npz"
    if cpath.exists():
        with np.load(cpath, allow_pickle=False) as z:
            return LungMaskBank(z["masks"], z["aspect"], tuple(z["names"].tolist()), int(z["n_source"]))
    bank = _build(zpath)
    save_npz_atomic(cpath, masks=bank.masks, aspect=bank.aspect, names=np.array(bank.names), n_source=bank.n_source)
    return bank


def _build(zpath: Path) -> LungMaskBank:
    masks, aspects, names = [], [], []
    with zipfile.ZipFile(zpath) as zf:
        members = [n for n in zf.namelist() if not n.endswith("/")]
        for name in sorted(members):
            pair = _split_lungs(Image.open(io.BytesIO(zf.read(name))))
            if pair is None:
                continue
            m, aspect = pair
            masks.append(m)
            aspects.append(aspect)
            names.append(Path(name).name)
    return LungMaskBank(np.stack(masks), np.asarray(aspects, np.float32), tuple(names), len(members))


def _split_lungs(img: Image.Image) -> tuple[np.ndarray, float] | None:
    """Two lungs in a canonical frame, or None when the mask is not two plausible lungs."""
    img = img.convert("L")
    scale = _WORK / max(img.size)
    if scale < 1:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BILINEAR)
    # Opening cuts thin attachments (annotation arrows, stray strokes) off the lung fields.
    binary = ndimage.binary_opening(np.asarray(img) >= 64, structure=np.ones((5, 5), bool))
    labelled, n = ndimage.label(binary)
    if n < 2:
        return None
    areas = ndimage.sum_labels(binary, labelled, index=np.arange(1, n + 1))
    order = np.argsort(areas)[::-1]
    a, b = order[0] + 1, order[1] + 1
    if areas[order[1]] < 0.3 * areas[order[0]] or areas[order[0]] + areas[order[1]] < 0.05 * binary.size:
        return None  # one lung missing or the mask is tiny: not a usable pair
    ca = ndimage.center_of_mass(binary, labelled, a)
    cb = ndimage.center_of_mass(binary, labelled, b)
    # The viewer's left lung is the patient's right lung.
    right, left = (a, b) if ca[1] < cb[1] else (b, a)
    both = (labelled == right) | (labelled == left)
    rows, cols = np.nonzero(both)
    y0, y1, x0, x1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    h, w = y1 - y0, x1 - x0
    if not 0.6 <= h / w <= 1.6:
        return None  # cropped or implausibly shaped annotation
    out = np.empty((2, CANONICAL, CANONICAL), np.uint8)
    for k, lab in enumerate((right, left)):
        crop = Image.fromarray(((labelled[y0:y1, x0:x1] == lab) * 255).astype(np.uint8))
        out[k] = np.asarray(crop.resize((CANONICAL, CANONICAL), Image.BILINEAR))
    return out, float(h / w)
