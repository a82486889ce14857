"""Pictures for people to look at: one grid of frames, shared by the dataset's contact sheet and the benchmarks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

GridRow = tuple[str, Sequence[tuple[str, np.ndarray]]]  # (row label, [(column title, uint8 (H, W, 3) image)])


def save_image_grid(path: str | Path, rows: Sequence[GridRow], title: str | None = None, dpi: int = 100) -> Path:
    """A PNG of images in rows: each row labelled on its left, column titles from the first row, pixels
    shown unsmoothed (pixel art stays blocky). Returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = max(len(cells) for _, cells in rows)
    head = 0.35 if title else 0.0
    height = 1.35 * len(rows) + head
    fig, axes = plt.subplots(len(rows), columns, figsize=(1.3 * columns, height), squeeze=False)
    for r, (label, cells) in enumerate(rows):
        for c, (column, image) in enumerate(cells):
            ax = axes[r][c]
            ax.imshow(image, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(column, fontsize=8)
        axes[r][0].set_ylabel(label, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(pad=0.3, rect=(0, 0, 1, 1 - head / height))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
