"""The edit contact sheet: per case the input, the result with its edit region outlined, the
model's change, the true change and the truth, so that a reader sees where and how much changed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from model.notice import SYNTHETIC_NOTICE

COLUMNS = ("input", "result + region", "model's change", "true change", "truth")


def write_edit_sheet(images: dict[tuple[int, str], dict[str, np.ndarray]], out_png: Path, rows: int = 6) -> None:
    """`images`: (identity index, finding) -> {"input", "result", "region", "truth"} in [0, 1]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted(images)[:rows]
    if not keys:
        return
    fig, axes = plt.subplots(len(keys), len(COLUMNS), figsize=(len(COLUMNS) * 1.9, len(keys) * 2.0 + 0.5))
    axes = np.atleast_2d(axes)
    for r, key in enumerate(keys):
        im = images[key]
        panels = (im["input"], im["result"], im["result"] - im["input"], im["truth"] - im["input"], im["truth"])
        for c, panel in enumerate(panels):
            ax = axes[r, c]
            if c in (2, 3):  # change maps on one symmetric scale: red denser, blue more lucent
                ax.imshow(panel, cmap="bwr", vmin=-0.3, vmax=0.3)
            else:
                ax.imshow(panel, cmap="gray", vmin=0, vmax=1)
            if c == 1 and im["region"].any():
                ax.contour(im["region"].astype(float), levels=[0.5], colors="yellow", linewidths=0.6)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(COLUMNS[c], fontsize=8)
        axes[r, 0].set_ylabel(f"{key[0]}: + {key[1]}", fontsize=7)
    fig.suptitle(f"whatif-cxr edits on held-out phantoms. {SYNTHETIC_NOTICE}", fontsize=7)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
