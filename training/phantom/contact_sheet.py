"""Contact sheet of the phantom: identities in rows, findings in columns (the paper's Fig. 7)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .findings import Finding
from .renderer import render

# Columns of the paper's Fig. 7.
SHEET_COLUMNS: tuple[tuple[str, Finding | None], ...] = (
    ("No finding", None),
    ("Atelectasis", Finding("Atelectasis", "bilateral lower", "severe")),
    ("Cardiomegaly", Finding("Cardiomegaly", None, "moderate")),
    ("Pleural effusion", Finding("Pleural Effusion", "right", "moderate")),
    ("Consolidation", Finding("Consolidation", "left lower", "moderate")),
    ("Edema", Finding("Edema", "bilateral", "moderate")),
    ("Pneumothorax", Finding("Pneumothorax", "right", "moderate")),
)


def contact_sheet(out: Path, size: int = 256, first_identity: int = 7, rows: int = 4, render_seed: int = 1) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = len(SHEET_COLUMNS)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.9, rows * 2.0 + 0.5), dpi=110)
    for r in range(rows):
        identity = first_identity + r
        for c, (title, finding) in enumerate(SHEET_COLUMNS):
            img = render(identity, [finding] if finding else [], render_seed, size)
            ax = axes[r, c]
            ax.imshow(img.image, cmap="gray", vmin=0, vmax=255)
            if finding is not None:
                # Outline what changed, so the reader sees where to look.
                ax.contour(img.masks[finding.label].astype(np.float32), levels=[0.5], colors="#ff6a00", linewidths=0.4)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(title, fontsize=9)
            if c == 0:
                ax.set_ylabel(f"identity {identity}", fontsize=8)
    fig.suptitle(
        "whatif-cxr phantom: SYNTHETIC radiographs (same identity per row; orange: pixels the finding changed)",
        fontsize=9,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    fig.savefig(out)
    plt.close(fig)
